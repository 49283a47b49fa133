"""The records program's metrics (`ufm.analysis.nc.run_metrics`, NC1 by matmuls) against the SVD
form of `nc_metrics`, and the records program free of decompositions."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.analysis import nc as metrics
from ufm.analysis.theory import simplex_etf
from ufm.model.problem import x64_scope
from ufm.solvers import records


def _both(W, H, labels, b=None):
    with x64_scope(np.float64):
        W, H = jnp.asarray(W, jnp.float64), jnp.asarray(H, jnp.float64)
        b = None if b is None else jnp.asarray(b, jnp.float64)
        labels = jnp.asarray(labels)
        svd = metrics._nc_metrics_jit(W, H, labels, b, "class_means")
        gram = jax.jit(metrics.run_metrics)(W, H, labels, b)
        return ({k: float(v) for k, v in svd.items()}, {k: float(v) for k, v in gram.items()})


def _assert_equal(svd, gram, atol=1e-10):
    assert svd.keys() == gram.keys()
    for name in svd:
        a, g = svd[name], gram[name]
        if np.isnan(a):
            assert np.isnan(g), name
            continue
        assert abs(a - g) <= atol * max(1.0, abs(a)), (name, a, g)


def _points(K, d, n, seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(K), n)
    return rng.standard_normal((K, d)), rng.standard_normal((d, K * n)), labels, rng


@pytest.mark.parametrize("K,d", [(4, 12), (10, 64), (10, 9), (10, 4), (25, 30)])
def test_gram_form_equals_svd_form_at_random_points(K, d):
    # d = K - 1 and d < K - 1: Sigma_B^+ at rank min(K - 1, d) (rank-deficient means)
    W, H, labels, rng = _points(K, d, 7, K + d)
    svd, gram = _both(W, H, labels, rng.standard_normal(K))
    _assert_equal(svd, gram)
    assert svd["nc1"] > 0.01  # a point far from collapse: NC1 is not round-off


def test_gram_form_at_collapsed_and_nearly_collapsed_points():
    K, d, n = 6, 10, 5
    rng = np.random.default_rng(0)
    M = np.asarray(simplex_etf(K, d)).T  # (d, K)
    labels = np.repeat(np.arange(K), n)
    H = M[:, labels]
    svd, gram = _both(M.T, H, labels)
    assert abs(gram["nc1"]) < 1e-25 and gram["nc2_H"] < 1e-12 and gram["nc3"] < 1e-12
    _assert_equal(svd, gram)
    noisy = H + 1e-3 * rng.standard_normal(H.shape)
    svd, gram = _both(M.T, noisy, labels)
    assert 1e-8 < svd["nc1"] < 1e-4
    assert abs(svd["nc1"] - gram["nc1"]) <= 1e-10 * svd["nc1"]
    _assert_equal(svd, gram)


def test_gram_form_below_the_simplex_dimension_near_collapse():
    # d < K: the d x d Gram form (generalized NC), to 1e-10 relative where NC1 is 1e-6.
    K, d, n = 12, 3, 4
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(K), n)
    means = rng.standard_normal((d, K))
    H = means[:, labels] + 1e-3 * rng.standard_normal((d, K * n))
    svd, gram = _both(rng.standard_normal((K, d)), H, labels)
    assert 1e-9 < svd["nc1"] < 1e-4
    assert abs(svd["nc1"] - gram["nc1"]) <= 1e-10 * svd["nc1"]
    _assert_equal(svd, gram)


def test_gram_form_with_means_of_lower_rank():
    # Two classes share a mean: M has rank K - 2 < min(K - 1, d); both forms drop the null
    # direction and agree.
    K, d, n = 5, 8, 6
    W, H, labels, rng = _points(K, d, n, 3)
    means = rng.standard_normal((d, K))
    means[:, 1] = means[:, 0]
    H = means[:, labels] + 0.1 * rng.standard_normal((d, K * n))
    H[:, labels == 1] -= H[:, labels == 1].mean(1, keepdims=True) - means[:, [0]]
    H[:, labels == 0] -= H[:, labels == 0].mean(1, keepdims=True) - means[:, [0]]
    svd, gram = _both(W, H, labels)
    _assert_equal(svd, gram, atol=1e-9)


def test_gram_form_is_nan_where_means_coincide():
    K, d, n = 4, 6, 3
    W, _, labels, _ = _points(K, d, n, 1)
    H = np.ones((d, K * n))  # every class mean the same point
    svd, gram = _both(W, H, labels)
    assert np.isnan(svd["nc1"]) and np.isnan(gram["nc1"])
    _assert_equal(svd, gram)


def test_gram_pinv_is_the_pseudo_inverse():
    rng = np.random.default_rng(2)
    with x64_scope(np.float64):
        A = jnp.asarray(rng.standard_normal((7, 4)))
        C = A @ A.T  # rank 4 of 7
        X = metrics.gram_pinv(C)
        np.testing.assert_allclose(np.asarray(X), np.linalg.pinv(np.asarray(C)), atol=1e-11)


def _lowered_records(problem):
    hyper = ufm.Hyper(lam_W=5e-4, lam_H=5e-4, lam_b=5e-4).broadcast(2, problem.jnp_dtype)
    K, d, N = problem.num_classes, problem.feature_dim, problem.num_samples
    trace = (ufm.Params(jnp.ones((2, 3, K, d)), jnp.ones((2, 3, d, N)), jnp.ones((2, 3, K))),
             jnp.ones((2, 3)), jnp.ones((2, 3)))
    program = records.compiled_records(problem, False, True, None, 3)
    return program.lower(hyper, trace, jnp.ones(2)).compile().as_text()


def test_records_program_holds_no_decomposition():
    """The program behind every logged point: no LAPACK custom call on the CPU (so on a GPU no
    cuSOLVER call: batched SVDs and eigensolves of tiny matrices cost more than the steps)."""
    text = _lowered_records(ufm.Problem(num_classes=4, feature_dim=6, n_per_class=3))
    calls = set(re.findall(r'custom_call_target="([^"]+)"', text))
    assert not [c for c in calls if re.search(r"lapack|gesdd|gesvd|syevd|getrf|potrf|geqrf|"
                                              r"cusolver|eig", c, re.I)], calls
    # the SVD form, for contrast, does show one: the test can fail
    svd_text = jax.jit(lambda M: jnp.linalg.svd(M)).lower(jnp.ones((6, 4))).compile().as_text()
    assert re.search(r"lapack|gesdd|gesvd", svd_text, re.I)
