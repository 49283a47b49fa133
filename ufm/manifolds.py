"""Search spaces: Euclidean (weight decay) and the oblique manifold (sphere geometry).

On the sphere every row w_k of W and every column h_i of H has unit norm (Yaras et al. 2022);
b, when present, stays Euclidean. For X with unit columns and an ambient U:

    P_X(U) = U - X ddiag(X^T U)        (tangent projection)
    R_X(V) = normalize(X + V)          (retraction)
    grad f(X) = P_X(egrad f(X))        (Riemannian gradient, Absil et al. 2008, Sec. 3.6)
"""
from __future__ import annotations

import jax.numpy as jnp

from ufm.problem import Params, Problem, normalize_columns, normalize_rows


def project_columns(X, U):
    """P_X(U) for X with unit-norm columns."""
    return U - X * jnp.sum(X * U, axis=0, keepdims=True)


def project_rows(X, U):
    """P_X(U) for X with unit-norm rows."""
    return U - X * jnp.sum(X * U, axis=1, keepdims=True)


def project(problem: Problem, point: Params, vector: Params) -> Params:
    """Tangent projection of an ambient `vector` at `point` (identity for weight decay); a
    `vector.W` of None (a classifier that is not trained) stays None."""
    if problem.geometry != "sphere":
        return vector
    W = None if vector.W is None else project_rows(point.W, vector.W)
    return Params(W, project_columns(point.H, vector.H), vector.b)


def retract(problem: Problem, point: Params) -> Params:
    """Map an ambient point back onto the search space (normalization on the sphere)."""
    if problem.geometry != "sphere":
        return point
    return Params(normalize_rows(point.W), normalize_columns(point.H), point.b)


def riemannian_grad(problem: Problem, point: Params, egrad: Params) -> Params:
    """Riemannian gradient = tangent projection of the Euclidean gradient."""
    return project(problem, point, egrad)
