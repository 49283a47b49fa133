"""`ufm.model.manifolds`: projections keep points feasible, the KKT residual keeps inward
gradients."""

import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.model import manifolds

K, D, N_PER = 4, 5, 3


def _problem(geometry, **kw):
    return ufm.Problem(num_classes=kw.pop("K", K), feature_dim=kw.pop("d", D),
                       n_per_class=kw.pop("n", N_PER), geometry=geometry, dtype="float64", **kw)


def test_projection_keeps_points_feasible_and_the_kkt_residual_keeps_inward_gradients():
    prob, hyp = _problem("norm_ball_each"), ufm.Hyper(E_W=0.5, E_H=2.0)
    params = ufm.init(prob, 3, scale=100.0)  # every norm far outside
    with ufm.model.problem.x64_scope("float64"):
        hyp64 = hyp.astype(jnp.float64)
        inside = manifolds.retract(prob, params, hyp64)
        assert float(jnp.sum(inside.W**2)) / K == pytest.approx(0.5, rel=1e-14)
        np.testing.assert_allclose(jnp.sum(inside.H**2, axis=0), 2.0, rtol=1e-14)
        small = params._replace(W=1e-3 * params.W, H=1e-3 * params.H)
        assert jnp.array_equal(manifolds.retract(prob, small, hyp64).H, small.H)  # inside: kept
        # On the boundary: a gradient pointing into the ball (descent outward) loses its normal
        # part; one pointing out of it (descent inward) is kept whole.
        grad = ufm.Params(-inside.W, inside.H, jnp.zeros(K))
        residual = manifolds.riemannian_grad(prob, inside, grad, hyp64)
        np.testing.assert_allclose(residual.W, 0.0, atol=1e-14)
        np.testing.assert_array_equal(residual.H, inside.H)
