"""Gradients, Hessian-vector products and dense Hessians of the UFM objective in a chart
(`charts`). On the sphere the Riemannian Hessian of the oblique manifold, with the curvature
(Weingarten) term of Absil, Mahony & Trumpf (2013):

    Hess f(X)[V] = P_X(ehess f(X)[V]) - V ddiag(X^T egrad f(X)).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ufm.analysis.landscape.charts import (
    Coordinates,
    as_float64,
    coordinates,
)
from ufm.model import manifolds
from ufm.model.problem import (
    BALL_GEOMETRIES,
    Hyper,
    Params,
    Problem,
    objective,
    streams,
    x64_scope,
)


def gradient(problem: Problem, hyper: Hyper, params: Params) -> Params:
    """Euclidean gradient of the objective (Riemannian on the sphere, the KKT residual on the
    norm balls)."""
    egrad = jax.grad(lambda p: objective(problem, hyper, p))(params)
    return manifolds.riemannian_grad(problem, params, egrad, hyper)


def hvp(problem: Problem, hyper: Hyper, params: Params, tangent: Params) -> Params:
    """Euclidean Hessian-vector product, forward-over-reverse: d/dt grad f(params + t tangent);
    reverse-over-reverse, grad <grad f, tangent>, where the logits are streamed over class
    blocks (`ufm.model.problem.streams`: a custom VJP, which forward mode cannot enter)."""
    grad_fn = jax.grad(lambda p: objective(problem, hyper, p))
    if streams(problem):
        return jax.grad(lambda p: sum(jnp.vdot(g, t) for g, t in zip(
            jax.tree.leaves(grad_fn(p)), jax.tree.leaves(tangent))))(params)
    return jax.jvp(grad_fn, (params,), (tangent,))[1]


def _on_sphere(X, egrad, ehess, V, axis):
    """Riemannian Hessian of the spheres through X (one sphere over `axis`: None all of X, 1 the
    rows, 0 the columns; any radius): P_X(ehess[V]) - V <X, egrad>/||X||^2 with
    P_X(U) = U - X <X, U>/||X||^2."""
    inner = lambda A, B: jnp.sum(A * B, axis=axis, keepdims=axis is not None)
    norm_sq = inner(X, X)
    term = ehess - V * (inner(X, egrad) / norm_sq)
    return term - X * (inner(X, term) / norm_sq)


def riemannian_hvp(problem: Problem, hyper: Hyper, params: Params, tangent: Params,
                   active: tuple[bool, bool] | None = None) -> Params:
    """Riemannian Hessian-vector product (tangent in, tangent out): on the oblique manifold
    P_X(ehess[V]) - V ddiag(X^T egrad) for W (rows) and H (columns); on the norm balls the same
    on the boundary sphere of each `active` block (the Hessian of the Lagrangian on the
    tangent space of the active constraints), Euclidean inside; Euclidean for b."""
    egrad = jax.grad(lambda p: objective(problem, hyper, p))(params)
    ehess = hvp(problem, hyper, params, tangent)
    if problem.geometry == "sphere":
        axes_W, axes_H = 1, 0
    else:
        axes_W = None if active[0] else False
        axes_H = (None if problem.geometry == "norm_ball" else 0) if active[1] else False
    W_term = ehess.W if axes_W is False else _on_sphere(params.W, egrad.W, ehess.W, tangent.W,
                                                         axes_W)
    H_term = ehess.H if axes_H is False else _on_sphere(params.H, egrad.H, ehess.H, tangent.H,
                                                         axes_H)
    return Params(W_term, H_term, ehess.b)


def hessian_operator(
    problem: Problem, hyper: Hyper, params: Params, active: tuple[bool, bool] | None = None
) -> tuple[Coordinates, Callable]:
    """(coordinates, matvec): the Hessian (Riemannian on the sphere and on the active norm
    balls' boundaries) as a map on coordinates. `active`: as in `coordinates`, computed from
    the point when omitted (outside jit)."""
    if problem.geometry in BALL_GEOMETRIES and active is None:
        active = constraint_activity(problem, hyper, params)
    chart = coordinates(problem, params, active)
    curved = problem.geometry == "sphere" or (active is not None and any(active))

    def matvec(x):
        tangent = chart.embed(x)
        if curved:
            return chart.extract(riemannian_hvp(problem, hyper, params, tangent, active))
        return chart.extract(hvp(problem, hyper, params, tangent))

    return chart, matvec


def constraint_activity(problem: Problem, hyper: Hyper, params: Params) -> tuple[bool, bool] | None:
    """(W active, H active) on the host, for the charts of the norm balls (None for the other
    geometries). For "norm_ball_each" the features must be all on their spheres or all inside;
    a point with some of each is refused (the chart is one static shape)."""
    if problem.geometry not in BALL_GEOMETRIES:
        return None
    with x64_scope("float64"):
        active_W, active_H = manifolds.active_constraints(
            problem, hyper.astype(jnp.float64), as_float64(params))
        active_W, active_H = bool(active_W), np.asarray(active_H)
    if active_H.all() != active_H.any():
        raise ValueError(f"params.H is not allowed with some features on their sphere and some "
                         f"inside ({int(active_H.sum())} of {active_H.size} on it): the probes "
                         "take all or none")
    return (active_W or problem.classifier != "learned", bool(active_H.all()))


def dense_hessian(problem: Problem, hyper: Hyper, params: Params,
                  active: tuple[bool, bool] | None = None) -> jax.Array:
    """The (Riemannian) Hessian in coordinates, (dim, dim), symmetrized; one HVP per column.
    `active`: as in `hessian_operator`."""
    chart, matvec = hessian_operator(problem, hyper, params, active)
    eye = jnp.eye(chart.dim, dtype=params.H.dtype)
    Hess = jax.vmap(matvec)(eye)
    return 0.5 * (Hess + Hess.T)
