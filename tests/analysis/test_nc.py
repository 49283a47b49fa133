import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.analysis.nc import METRIC_NAMES
from ufm.analysis.theory import simplex_etf

ZERO_ON_ETF = METRIC_NAMES


def _etf_configuration(K, d, counts, scale=0.7, seed=0):
    """W a rotated simplex ETF, every h_i = scale * w_{y_i}, b = 0."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    W = 2.0 * simplex_etf(K, d) @ Q.T
    labels = np.repeat(np.arange(K), counts)
    H = scale * W[labels].T
    return W, H, labels


@pytest.mark.parametrize("K, d", [(2, 1), (3, 2), (5, 4), (5, 9), (10, 16)])
def test_every_metric_vanishes_on_an_exact_etf(K, d):
    W, H, labels = _etf_configuration(K, d, [3] * K)
    m = ufm.nc_metrics(W, H, labels, b=np.zeros(K))
    for name in ZERO_ON_ETF:
        assert abs(float(m[name])) < 1e-12, (name, float(m[name]))


def test_etf_metrics_vanish_with_imbalanced_counts_and_sample_global_mean():
    K, d = 4, 6
    W, H, labels = _etf_configuration(K, d, [1, 2, 5, 3])
    m = ufm.nc_metrics(W, H, labels)
    assert max(abs(float(m[k])) for k in ZERO_ON_ETF) < 1e-12
    # With imbalanced classes the sample mean is not the mean of class means: NC2_H moves.
    m_samples = ufm.nc_metrics(W, H, labels, global_mean="samples")
    assert float(m_samples["nc2_H"]) > 1e-2


@pytest.mark.parametrize("K, d", [(3, 2), (5, 8), (10, 16)])
def test_metrics_are_clearly_positive_on_a_random_configuration(K, d):
    rng = np.random.default_rng(K)
    labels = np.repeat(np.arange(K), 4)
    W, H = rng.normal(size=(K, d)), rng.normal(size=(d, 4 * K))
    m = ufm.nc_metrics(W, H, labels, b=rng.normal(size=K))
    for name in ("nc1", "nc1_papyan", "nc1_trace", "nc1_cdnv", "nc2_W", "nc2_H", "nc3",
                 "nc3_papyan", "equinorm_W", "equiangular_W", "equiangular_H"):
        assert float(m[name]) > 0.05, (name, float(m[name]))


def test_nc1_matches_a_dense_pseudo_inverse_and_is_never_negative():
    K, d, n = 4, 7, 5
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(K), n)
    W = rng.normal(size=(K, d))
    H = rng.normal(size=(d, K * n)) + 3 * rng.normal(size=(d, K))[:, labels]
    means = np.stack([H[:, labels == k].mean(1) for k in range(K)], 1)
    M = means - means.mean(1, keepdims=True)
    within = H - means[:, labels]
    Sw, Sb = within @ within.T / (K * n), M @ M.T / K
    expected = np.trace(Sw @ np.linalg.pinv(Sb, rcond=1e-10)) / K
    m = ufm.nc_metrics(W, H, labels)
    np.testing.assert_allclose(float(m["nc1"]), expected, rtol=1e-10)
    np.testing.assert_allclose(float(m["nc1_papyan"]), K * expected, rtol=1e-10)
    np.testing.assert_allclose(float(m["nc1_trace"]), np.trace(Sw) / np.trace(Sb), rtol=1e-10)
    # Nearly collapsed features: still a sum of squares, never negative in float32.
    W_etf, H_etf, labels = _etf_configuration(K, d, [n] * K)
    H_near = (H_etf + 1e-4 * rng.normal(size=H_etf.shape)).astype(np.float32)
    nc1 = float(ufm.nc_metrics(W_etf.astype(np.float32), H_near, labels)["nc1"])
    assert 0.0 <= nc1 < 1e-6


def test_nc4_counts_disagreements_with_nearest_class_mean():
    K = 3
    W = simplex_etf(K, 2)
    labels = np.repeat(np.arange(K), 2)
    H = W[labels].T.copy()
    b = np.array([0.0, 0.0, 10.0])  # a large bias on class 2 overrides the geometry
    m = ufm.nc_metrics(W, H, labels, b=b)
    assert float(m["nc4"]) == pytest.approx(4 / 6)
    assert float(ufm.nc_metrics(W, H, labels)["nc4"]) == 0.0


def test_metrics_jit_and_vmap():
    K, d, n, B = 4, 5, 3, 6
    rng = np.random.default_rng(1)
    labels = jnp.asarray(np.repeat(np.arange(K), n))
    Ws = jnp.asarray(rng.normal(size=(B, K, d)), jnp.float32)
    Hs = jnp.asarray(rng.normal(size=(B, d, K * n)), jnp.float32)
    batched = jax.jit(jax.vmap(lambda W, H: ufm.nc_metrics(W, H, labels)))(Ws, Hs)
    for i in range(B):
        single = ufm.nc_metrics(Ws[i], Hs[i], labels)
        for name in METRIC_NAMES:
            np.testing.assert_allclose(batched[name][i], single[name], rtol=1e-4, atol=1e-6)


def test_metrics_of_collapsed_to_zero_features_are_nan_where_undefined():
    labels = np.repeat(np.arange(3), 2)
    m = ufm.nc_metrics(np.zeros((3, 4)), np.zeros((4, 6)), labels)
    assert np.isnan(float(m["nc1"])) and np.isnan(float(m["nc2_H"]))


def test_bad_global_mean_is_rejected():
    with pytest.raises(ValueError, match="global_mean='median'"):
        ufm.nc_metrics(np.eye(3), np.eye(3), np.arange(3), global_mean="median")


@pytest.mark.parametrize("where", ["H_nan", "H_inf", "W_nan", "b_inf"])
def test_a_non_finite_point_has_no_plausible_nc4(where):
    """argmin / argmax of NaN or inf still pick a class: NC4 must be NaN with the others, not
    the finite 0.70 it was for a NaN in H (0.85 clean)."""
    rng = np.random.default_rng(3)
    K, d, n = 4, 6, 5
    W, H, b = rng.normal(size=(K, d)), rng.normal(size=(d, K * n)), rng.normal(size=K)
    labels = np.repeat(np.arange(K), n)
    clean = ufm.nc_metrics(W, H, labels, b=b)
    assert np.isfinite(float(clean["nc4"]))
    {"H_nan": H, "H_inf": H, "W_nan": W, "b_inf": b}[where].flat[3] = (
        np.nan if where.endswith("nan") else np.inf)
    m = ufm.nc_metrics(W, H, labels, b=b)
    assert np.isnan(float(m["nc4"]))
    if where.startswith("H"):
        assert np.isnan(float(m["nc1"]))


def test_integer_features_are_computed_in_float64():
    """int64 features near 2^40 in float32 kept 24 bits: nc2_H 0.99999994 against 0.5475."""
    rng = np.random.default_rng(4)
    K, d, n = 4, 6, 5
    labels = np.repeat(np.arange(K), n)
    H = (rng.normal(size=(d, K * n)) * 2**20).astype(np.int64) + 2**40
    W = rng.normal(size=(K, d))
    got = ufm.nc_metrics(W.astype(np.int64) + 3, H, labels)
    with jax.enable_x64(True):
        want = ufm.nc_metrics((W.astype(np.int64) + 3).astype(np.float64), H.astype(np.float64),
                              labels)
    for name in METRIC_NAMES:
        np.testing.assert_allclose(float(got[name]), float(want[name]), rtol=1e-9, err_msg=name)
