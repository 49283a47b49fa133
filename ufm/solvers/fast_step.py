"""One step of the first-order solvers without autodiff: the fast path's arithmetic.

With S = Z / tau and G = (1 / (N tau)) dL/dS, where dL/dS is the loss's closed-form logit
gradient (`ufm.model.losses.LOGIT_GRADIENTS`), the gradient of the weight-decay UFM objective
(Zhu et al. 2021, see `ufm.model.problem`) is

    grad_W = G H^T + lam_W W,    grad_H = W^T G + lam_H H,    grad_b = G 1 + lam_b b.

On the sphere (Yaras et al. 2022) the W and H penalties drop out and the Euclidean gradient is
projected onto the tangent space of the oblique manifold before the optimizer sees it; the
update is projected again and the step retracted by normalization, as on the reference path.
A step is three matmuls (Z = W H, G H^T, W^T G) and elementwise work fused around them: no
residuals kept for a backward pass, no per-step reductions (on the sphere the projection and
the retraction keep their per-column ones). What is not trained (a fixed ETF
classifier, an absent bias) is left out of the gradient, the optimizer state and the update
instead of being masked to zero.

The optimizer is the same optax transformation as on the reference path, applied to the
trained leaves. Plain GD's update -lr grad is already tangent, so on the sphere it is not
projected a second time (`project_update=False`: a pass over H saved; the reference projects
again, which changes the result by round-off only, since P_X P_X = P_X on unit columns).
How often convergence and divergence are decided is the run loop's business (`ufm.solvers.loop`);
this module only supplies the plain step and the checked one.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from ufm.model import losses as _losses
from ufm.model import manifolds
from ufm.model.problem import (
    Hyper,
    Params,
    Problem,
    normalize_columns,
    normalize_rows,
    penalty,
    streams,
)

# The solvers the fast path runs: the first-order ones of `ufm.solvers.SOLVERS` (not L-BFGS).
FAST_SOLVERS = ("gd", "momentum", "nesterov", "adam")


def supports(problem: Problem, solver: str) -> bool:
    """Whether the fast path covers this problem and solver: the first-order solvers on the
    weight-decay and sphere geometries, every loss, bias on or off, learned or fixed-ETF
    classifier, balanced, per-class or multi-label counts; not the deep UFM, not the norm
    balls, not logits too large to hold (`ufm.model.problem.streams`: the reference path streams
    them) and not L-BFGS (reference path)."""
    return (solver in FAST_SOLVERS and problem.depth == 1 and problem.geometry in ("wd", "sphere")
            and not streams(problem))


def targets(problem: Problem, dtype: DTypeLike) -> jax.Array:
    """Y (K, N) as a comparison of the stored labels (N integers) with a class iota, fused into
    the step rather than a stored one-hot read from memory every step (K N numbers: 40% of H
    at K = 100, d = 256)."""
    if problem.multilabel:
        return problem.targets()
    classes = jax.lax.broadcasted_iota(jnp.int32, (problem.num_classes, 1), 0)
    return (classes == jnp.asarray(problem.labels)[None, :]).astype(dtype)


def trained(problem: Problem, params: Params) -> Params:
    """The leaves the optimizer moves (None for a fixed classifier and an absent bias)."""
    return Params(params.W if problem.classifier == "learned" else None, params.H,
                  params.b if problem.bias else None)


def logit_gradient_fn(problem: Problem) -> Callable:
    """The loss's closed-form logit gradient; without penalties on W and H (the sphere, the
    norm balls), where the loss falls like exp(-margin / tau), the form accurate there
    (`ufm.model.losses.ACCURATE_LOGIT_GRADIENTS`)."""
    if problem.geometry != "wd" and problem.loss in _losses.ACCURATE_LOGIT_GRADIENTS:
        return _losses.ACCURATE_LOGIT_GRADIENTS[problem.loss]
    return _losses.LOGIT_GRADIENTS[problem.loss]


def gradient(problem: Problem, hyper: Hyper, params: Params, Y: ArrayLike, *,
             with_value: bool = False) -> tuple[jax.Array | None, Params]:
    """(objective or None, gradient of the trained leaves): Euclidean for weight decay,
    Riemannian (tangent-projected) on the sphere. `Y` from `targets`."""
    W, H, b = params.W, params.H, params.b
    Z = W @ H
    if problem.bias:
        Z = Z + b[:, None]
    S = Z / hyper.tau
    # The reference's order: the mean's cotangent 1/N, then the temperature's 1/tau.
    G = logit_gradient_fn(problem)(S, Y, hyper) * (1.0 / problem.num_samples) / hyper.tau
    wd = problem.geometry == "wd"
    grad_W = grad_b = None
    if problem.classifier == "learned":
        # (H G^T)^T rather than G H^T: XLA's CPU backend runs the (d, N) x (N, K) product
        # up to 1.5x faster for small K (measured at K = 10, d = 512, N = 5000).
        grad_W = jax.lax.dot_general(H, G, (((1,), (1,)), ((), ()))).T
        grad_W = grad_W + hyper.lam_W * W if wd else manifolds.project_rows(W, grad_W)
    grad_H = W.T @ G
    grad_H = grad_H + hyper.lam_H * H if wd else manifolds.project_columns(H, grad_H)
    if problem.bias:
        grad_b = jnp.sum(G, axis=1) + hyper.lam_b * b
    value = None
    if with_value:
        value = jnp.mean(_losses.LOSSES[problem.loss](S, Y, hyper)) + penalty(problem, hyper,
                                                                              params)
    return value, Params(grad_W, grad_H, grad_b)


def apply(problem: Problem, params: Params, updates: Params,
          move: Callable | None = None) -> Params:
    """params + updates on the trained leaves (retracted on the sphere); with a boolean `move`,
    the leaves stay exactly as they are where it is False."""
    def add(x, u, normalize):
        if u is None:
            return x
        if move is None:
            new = x + u
            return new if normalize is None else normalize(new)
        new = x + jnp.where(move, u, jnp.zeros_like(u))
        # Normalizing an already unit point is not bit-exact: keep a frozen point as is.
        return new if normalize is None else jnp.where(move, normalize(new), x)

    sphere = problem.geometry == "sphere"
    return params._replace(W=add(params.W, updates.W, normalize_rows if sphere else None),
                           H=add(params.H, updates.H, normalize_columns if sphere else None),
                           b=add(params.b, updates.b, None))


def plain_step(problem: Problem, hyper: Hyper, tx: optax.GradientTransformation, Y: ArrayLike,
               params: Params, opt_state: optax.OptState, *,
               project_update: bool = True) -> tuple[Params, optax.OptState]:
    """One unchecked step: (params, opt_state) -> (params, opt_state)."""
    _, grad = gradient(problem, hyper, params, Y)
    updates, opt_state = tx.update(grad, opt_state, trained(problem, params))
    if project_update:
        updates = manifolds.project(problem, params, updates)
    return apply(problem, params, updates), opt_state


def checked_step(problem: Problem, hyper: Hyper, tx: optax.GradientTransformation, Y: ArrayLike,
                 params: Params, opt_state: optax.OptState, *,
                 project_update: bool = True
                 ) -> tuple[jax.Array, jax.Array, Params, optax.OptState]:
    """The quantities a check needs at `params`: (objective, gradient norm, update, new
    optimizer state); the caller decides whether to `apply` the update."""
    value, grad = gradient(problem, hyper, params, Y, with_value=True)
    updates, new_state = tx.update(grad, opt_state, trained(problem, params))
    if project_update:
        updates = manifolds.project(problem, params, updates)
    return value, optax.tree.norm(grad), updates, new_state
