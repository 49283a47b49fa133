import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ufm
from ufm.analysis import landscape, theory
from ufm.model import manifolds
from ufm.running import landscapes as points

K, D, N_PER = 4, 5, 3
LAM_W, LAM_H = 1e-2, 2e-2
LAM_BAR, DLAM = (LAM_W + LAM_H) / 2, (LAM_W - LAM_H) / 2


# The rank-r critical points are L-BFGS solves: each (problem, hyper, rank) is solved once for
# the whole module (the points are read, never changed).
_rank_point = functools.lru_cache(maxsize=None)(points.rank_r_critical_point)


def _problem(loss="ce", **kw):
    return ufm.Problem(num_classes=K, feature_dim=D, n_per_class=N_PER, loss=loss,
                       dtype="float64", **kw)


def _hyper(loss="ce", **kw):
    base = dict(lam_W=LAM_W, lam_H=LAM_H, lam_b=0.0 if loss == "mse" else 1e-2, alpha=0.2,
                gamma=2.0)
    return ufm.Hyper(**(base | kw))


def _random_point(prob, seed=0):
    return theory._params(*ufm.init(prob, seed))  # a random non-critical point, float64


def test_dense_hessian_equals_jax_hessian_and_hvp(x64):
    prob, hyp = _problem(), _hyper().astype(jnp.float64)
    point = jax.tree.map(jnp.asarray, _random_point(prob))
    flat, unravel = ravel_pytree(point)
    reference = jax.hessian(lambda x: ufm.objective(prob, hyp, unravel(x)))(flat)
    dense = landscape.dense_hessian(prob, hyp, point)
    np.testing.assert_allclose(dense, reference, atol=1e-12)
    v = jax.random.normal(jax.random.key(1), flat.shape, jnp.float64)
    product = ravel_pytree(landscape.hvp(prob, hyp, point, unravel(v)))[0]
    np.testing.assert_allclose(product, dense @ v, atol=1e-12)


@pytest.mark.parametrize("where", [pytest.param("saddle", marks=pytest.mark.slow), "random"])
def test_lanczos_matches_dense_extremes(x64, where):
    prob = ufm.Problem(num_classes=5, feature_dim=8, n_per_class=6, dtype="float64")
    hyp = _hyper()
    point = (_rank_point(prob, hyp, 2) if where == "saddle"
             else _random_point(prob, 3))
    point = jax.tree.map(jnp.asarray, point)
    hyp64 = hyp.astype(jnp.float64)
    eigs = np.linalg.eigvalsh(np.asarray(landscape.dense_hessian(prob, hyp64, point)))
    chart, matvec = landscape.hessian_operator(prob, hyp64, point)
    v0 = jax.random.normal(jax.random.key(0), (chart.dim,), jnp.float64)
    result = jax.jit(lambda v: landscape.lanczos(matvec, v, 150))(v0)
    assert chart.dim == 5 * 8 + 8 * 30 + 5 and chart.dim > 150
    np.testing.assert_allclose(result.ritz_values[0], eigs[0], atol=1e-8)
    np.testing.assert_allclose(result.ritz_values[-1], eigs[-1], atol=1e-8)
    assert result.residuals[0] < 1e-6 and result.residuals[-1] < 1e-6
    y = result.ritz_vectors[:, 0]
    np.testing.assert_allclose(np.linalg.norm(matvec(y) - result.ritz_values[0] * y),
                               result.residuals[0], atol=1e-7)


def test_lanczos_restarts_after_breakdown(x64):
    """A diagonal operator with 3 distinct eigenvalues breaks down after 3 steps; the restart
    keeps the basis orthonormal and the Ritz values exact."""
    diag = jnp.asarray(np.repeat([-2.0, 1.0, 5.0], 10))
    result = landscape.lanczos(lambda x: diag * x, jnp.ones(30), 12)
    np.testing.assert_allclose(np.asarray(result.ritz_values)[[0, -1]], [-2.0, 5.0], atol=1e-12)
    gram = result.ritz_vectors.T @ result.ritz_vectors
    np.testing.assert_allclose(gram, np.eye(12), atol=1e-10)


@pytest.mark.parametrize("loss", ["ce", "ls", "ls_off_target", "focal", "mse"])
def test_origin_spectrum_and_phase_transition(loss):
    prob, hyp = _problem(loss), _hyper(loss)
    p = landscape.probe(prob, hyp, theory.origin(prob, hyp))
    sigma = theory.origin_singular_value(prob, hyp)
    c_L = {"ce": 1.0, "mse": 1.0, "ls": 0.8, "ls_off_target": 1 - 0.2 * K / (K - 1),
           # alpha = 0.2; focal with gamma = 2:
           "focal": (1 - 1 / K) * ((1 - 1 / K) + 2 / K * math.log(K))}[loss]
    assert sigma == pytest.approx(c_L / (K * math.sqrt(N_PER)), rel=1e-14)
    expected = LAM_BAR - math.sqrt(DLAM**2 + sigma**2)
    assert theory.origin_eig_min(prob, hyp) == pytest.approx(expected, rel=1e-14)
    assert p.grad_norm < 1e-12 and p.sigma_G == pytest.approx(sigma, rel=1e-10)
    assert p.eig_min == pytest.approx(expected, rel=1e-10)
    with jax.enable_x64(True):
        eigs = np.linalg.eigvalsh(np.asarray(landscape.dense_hessian(
            prob, hyp.astype(jnp.float64), jax.tree.map(jnp.asarray, theory.origin(prob, hyp)))))
    assert np.sum(np.abs(eigs - expected) < 1e-10) == D * (K - 1)
    assert p.verdict == "strict saddle"
    # The verdict flips exactly across sqrt(lam_W lam_H) = c_L / (K sqrt(n)).
    for factor, verdict in ((0.98, "strict saddle"), (1.02, None)):
        lam = factor * sigma
        hyp_t = _hyper(loss, lam_W=lam, lam_H=lam)
        p = landscape.probe(prob, hyp_t, theory.origin(prob, hyp_t))
        # The certificate itself, not only the verdict (the negative curvature used to win
        # over a certificate that passed at the origin whatever the weight decay).
        assert bool(p.certified_global) == (verdict is None and loss != "focal")
        if verdict:
            assert p.verdict == verdict
        else:
            assert p.n_negative == 0
            assert p.verdict == ("global min (certified)" if loss != "focal"
                                 else "second-order stationary (local min)")


def test_origin_eigenvalue_of_bias_free_mse_has_multiplicity_d_K():
    """Without a bias the MSE targets are not centred: G = -Y/N at the origin has K equal
    singular values 1/(K sqrt n), so the smallest eigenvalue repeats d K times, not d (K-1)."""
    prob, hyp = _problem("mse", bias=False), _hyper("mse")
    with jax.enable_x64(True):
        eigs = np.linalg.eigvalsh(np.asarray(landscape.dense_hessian(
            prob, hyp.astype(jnp.float64), jax.tree.map(jnp.asarray, theory.origin(prob, hyp)))))
    expected = theory.origin_eig_min(prob, hyp)
    assert expected == pytest.approx(LAM_BAR - math.sqrt(DLAM**2 + 1 / (K**2 * N_PER)), rel=1e-14)
    assert np.sum(np.abs(eigs - expected) < 1e-10) == D * K


def test_negative_curvature_direction_has_the_predicted_rayleigh_quotient(x64):
    prob, hyp = _problem(), _hyper()
    point = _rank_point(prob, hyp, 1)
    direction, curvature = theory.negative_curvature_direction(prob, hyp, point)
    as_jnp = lambda t: jax.tree.map(jnp.asarray, t)
    Hd = landscape.hvp(prob, hyp.astype(jnp.float64), as_jnp(point), as_jnp(direction))
    quotient = sum(float(jnp.sum(a * b)) for a, b in zip(jax.tree.leaves(Hd),
                                                         jax.tree.leaves(as_jnp(direction))))
    assert quotient == pytest.approx(curvature, rel=1e-10) and curvature < 0
    assert sum(float(np.sum(np.square(x))) for x in jax.tree.leaves(direction)) == pytest.approx(
        1.0
    )


@pytest.mark.parametrize("loss", ["ce", "ls", "focal", "mse"])
def test_optimum(loss):
    prob, hyp = _problem(loss), _hyper(loss)
    p = landscape.probe(prob, hyp, theory.optimum_point(prob, hyp))
    assert p.n_negative == 0 and p.eig_min > -1e-12
    assert p.n_zero == p.n_symmetry == (K - 1) * (2 * D - (K - 1) - 1) // 2
    assert p.eig_min_off_symmetry == pytest.approx(min(LAM_W, LAM_H), rel=1e-8)
    expected = (
        "global min (certified)" if loss != "focal" else "second-order stationary (local min)"
    )
    assert p.verdict == expected


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_closed_form_mse_saddles(rank):
    prob, hyp = _problem("mse", bias=False), _hyper("mse")
    p = landscape.probe(prob, hyp, theory.mse_saddle(prob, hyp, rank))
    assert p.grad_norm < 1e-12
    assert p.n_negative == (D - rank) * (K - rank)
    assert p.n_zero == p.n_symmetry == rank * (2 * D - rank - 1) // 2 + rank * (K - rank)
    assert p.verdict == "strict saddle"


def test_optimum_reached_in_float32_is_not_called_a_saddle():
    prob = ufm.Problem(num_classes=K, feature_dim=D, n_per_class=N_PER)
    hyp = _hyper()
    res = ufm.solve(prob, hyp._replace(lr=1.0), key=0, steps=20_000, log_every=1000)
    assert res.params.H.dtype == jnp.float32
    p = landscape.probe(prob, hyp, res.params)
    assert p.verdict != "strict saddle" and p.verdict != "not critical", p


def _retraction_hessian(prob, hyp, point):
    chart = landscape.coordinates(prob, point)
    def pulled_back(x):
        moved = jax.tree.map(jnp.add, point, chart.embed(x))
        return ufm.objective(prob, hyp, manifolds.retract(prob, moved))
    return jax.hessian(pulled_back)(jnp.zeros(chart.dim))


@pytest.mark.parametrize("seed", [0, 1])
def test_riemannian_hessian_matches_the_pullback_through_the_retraction(x64, seed):
    prob = _problem(geometry="sphere")
    hyp = ufm.Hyper(tau=0.7).astype(jnp.float64)
    point = jax.tree.map(jnp.asarray, _random_point(prob, seed))
    np.testing.assert_allclose(landscape.dense_hessian(prob, hyp, point),
                               _retraction_hessian(prob, hyp, point), atol=1e-10)


def test_sphere_optimum_needs_the_curvature_term(x64):
    prob = _problem(geometry="sphere")
    hyp = ufm.Hyper(tau=0.5)
    etf = theory.simplex_etf(K, D)
    optimum = ufm.Params(etf, etf[prob.labels].T, np.zeros(K))
    p = landscape.probe(prob, hyp, optimum)
    assert p.n_negative == 0 and p.verdict == "global min (certified)"
    point = jax.tree.map(jnp.asarray, optimum)
    chart = landscape.coordinates(prob, point)
    hyp64 = hyp.astype(jnp.float64)
    no_curvature = jax.vmap(lambda x: chart.extract(landscape.hvp(prob, hyp64, point,
                                                                  chart.embed(x))))(
        jnp.eye(chart.dim))
    assert np.linalg.eigvalsh(np.asarray(no_curvature))[0] < -1e-2  # wrongly a saddle


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_sphere_collapsed_point(tau):
    prob = _problem(geometry="sphere")
    hyp = ufm.Hyper(tau=tau)
    p = landscape.probe(prob, hyp, theory.sphere_collapsed_point(prob))
    assert p.grad_norm < 1e-12 and p.verdict == "strict saddle"
    expected = -1 / (tau * K * math.sqrt(N_PER))
    assert p.eig_min == pytest.approx(expected, rel=1e-10)
    assert p.n_negative == (D - 1) * (K - 1)


def test_probe_batch_equals_probe_one_by_one():
    prob, hyp = _problem(), _hyper()
    candidates = [theory.origin(prob, hyp), _rank_point(prob, hyp, 1),
                  theory.optimum_point(prob, hyp), _random_point(prob, 4)]
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *candidates)
    batch = landscape.probe_batch(prob, hyp, stacked)
    for i, point in enumerate(candidates):
        single = landscape.probe(prob, hyp, point)
        assert batch.verdict[i] == single.verdict
        for field in ("grad_norm", "eig_min", "eig_max", "n_negative", "n_zero", "sigma_G"):
            np.testing.assert_allclose(getattr(batch, field)[i], getattr(single, field),
                                       rtol=1e-10, atol=1e-14)
    assert batch.verdict == ["strict saddle", "strict saddle", "global min (certified)",
                             "not critical"]


def test_lanczos_probe_agrees_with_dense_probe():
    prob, hyp = _problem(), _hyper()
    point = _rank_point(prob, hyp, 1)
    dense = landscape.probe(prob, hyp, point, method="dense")
    sparse = landscape.probe(prob, hyp, point, method="lanczos", num_iters=60)
    assert sparse.verdict == dense.verdict == "strict saddle"
    assert sparse.eig_min == pytest.approx(dense.eig_min, rel=1e-8)
    assert sparse.n_negative == -1 and np.isnan(sparse.eig_min_off_symmetry)


def test_extreme_eigenvalues_dense_and_lanczos_agree():
    prob, hyp = _problem(), _hyper()
    point = _rank_point(prob, hyp, 1)
    dense = landscape.extreme_eigenvalues(prob, hyp, point, k=3, method="dense")
    sparse = landscape.extreme_eigenvalues(prob, hyp, point, k=3, method="lanczos",
                                           num_iters=80)
    assert dense.method == "dense" and sparse.method == "lanczos"
    np.testing.assert_allclose(sparse.smallest[0], dense.smallest[0], rtol=1e-9)
    np.testing.assert_allclose(sparse.largest[0], dense.largest[0], rtol=1e-9)
    assert sparse.smallest_residuals[0] < 1e-6
    assert np.all(np.diff(dense.smallest) >= 0) and np.all(np.diff(dense.largest) <= 0)


def test_robust_eigh_survives_a_lapack_failure(x64):
    """A float64 MSE Hessian (near the optimum, clustered zero eigenvalues) on which LAPACK's
    eigvalsh returns NaN on CPU; the shifted retry recovers the spectrum."""
    from pathlib import Path

    prob = ufm.Problem(num_classes=4, feature_dim=5, n_per_class=5, loss="mse", dtype="float64")
    hyp = ufm.Hyper(lam_W=5e-3, lam_H=5e-3, lam_b=0.0).astype(jnp.float64)
    v = np.load(Path(__file__).parent / "data" / "mse_optimum_eigh_nan.npy")
    point = ufm.Params(jnp.asarray(v[:20].reshape(4, 5)), jnp.asarray(v[20:120].reshape(5, 20)),
                       jnp.asarray(v[120:]))
    D = landscape.dense_hessian(prob, hyp, point)
    values, vectors = landscape.robust_eigh(D)
    assert np.all(np.isfinite(values))
    np.testing.assert_allclose(D @ vectors, vectors * values[None, :], atol=1e-12)
    batch = jax.vmap(lambda M: landscape.robust_eigh(M, vectors=False))(
        jnp.stack([D, jnp.full_like(D, jnp.nan)]))
    np.testing.assert_allclose(batch[0], values, atol=1e-12)
    assert np.all(np.isnan(batch[1]))  # a diverged point's Hessian: NaN, not a hang
