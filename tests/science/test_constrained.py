"""The constrained formulations: the norm-constrained UFM (layer-peeled model) on its norm balls,
solved by projected methods and probed on the active constraints' spheres, and Lu &
Steinerberger's one-example-per-class model (identity classifier on the sphere)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.analysis import landscape, theory
from ufm.model import manifolds
from ufm.running import config

K, D, N_PER = 4, 5, 3


def _layer_peeled_f_star(K, E_W, E_H, tau=1.0):
    """ln(1 + (K-1) exp(-(K/(K-1)) sqrt(E_W E_H) / tau)), written out independently."""
    margin = K / (K - 1) * math.sqrt(E_W * E_H) / tau
    return math.log(1.0 + (K - 1) * math.exp(-margin))


def _problem(geometry, **kw):
    return ufm.Problem(num_classes=kw.pop("K", K), feature_dim=kw.pop("d", D),
                       n_per_class=kw.pop("n", N_PER), geometry=geometry, dtype="float64", **kw)


@pytest.mark.parametrize("geometry, K, E_W, E_H, tau", [
    ("norm_ball", 4, 1.0, 1.0, 1.0),
    ("norm_ball", 4, 0.5, 2.0, 1.0),
    ("norm_ball", 6, 2.0, 0.3, 0.5),
    ("norm_ball_each", 4, 0.25, 1.0, 1.0),  # the tutorial's ||W||_F <= 1, ||h_i|| <= 1
    ("norm_ball_each", 5, 0.2, 1.0, 1.0),
])
def test_projected_gradient_reaches_the_closed_form(geometry, K, E_W, E_H, tau):
    prob = _problem(geometry, K=K, d=K + 1)
    hyp = ufm.Hyper(E_W=E_W, E_H=E_H, tau=tau, lr=0.5)
    f_star = _layer_peeled_f_star(K, E_W, E_H, tau)
    if geometry == "norm_ball_each" and E_W == 1 / K:
        assert f_star == pytest.approx(math.log1p((K - 1) * math.exp(-math.sqrt(K) / (K - 1))),
                                       rel=1e-14)
    opt = theory.optimum(prob, hyp)
    assert opt.objective == pytest.approx(f_star, rel=1e-14)
    assert (opt.w_norm_sq, opt.h_norm_sq) == (E_W, E_H)
    res = ufm.solve(prob, hyp, key=0, steps=20_000, solver="nesterov", log_every=2000, tol=1e-11)
    assert res.status == "converged"
    assert res.history["gap"][-1] == pytest.approx(0.0, abs=1e-12)
    W, H = np.asarray(res.params.W), np.asarray(res.params.H)
    # Both constraints hold with equality at the optimum, each feature on its sphere.
    assert np.sum(W**2) / K == pytest.approx(E_W, rel=1e-12)
    np.testing.assert_allclose(np.sum(H**2, axis=0), E_H, rtol=1e-9)
    assert res.history["nc1"][-1] < 1e-16
    assert res.history["nc2_W"][-1] < 1e-6 and res.history["nc3"][-1] < 1e-6


def test_the_closed_form_point_is_a_kkt_point():
    for geometry in ("norm_ball", "norm_ball_each"):
        prob, hyp = _problem(geometry), ufm.Hyper(E_W=0.7, E_H=1.3)
        point = theory.optimum_point(prob, hyp)
        with ufm.model.problem.x64_scope("float64"):
            point = jax.tree.map(jnp.asarray, point)
            hyp64 = hyp.astype(jnp.float64)
            value = ufm.objective(prob, hyp64, point)
            egrad = jax.grad(lambda p: ufm.objective(prob, hyp64, p))(point)
            residual = manifolds.riemannian_grad(prob, point, egrad, hyp64)
            inner = float(jnp.sum(point.W * egrad.W))
        assert float(value) == pytest.approx(_layer_peeled_f_star(K, 0.7, 1.3), rel=1e-14)
        assert max(np.max(np.abs(np.asarray(x))) for x in (residual.W, residual.H)) < 1e-14
        assert inner < 0  # the multiplier of W's constraint is positive: it pushes outward


@pytest.mark.parametrize("geometry", ["norm_ball", "norm_ball_each"])
def test_probe_on_the_active_constraints(geometry):
    prob, hyp = _problem(geometry), ufm.Hyper(E_W=0.5, E_H=2.0)
    point = theory.optimum_point(prob, hyp)
    p = landscape.probe(prob, hyp, point)
    # Chart of the boundary spheres: one coordinate less for W, one (norm_ball) or one per
    # feature (norm_ball_each) less for H.
    N = K * N_PER
    assert p.dim == K * D - 1 + (D * N - 1 if geometry == "norm_ball" else (D - 1) * N)
    assert p.verdict == "global min (certified)"
    assert p.n_negative == 0
    r = K - 1  # the rotations of the ETF's span: r(2d - r - 1)/2 zeros, nothing else
    assert p.n_zero == p.n_symmetry == r * (2 * D - r - 1) // 2
    assert p.eig_min_off_symmetry > 1e-3
    # The origin is inside both balls, critical, and a strict saddle: the Hessian is the
    # (W, H) cross block of G = dL/dZ, eigenvalues +- sigma_i(G), sigma = 1/(K sqrt(n)).
    origin = ufm.Params(np.zeros((K, D)), np.zeros((D, N)), np.zeros(K))
    p = landscape.probe(prob, hyp, origin)
    assert p.dim == K * D + D * N
    assert p.verdict == "strict saddle"
    assert p.eig_min == pytest.approx(-1 / (K * math.sqrt(N_PER)), rel=1e-12)
    assert p.n_negative == D * (K - 1)


def test_riemannian_hessian_of_the_balls_equals_the_pullback_through_the_radial_retraction():
    """At a KKT point with both constraints active, the Hessian on the boundary spheres is the
    Hessian of x -> f(R(X + embed(x))) at 0, R scaling W and each feature back to its sphere."""
    prob, hyp = _problem("norm_ball_each", K=3, d=4, n=2), ufm.Hyper(E_W=0.5, E_H=2.0)
    with ufm.model.problem.x64_scope("float64"):
        point = jax.tree.map(jnp.asarray, theory.optimum_point(prob, hyp))
        hyp64 = hyp.astype(jnp.float64)
        active = landscape.constraint_activity(prob, hyp64, point)
        assert active == (True, True)
        chart = landscape.coordinates(prob, point, active)
        r_W, r_H = math.sqrt(3 * 0.5), math.sqrt(2.0)

        def pulled_back(x):
            moved = jax.tree.map(jnp.add, point, chart.embed(x))
            W = r_W * moved.W / jnp.linalg.norm(moved.W)
            H = r_H * moved.H / jnp.linalg.norm(moved.H, axis=0, keepdims=True)
            return ufm.objective(prob, hyp64, moved._replace(W=W, H=H))

        expected = jax.hessian(pulled_back)(jnp.zeros(chart.dim))
        np.testing.assert_allclose(landscape.dense_hessian(prob, hyp64, point, active),
                                   expected, atol=1e-12)


def test_probe_refuses_features_partly_on_their_spheres():
    prob, hyp = _problem("norm_ball_each"), ufm.Hyper(E_W=0.5, E_H=2.0)
    point = theory.optimum_point(prob, hyp)
    point = point._replace(H=point.H * np.r_[np.ones(6), 0.5 * np.ones(6)])
    with pytest.raises(ValueError, match="some features on their sphere and some inside"):
        landscape.probe(prob, hyp, point)


def test_lbfgs_is_refused_on_the_balls_before_anything_compiles(tmp_path):
    prob = _problem("norm_ball")
    with pytest.raises(ValueError, match="solver='lbfgs' is not allowed with "
                                         "geometry='norm_ball': one of"):
        ufm.solve(prob, ufm.Hyper(), solver="lbfgs", steps=10)
    path = tmp_path / "grid.toml"
    path.write_text('[problem]\ngeometry = "norm_ball_each"\n[solver]\nname = "lbfgs"\n')
    with pytest.raises(config.ConfigError, match="solver.name.*norm_ball_each"):
        ufm.running.experiment.load(path)
    with pytest.raises(ValueError, match="E_W=0.0 is not allowed: a number > 0"):
        ufm.model.problem.validate_hyper(ufm.Hyper(E_W=0.0))


@pytest.mark.parametrize("K", [3, 5, 10])
def test_lu_steinerberger_model_reaches_the_simplex_etf(K):
    """Unit h_k in R^K, logits = h_k / tau (identity classifier, one sample per class): the
    optimum is h_k = (e_k - 1/K)/||e_k - 1/K||, f* = ln(1 + (K-1) exp(-sqrt(K/(K-1))/tau))."""
    prob = ufm.Problem(num_classes=K, feature_dim=K, n_per_class=1, geometry="sphere",
                       classifier="identity", dtype="float64")
    for tau in (1.0, 0.25):
        hyp = ufm.Hyper(tau=tau)
        f_star = math.log(1.0 + (K - 1) * math.exp(-math.sqrt(K / (K - 1)) / tau))
        assert theory.optimum(prob, hyp).objective == pytest.approx(f_star, rel=1e-14)
        res = ufm.solve(prob, hyp, key=K, steps=2000, solver="lbfgs", tol=1e-12)
        assert res.status == "converged"
        assert res.history["gap"][-1] == pytest.approx(0.0, abs=1e-13)
        np.testing.assert_array_equal(res.params.W, np.eye(K))  # the classifier never moves
        H = np.asarray(res.params.H)
        np.testing.assert_allclose(H.T @ H, (K * np.eye(K) - 1) / (K - 1), atol=1e-6)
        np.testing.assert_allclose(H.sum(axis=1), 0.0, atol=1e-6)
    p = landscape.probe(prob, hyp, res.params)
    assert p.verdict == "global min (certified)" and p.n_negative == 0
    with pytest.raises(ValueError, match="feature_dim=4 is not allowed: num_classes=3"):
        ufm.Problem(num_classes=3, feature_dim=4, classifier="identity")
