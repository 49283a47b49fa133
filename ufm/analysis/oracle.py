"""The convex oracle of the weight-decay UFM with imbalanced classes.

For a convex loss (CE, label smoothing, MSE, rescaled MSE) every minimizer has collapsed features
(for fixed W, b the objective is strictly convex and separable in the h_i), and with class means
h_k the balanced factorization of Y = W [sqrt(n_1) h_1, ..., sqrt(n_K) h_K] gives

    min_{W,H} lam_W/2 ||W||^2 + lam_H/2 sum_k n_k ||h_k||^2  =  sqrt(lam_W lam_H) ||Y||_*

(the variational form of the nuclear norm; needs d >= rank Y). So the nonconvex UFM equals the
convex problem (Zhu et al. 2021, section 3; Thrampoulidis et al. 2022, "Imbalance trouble")

    min_{Z, b}  (1/N) sum_k n_k L((z_k + b) / tau, k) + sqrt(lam_W lam_H) ||Z diag(sqrt n)||_*
                + lam_b/2 ||b||^2,      Z = W H_bar (K x K), z_k its k-th column,

solved here in the variable Y = Z diag(sqrt n) by accelerated proximal gradient (FISTA with
gradient restarts; O'Donoghue & Candes 2015): the prox of the nuclear norm is singular-value soft
thresholding. Its value is a lower bound on the nonconvex objective everywhere and equals its
global minimum when d >= rank Z*. Pure JAX, float64, vmappable over the hyperparameters.

Minority collapse (Fang et al. 2021): when the majority/minority count ratio passes a threshold
the minority classifiers coincide exactly; in the convex problem the minority differences fall
below the soft threshold and their singular values are set to zero. `minority_collapse_threshold`
finds that ratio by bisection on the oracle.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ufm.analysis.imbalance import COLLAPSED_SPREAD, minority_spread
from ufm.model import losses as _losses
from ufm.model.problem import Hyper, Problem, validate_hyper, x64_scope

# The losses convex in the logits, whose UFM the oracle lifts to a convex program (focal is not
# convex); `ufm.analysis.landscape` certifies global minima on the same list.
CONVEX_LOSSES = ("ce", "ls", "ls_off_target", "mse", "mse_rescaled")


def _loss_curvature(loss: str, hyper: Hyper, K: int):
    """A bound on the largest eigenvalue of the Hessian of L(z, k) in z (before 1/tau^2)."""
    if loss in ("ce", "ls", "ls_off_target"):
        return 0.5  # softmax Hessian diag(p) - p p^T
    if loss == "mse":
        return 1.0
    return 2.0 * jnp.maximum(hyper.kappa, 1.0) / K  # mse_rescaled


class Oracle(NamedTuple):
    """The convex oracle's optimum: objective value, the balanced factorization W (K, K) and
    class-mean features H_bar (K, K) (columns h_k; rotate into any d >= rank dimensions), the
    bias, the rank of Z* = W H_bar, the fixed-point residual and the iterations used. `exact`:
    d >= rank, so the value is the nonconvex UFM's global minimum (else only a lower bound)."""

    objective: float
    W: np.ndarray
    H_bar: np.ndarray
    b: np.ndarray
    rank: int
    exact: bool
    residual: float
    iterations: int


class _FistaState(NamedTuple):
    """The accelerated proximal-gradient loop's state: the iterate (Y, b), the previous one,
    the momentum parameter t, the iteration count and the last prox-gradient residual."""

    Y: jax.Array
    b: jax.Array
    Y_prev: jax.Array
    b_prev: jax.Array
    t: jax.Array
    iteration: jax.Array
    residual: jax.Array


def _solve(loss: str, bias: bool, counts, hyper: Hyper, max_iter: int, tol: float):
    """FISTA with gradient restart on F(Y, b) = g(Y, b) + s ||Y||_*; counts are the (real)
    class weights n_k. Returns (objective, Y, b, residual, iterations). Pure: vmap over hyper.

    Step sizes: the Hessian of g is at most c/tau^2 (1/N) ||dY||^2 (Y-block) and
    c/tau^2 ||db||^2 (b-block) up to a factor 2 each (c the loss's curvature bound), so the
    diagonal metric (alpha for Y, beta for b) below majorizes it."""
    K = counts.shape[0]
    N = jnp.sum(counts)
    sqrt_n = jnp.sqrt(counts)
    targets = jnp.eye(K, dtype=counts.dtype)
    loss_fn = _losses.LOSSES[loss]
    s = jnp.sqrt(hyper.lam_W * hyper.lam_H)
    c = _loss_curvature(loss, hyper, K) / hyper.tau**2
    alpha = 2.0 * c / N
    beta = 2.0 * c + hyper.lam_b

    def smooth(Y, b):
        Z = Y / sqrt_n[None, :] + b[:, None]
        per_class = loss_fn(Z / hyper.tau, targets, hyper)
        return jnp.sum(counts * per_class) / N + 0.5 * hyper.lam_b * jnp.sum(b**2)

    grad = jax.grad(smooth, argnums=(0, 1))

    def prox_step(Y, b):
        gY, gb = grad(Y, b)
        U, S, Vt = jnp.linalg.svd(Y - gY / alpha, full_matrices=False)
        Y_new = (U * jnp.maximum(S - s / alpha, 0.0)[None, :]) @ Vt
        b_new = b - gb / beta if bias else b
        return Y_new, b_new

    def objective(Y, b):
        return smooth(Y, b) + s * jnp.sum(jnp.linalg.svd(Y, compute_uv=False))

    def body(state: _FistaState) -> _FistaState:
        Y, b, Y_prev, b_prev, t, k, _ = state
        t_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t**2))
        mom = (t - 1.0) / t_next
        Yy, by = Y + mom * (Y - Y_prev), b + mom * (b - b_prev)
        Y_new, b_new = prox_step(Yy, by)
        # Residual of the prox-gradient map in the metric's units (a gradient-size quantity).
        residual = jnp.sqrt(jnp.sum((alpha * (Yy - Y_new)) ** 2)
                            + jnp.sum((beta * (by - b_new)) ** 2))
        # Gradient restart: drop the momentum when it points uphill.
        restart = (jnp.sum((Yy - Y_new) * (Y_new - Y)) + jnp.sum((by - b_new) * (b_new - b))) > 0
        t_next = jnp.where(restart, 1.0, t_next)
        return _FistaState(Y_new, b_new, Y, b, t_next, k + 1, residual)

    def cond(state: _FistaState):
        return (state.iteration < max_iter) & (state.residual > tol)

    Y0 = jnp.zeros((K, K), counts.dtype)
    b0 = jnp.zeros((K,), counts.dtype)
    one = jnp.ones((), counts.dtype)
    state = _FistaState(Y0, b0, Y0, b0, one, jnp.zeros((), jnp.int32),
                        jnp.full((), jnp.inf, counts.dtype))
    final = jax.lax.while_loop(cond, body, state)
    return objective(final.Y, final.b), final.Y, final.b, final.residual, final.iteration


_solve_jit = jax.jit(_solve, static_argnames=("loss", "bias", "max_iter"))


def _check(problem: Problem, hyper: Hyper) -> None:
    if problem.geometry != "wd":
        raise ValueError(f"geometry={problem.geometry!r} is not allowed for the convex oracle: "
                         "'wd' (the weight-decay UFM)")
    if problem.loss not in CONVEX_LOSSES:
        raise ValueError(f"loss={problem.loss!r} is not allowed for the convex oracle: one of "
                         f"{list(CONVEX_LOSSES)} (a convex loss; focal is not)")
    if problem.classifier != "learned":
        raise ValueError(f"classifier={problem.classifier!r} is not allowed for the convex "
                         "oracle: 'learned'")
    validate_hyper(hyper)
    for name in ("lam_W", "lam_H"):
        if np.any(np.asarray(getattr(hyper, name)) <= 0):
            raise ValueError(f"{name}={float(np.min(getattr(hyper, name)))!r} is not allowed "
                             "for the convex oracle: a number > 0 (the nuclear-norm weight is "
                             "sqrt(lam_W lam_H))")


def convex_oracle(problem: Problem, hyper: Hyper, *, counts: ArrayLike | None = None,
                  max_iter: int = 200_000, tol: float = 1e-13) -> Oracle:
    """The global optimum of the weight-decay UFM with a convex loss through its convex
    reformulation (module docstring), in float64.

    `counts` overrides the problem's class counts with real weights (the threshold search uses
    fractional ratios); `tol` bounds the prox-gradient residual (a gradient-size quantity)."""
    _check(problem, hyper)
    counts = np.asarray(problem.class_counts if counts is None else counts, np.float64)
    if counts.shape != (problem.num_classes,) or np.any(counts <= 0):
        raise ValueError(f"counts={counts.tolist()!r} is not allowed: num_classes="
                         f"{problem.num_classes} positive numbers")
    with x64_scope("float64"):
        value, Y, b, residual, k = _solve_jit(problem.loss, problem.bias, jnp.asarray(counts),
                                              hyper.astype(jnp.float64), max_iter,
                                              jnp.float64(tol))
        Y, b = np.asarray(Y), np.asarray(b)
    U, S, Vt = np.linalg.svd(Y)
    rank = int(np.sum(S > 1e-9 * max(S.max(initial=0.0), 1e-300)))
    # The penalty's minimizing factorization of Y: W = c U S^1/2, H~ = S^1/2 V^T / c with
    # c^2 = sqrt(lam_H / lam_W) (equal penalties lam_W ||W||^2 = lam_H ||H~||^2).
    c = (float(hyper.lam_H) / float(hyper.lam_W)) ** 0.25
    root = np.sqrt(S)
    W = c * U * root[None, :]
    H_bar = (root[:, None] * Vt) / (c * np.sqrt(counts)[None, :])
    return Oracle(float(value), W, H_bar, b, rank, problem.feature_dim >= rank,
                  float(residual), int(k))


def minority_collapse_threshold(problem: Problem, hyper: Hyper, *, minority: ArrayLike,
                                n_minority: float = 1.0, max_ratio: float = 1e4,
                                rtol: float = 1e-3,
                                collapsed_below: float = COLLAPSED_SPREAD) -> float:
    """The smallest majority/minority count ratio R at which the minority classifiers collapse
    onto one vector (spread < `collapsed_below`) at the global optimum, with n_k = n_minority
    for the classes listed in `minority` and R n_minority for the others (the problem gives K,
    loss and bias; its counts are ignored). Bisection in log R on the convex oracle, to
    relative precision `rtol`; inf if no collapse up to `max_ratio`."""
    K = problem.num_classes
    minority = sorted({int(k) for k in minority})
    if not (2 <= len(minority) < K and all(0 <= k < K for k in minority)):
        raise ValueError(f"minority={minority!r} is not allowed: at least 2 and fewer than "
                         f"num_classes={K} class indices in 0..{K - 1}")

    def collapsed(ratio):
        counts = np.full(K, ratio * n_minority)
        counts[minority] = n_minority
        found = convex_oracle(problem, hyper, counts=counts)
        return minority_spread(found.W, minority) < collapsed_below

    if collapsed(1.0):
        return 1.0
    if not collapsed(max_ratio):
        return math.inf
    lo, hi = 0.0, math.log(max_ratio)
    while hi - lo > rtol:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if collapsed(math.exp(mid)) else (mid, hi)
    return math.exp(hi)
