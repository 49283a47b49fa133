"""Search spaces: Euclidean (weight decay), the oblique manifold (sphere geometry) and the norm
balls of the norm-constrained UFM.

On the sphere every row w_k of W and every column h_i of H has unit norm (Yaras et al. 2022);
b, when present, stays Euclidean. For X with unit columns and an ambient U:

    P_X(U) = U - X ddiag(X^T U)        (tangent projection)
    R_X(V) = normalize(X + V)          (retraction)
    grad f(X) = P_X(egrad f(X))        (Riemannian gradient, Absil et al. 2008, Sec. 3.6)

The norm-constrained UFM (E & Wojtowytsch 2020; Fang et al. 2021) keeps W in the Frobenius
ball ||W||_F <= r_W = sqrt(K E_W) and H in ||H||_F <= r_H = sqrt(N E_H) ("norm_ball") or every
h_i in ||h_i|| <= sqrt(E_H) ("norm_ball_each"). Its solvers are projected: a step, then the
projection onto the ball, X -> X min(1, r / ||X||) (`retract`). Their stationarity measure is
the KKT residual (`riemannian_grad`): the gradient g itself inside a ball, and on its boundary,
where the constraint holds with a multiplier mu = -<g, X> / r^2 >= 0, the tangent part
g - <g, X> X / r^2 (a g pointing into the ball, mu < 0, is kept whole: the point is not
stationary, it can move inward).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ufm.model.problem import (
    BALL_GEOMETRIES,
    Hyper,
    Params,
    Problem,
    normalize_columns,
    normalize_rows,
)

# A constraint counts as active when the norm is within this factor of the dtype's epsilon of
# the radius (a projected point sits on the boundary to a few roundings).
ACTIVE_EPS = 1e3


def project_columns(X: ArrayLike, U: ArrayLike) -> jax.Array:
    """P_X(U) for X with unit-norm columns."""
    return U - X * jnp.sum(X * U, axis=0, keepdims=True)


def project_rows(X: ArrayLike, U: ArrayLike) -> jax.Array:
    """P_X(U) for X with unit-norm rows."""
    return U - X * jnp.sum(X * U, axis=1, keepdims=True)


def project(problem: Problem, point: Params, vector: Params) -> Params:
    """Tangent projection of an ambient `vector` at `point` (identity for weight decay and the
    norm balls, whose steps are projected back by `retract`); a `vector.W` of None (a
    classifier that is not trained) stays None."""
    if problem.geometry != "sphere":
        return vector
    W = None if vector.W is None else project_rows(point.W, vector.W)
    return Params(W, project_columns(point.H, vector.H), vector.b)


def ball_radii(problem: Problem, hyper: Hyper) -> tuple[jax.Array, jax.Array]:
    """(r_W, r_H): the radius of W's Frobenius ball, sqrt(K E_W), and of H's: sqrt(N E_H)
    ("norm_ball", the whole of H) or sqrt(E_H) ("norm_ball_each", each column)."""
    r_W = jnp.sqrt(problem.num_classes * hyper.E_W)
    if problem.geometry == "norm_ball":
        return r_W, jnp.sqrt(problem.num_samples * hyper.E_H)
    return r_W, jnp.sqrt(hyper.E_H)


def _ball_norms(problem: Problem, point: Params):
    """||W||_F and ||H||_F ("norm_ball") or the column norms of H, (1, N) ("norm_ball_each")."""
    norm_W = jnp.linalg.norm(point.W)
    if problem.geometry == "norm_ball":
        return norm_W, jnp.linalg.norm(point.H)
    return norm_W, jnp.linalg.norm(point.H, axis=0, keepdims=True)


def _into_ball(X, norm, radius):
    return X * jnp.minimum(1.0, radius / jnp.maximum(norm, jnp.finfo(X.dtype).tiny))


def retract(problem: Problem, point: Params, hyper: Hyper | None = None) -> Params:
    """Map an ambient point back onto the search space: normalization on the sphere, the
    projection onto the balls for the norm-constrained UFM (which needs `hyper` for E_W, E_H;
    a fixed classifier is left as it is)."""
    if problem.geometry == "sphere":
        return Params(normalize_rows(point.W), normalize_columns(point.H), point.b)
    if problem.geometry not in BALL_GEOMETRIES:
        return point
    r_W, r_H = ball_radii(problem, hyper)
    norm_W, norm_H = _ball_norms(problem, point)
    W = _into_ball(point.W, norm_W, r_W) if problem.classifier == "learned" else point.W
    return point._replace(W=W, H=_into_ball(point.H, norm_H, r_H))


def active_constraints(problem: Problem, hyper: Hyper,
                       point: Params) -> tuple[jax.Array, jax.Array]:
    """(W on its sphere, H on its sphere): booleans; for "norm_ball_each" the second is (1, N),
    one per feature. Active = norm >= radius (1 - ACTIVE_EPS eps)."""
    r_W, r_H = ball_radii(problem, hyper)
    norm_W, norm_H = _ball_norms(problem, point)
    slack = 1.0 - ACTIVE_EPS * jnp.finfo(point.H.dtype).eps
    return norm_W >= r_W * slack, norm_H >= r_H * slack


def _kkt_residual(X, g, active, radius, axis):
    inner = jnp.sum(X * g, axis=axis, keepdims=axis is not None)
    outward = active & (inner < 0)  # the multiplier -<g, X>/r^2 is positive
    return g - jnp.where(outward, inner / radius**2, 0.0) * X


def riemannian_grad(problem: Problem, point: Params, egrad: Params,
                    hyper: Hyper | None = None) -> Params:
    """Riemannian gradient = tangent projection of the Euclidean gradient (sphere); the KKT
    residual on the norm balls (needs `hyper`); the gradient itself for weight decay."""
    if problem.geometry not in BALL_GEOMETRIES:
        return project(problem, point, egrad)
    r_W, r_H = ball_radii(problem, hyper)
    active_W, active_H = active_constraints(problem, hyper, point)
    W = egrad.W
    if W is not None and problem.classifier == "learned":
        W = _kkt_residual(point.W, W, active_W, r_W, None)
    axis = None if problem.geometry == "norm_ball" else 0
    return egrad._replace(W=W, H=_kkt_residual(point.H, egrad.H, active_H, r_H, axis))
