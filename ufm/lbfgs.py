"""L-BFGS whose inverse-Hessian product reads its memory twice, as two matrix products.

`optax.lbfgs` is `chain(scale_by_lbfgs, scale(-1), scale_by_zoom_linesearch)`; its
`scale_by_lbfgs` runs the two-loop recursion (Nocedal & Wright 2006, Alg. 7.4) as two
`lax.scan`s that slice one stored pair (s_i, y_i) of full-size vectors per iteration. Under
`vmap` the slice index is batched (each configuration has its own count), so every slice is a
gather that copies the pair, and the update writes a fresh copy of the whole memory; at the
grid benchmark's S1 (16 configurations, float64) that preconditioner costs about 20 gradient
evaluations an iteration (`benchmarks/lbfgs_cost.py`).

`scale_by_compact_lbfgs` computes the same direction with the recursion run on coefficients:
q = g + Y u and r = gamma q + S v, so with the m x m products SY[i, j] = s_i . y_j and
YY[i, j] = y_i . y_j,

    alpha_i = rho_i (S^T g + SY u)_i,                        u_i -= alpha_i   (newest first)
    beta_i  = rho_i (gamma Y^T g + gamma YY u + SY^T v)_i,   v_i += alpha_i - beta_i  (oldest first)
    r = gamma g + S^T v + gamma Y^T u,

rho_i = 1 / (s_i . y_i) (0 where that is 0, as optax), gamma = s.y / y.y of the newest pair
(min(1, 1 / |g|) before the first pair, as optax's `scale_init_precond`). The big vectors are
read in one pass for S^T g, S^T y, Y^T g, Y^T s, Y^T y (the new pair's row and column of SY and
YY) and one pass for the combination: matrix products over the stacked memory, no per-pair
slices. In exact arithmetic the direction is the two-loop's; in floating point it agrees to
rounding (`tests/test_lbfgs.py`).

A point the optimizer has not left writes no pair (s = 0: the count stays, the memory is
untouched), so a configuration frozen under `vmap` (converged, diverged, out of steps) keeps
its memory without a select over it: the solver's step selects only the line search's state
(`freeze`).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

MEMORY_SIZE = 10  # optax's, scipy's default
MAX_LINESEARCH_STEPS = 20  # optax.lbfgs's default


class CompactLBFGSState(NamedTuple):
    """count: pairs written; started: a call has been made (last_params and last_grad are a
    point's); last_params, last_grad: the point and gradient of the last call
    (named so that optax's state lookups find only the line search's `grad`); s, y: the
    stacked pairs (a leading memory axis on every leaf), in a ring (slot count % m is next);
    sy[i, j] = s_i . y_j; yy[i, j] = y_i . y_j."""

    count: jax.Array
    started: jax.Array
    last_params: optax.Params
    last_grad: optax.Params
    s: optax.Params
    y: optax.Params
    sy: jax.Array
    yy: jax.Array


def _dots(stack, vector):
    """(m,) products of the m stacked trees with one tree: a matrix-vector product per leaf
    (on the CPU several vectors at once take a slower matrix-matrix path)."""
    return sum(jnp.einsum("m...,...->m", a, b)
               for a, b in zip(jax.tree.leaves(stack), jax.tree.leaves(vector), strict=True))


def _combine(coefficients, stack):
    return jax.tree.map(lambda a: jnp.einsum("m,m...->...", coefficients.astype(a.dtype), a),
                        stack)


def scale_by_compact_lbfgs(memory_size: int = MEMORY_SIZE) -> optax.GradientTransformation:
    """The L-BFGS direction H_k g of `optax.scale_by_lbfgs(memory_size)` (with its
    `scale_init_precond`), by the coefficient recursion above."""
    m = memory_size

    def init_fn(params):
        dtype = jax.tree.leaves(params)[0].dtype
        stacked = jax.tree.map(lambda x: jnp.zeros((m,) + x.shape, x.dtype), params)
        return CompactLBFGSState(
            count=jnp.zeros((), jnp.int32), started=jnp.zeros((), bool),
            last_params=optax.tree.zeros_like(params), last_grad=optax.tree.zeros_like(params),
            s=stacked, y=stacked,
            sy=jnp.zeros((m, m), dtype), yy=jnp.zeros((m, m), dtype))

    def update_fn(grad, state, params):
        s_new = optax.tree.sub(params, state.last_params)
        y_new = optax.tree.sub(grad, state.last_grad)
        # No pair before the first point, nor where the point has not moved (a frozen run).
        write = state.started & (optax.tree.norm(s_new) > 0)
        slot = state.count % m
        S = jax.tree.map(lambda a, v: a.at[slot].set(jnp.where(write, v, a[slot])), state.s,
                         s_new)
        Y = jax.tree.map(lambda a, v: a.at[slot].set(jnp.where(write, v, a[slot])), state.y,
                         y_new)
        Sg, Yg = _dots(S, grad), _dots(Y, grad)
        Sy, Ys, Yy = _dots(S, y_new), _dots(Y, s_new), _dots(Y, y_new)  # the new pair's
        sy = state.sy.at[:, slot].set(jnp.where(write, Sy, state.sy[:, slot]))
        sy = sy.at[slot, :].set(jnp.where(write, Ys, sy[slot, :]))
        yy = state.yy.at[:, slot].set(jnp.where(write, Yy, state.yy[:, slot]))
        yy = yy.at[slot, :].set(jnp.where(write, Yy, yy[slot, :]))
        count = state.count + write.astype(jnp.int32)
        newest = (count - 1) % m
        diag = jnp.diagonal(sy)
        rho = jnp.where(diag == 0, 0.0, 1.0 / jnp.where(diag == 0, 1.0, diag))
        yy_newest = yy[newest, newest]
        gamma = jnp.where(yy_newest > 0, sy[newest, newest] / jnp.where(yy_newest > 0,
                                                                       yy_newest, 1.0), 1.0)
        gamma = jnp.where(count > 0, gamma, jnp.minimum(1.0, 1.0 / optax.tree.norm(grad)))
        order = (count + jnp.arange(m)) % m  # oldest first; empty slots have rho 0

        def first(j, carry):  # newest first
            u, alpha = carry
            i = order[m - 1 - j]
            a = rho[i] * (Sg[i] + sy[i] @ u)
            return u.at[i].add(-a), alpha.at[i].set(a)

        u, alpha = jax.lax.fori_loop(0, m, first, (jnp.zeros_like(Sg), jnp.zeros_like(Sg)))

        def second(j, v):  # oldest first
            i = order[j]
            b = rho[i] * (gamma * (Yg[i] + yy[i] @ u) + sy[:, i] @ v)
            return v.at[i].add(alpha[i] - b)

        v = jax.lax.fori_loop(0, m, second, jnp.zeros_like(Sg))
        direction = jax.tree.map(lambda g, sv, yu: gamma * g + sv + gamma * yu, grad,
                                 _combine(v, S), _combine(u, Y))
        return direction, CompactLBFGSState(count=count, started=jnp.ones((), bool),
                                            last_params=params, last_grad=grad, s=S, y=Y,
                                            sy=sy, yy=yy)

    return optax.GradientTransformation(init_fn, update_fn)


def lbfgs(memory_size: int = MEMORY_SIZE) -> optax.GradientTransformationExtraArgs:
    """`optax.lbfgs()` with the compact preconditioner: the same parts (direction, sign, zoom
    line search with strong Wolfe conditions and initial step 1) and the same state tuple (so
    `optax.value_and_grad_from_state` finds the line search's value and gradient).

    `update(..., moving=False)` hands the line search a zero direction: a run frozen under
    `vmap` (converged, diverged, out of steps) ends its search after one evaluation instead of
    spinning to `MAX_LINESEARCH_STEPS` at a point it cannot improve, which every running
    neighbour in the batch would wait for. The preconditioner still sees the true gradient,
    so its memory stays that of the run (`freeze`)."""
    precondition = scale_by_compact_lbfgs(memory_size)
    search = optax.scale_by_zoom_linesearch(max_linesearch_steps=MAX_LINESEARCH_STEPS,
                                            initial_guess_strategy="one")

    def init_fn(params):
        return (precondition.init(params), optax.EmptyState(), search.init(params))

    def update_fn(updates, state, params, *, value, grad, value_fn, moving=True):
        direction, precondition_state = precondition.update(updates, state[0], params)
        direction = jax.tree.map(lambda d: jnp.where(moving, -d, jnp.zeros_like(d)), direction)
        updates, search_state = search.update(direction, state[2], params, value=value,
                                              grad=grad, value_fn=value_fn)
        return updates, (precondition_state, state[1], search_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def freeze(keep, new_state, old_state):
    """The optimizer state of a step that did not move (`keep` False: old_state) without a
    select over the memory: the compact preconditioner's state is taken as is (a point not
    left writes no pair), every other part is selected."""
    def select(new, old):
        if isinstance(new, CompactLBFGSState):
            return new
        return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, old)

    return jax.tree.map(select, new_state, old_state,
                        is_leaf=lambda x: isinstance(x, CompactLBFGSState))
