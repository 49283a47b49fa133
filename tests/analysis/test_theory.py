import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.analysis import theory


@pytest.mark.parametrize("K, d", [(2, 1), (3, 2), (4, 3), (5, 7), (10, 10)])
def test_simplex_etf_gram(K, d):
    W = theory.simplex_etf(K, d)
    assert W.shape == (K, d)
    np.testing.assert_allclose(W @ W.T, K / (K - 1) * (np.eye(K) - 1 / K), atol=1e-12)
    np.testing.assert_allclose(W.sum(0), 0.0, atol=1e-12)


def test_simplex_etf_needs_room():
    with pytest.raises(ValueError, match="feature_dim=2"):
        theory.simplex_etf(5, 2)


def _optimal_point(prob, opt):
    """The configuration the closed form describes: ETF (or orthogonal frame) with its norms."""
    K, d = prob.num_classes, prob.feature_dim
    if prob.loss.startswith("mse") and not prob.bias:
        frame = np.eye(K, d)
    else:
        frame = theory.simplex_etf(K, d)
    W = math.sqrt(opt.w_norm_sq) * frame
    H = math.sqrt(opt.h_norm_sq) * frame[prob.labels].T
    return ufm.Params(jnp.asarray(W), jnp.asarray(H), jnp.asarray(opt.b))


CASES = [
    # (problem kwargs, hyper kwargs)
    (dict(loss="ce"), dict(lam_W=1e-3, lam_H=2e-3)),
    (dict(loss="ce"), dict(lam_W=1e-3, lam_H=2e-3, tau=0.3)),
    (dict(loss="ce", bias=False), dict(lam_W=3e-3, lam_H=1e-3)),
    (dict(loss="ls"), dict(lam_W=1e-3, lam_H=2e-3, alpha=0.2)),
    (dict(loss="ls_off_target"), dict(lam_W=1e-3, lam_H=2e-3, alpha=0.2)),
    (dict(loss="focal"), dict(lam_W=1e-3, lam_H=2e-3, gamma=2.0)),
    (dict(loss="focal"), dict(lam_W=1e-2, lam_H=1e-2, gamma=0.5, tau=2.0)),
    (dict(loss="mse"), dict(lam_W=1e-3, lam_H=2e-3, lam_b=0.0)),
    (dict(loss="mse", bias=False), dict(lam_W=1e-3, lam_H=2e-3)),
    (dict(loss="mse_rescaled"), dict(lam_W=1e-3, lam_H=2e-3, lam_b=0.0, kappa=1.0, M=3.0)),
    (dict(loss="ce", geometry="sphere"), dict(tau=0.2)),
]


@pytest.mark.parametrize("prob_kw, hyp_kw", CASES)
def test_closed_form_point_attains_f_star_and_is_critical(x64, prob_kw, hyp_kw):
    prob = ufm.Problem(num_classes=5, feature_dim=6, n_per_class=3, dtype="float64", **prob_kw)
    hyp = ufm.Hyper(**hyp_kw)
    opt = theory.optimum(prob, hyp)
    assert opt is not None and not opt.is_zero
    point = _optimal_point(prob, opt)
    hyper = hyp.astype(jnp.float64)
    np.testing.assert_allclose(ufm.objective(prob, hyper, point), opt.objective, rtol=1e-12)
    grad = jax.grad(lambda p: ufm.objective(prob, hyper, p))(point)
    if prob.geometry == "sphere":
        grad = ufm.model.manifolds.riemannian_grad(prob, point, grad)
    if not prob.bias:
        grad = grad._replace(b=jnp.zeros_like(grad.b))
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad)) < 1e-10


@pytest.mark.parametrize(
    "loss, alpha, c_L",
    [("ce", 0.0, 1.0), ("ls", 0.3, 0.7), ("ls_off_target", 0.3, 1 - 0.3 * 4 / 3), ("mse", 0.0, 1.0)]
)
def test_collapse_to_zero_threshold(loss, alpha, c_L):
    """Nonzero optimum iff K sqrt(n lam_W lam_H) < c_L (1 for CE/MSE, 1-alpha for LS,
    1 - alpha K/(K-1) with alpha/(K-1) off target)."""
    K, n = 4, 9
    prob = ufm.Problem(num_classes=K, feature_dim=5, n_per_class=n, loss=loss)
    for factor, zero in ((0.99, False), (1.01, True)):
        lam = factor * c_L / (K * math.sqrt(n))  # lam_W = lam_H = lam: K s = factor c_L
        opt = theory.optimum(prob, ufm.Hyper(lam_W=lam, lam_H=lam, lam_b=0.0, alpha=alpha))
        assert opt.is_zero is zero
    opt = theory.optimum(prob, ufm.Hyper(lam_W=1.0, lam_H=1.0, lam_b=0.0, alpha=alpha))
    expected = math.log(K) if loss != "mse" else (K - 1) / (2 * K)
    assert opt.objective == pytest.approx(expected, rel=1e-14) and opt.w_norm_sq == 0.0


def test_focal_with_gamma_zero_equals_ce():
    prob = ufm.Problem(num_classes=6, feature_dim=8, n_per_class=4)
    hyp = ufm.Hyper(lam_W=2e-3, lam_H=5e-4, gamma=0.0)
    focal = theory.optimum(ufm.Problem(6, 8, n_per_class=4, loss="focal"), hyp)
    ce = theory.optimum(prob, hyp)
    assert focal.objective == pytest.approx(ce.objective, rel=1e-12)
    assert focal.w_norm_sq == pytest.approx(ce.w_norm_sq, rel=1e-9)


@pytest.mark.parametrize("prob_kw, hyp_kw", [
    (dict(class_counts=(2, 3, 4)), {}),                   # imbalanced
    (dict(n_per_class=2, feature_dim=1), {}),            # d < K-1
    (dict(n_per_class=2, loss="mse"), dict(lam_b=1e-3)),  # penalized MSE bias
    (dict(n_per_class=2, loss="mse", bias=False, feature_dim=2), {}),  # MSE w/o bias needs d>=K
    (dict(n_per_class=2, classifier="fixed_etf"), {}),
    (dict(n_per_class=2, geometry="sphere", loss="focal"), {}),
    (dict(n_per_class=2, loss="mse_rescaled"), dict(lam_b=0.0, kappa=2.0)),
])
def test_no_closed_form_gives_none(prob_kw, hyp_kw):
    kwargs = dict(num_classes=3, feature_dim=3) | prob_kw
    assert theory.optimum(ufm.Problem(**kwargs), ufm.Hyper(**hyp_kw)) is None
