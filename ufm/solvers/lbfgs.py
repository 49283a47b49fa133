"""L-BFGS for grids of runs: optax's L-BFGS with a preconditioner that vmaps.

`optax.lbfgs` is `chain(scale_by_lbfgs, scale(-1), scale_by_zoom_linesearch)`; its
`scale_by_lbfgs` runs the two-loop recursion (Nocedal & Wright 2006, Alg. 7.4) as two
`lax.scan`s that slice one stored pair (s_i, y_i) of full-size vectors per turn. Under `vmap`
the slice index is batched (each configuration has its own count), so every slice is a gather
that copies the pair. The compact preconditioner computes the same direction with the
recursion run on coefficients, q = g + Y u and r = gamma q + S v, with the m x m products
SY[i, j] = s_i . y_j and YY[i, j] = y_i . y_j kept in the state:

    alpha_i = rho_i (S^T g + SY u)_i,                        u_i -= alpha_i   (newest first)
    beta_i  = rho_i (gamma Y^T g + gamma YY u + SY^T v)_i,   v_i += alpha_i - beta_i  (oldest first)
    r = gamma g + S^T v + gamma Y^T u,

rho_i = 1 / (s_i . y_i) (0 where that is 0, as optax), gamma = s.y / y.y of the newest pair
(min(1, 1 / |g|) before the first pair, as optax's `scale_init_precond`). The memory is read by
two matrix-vector products (S^T g, Y^T g) and two combinations; the new pair's products come
from what the state keeps (S^T y = S^T g - S^T g_old, Y^T s = t Y^T d for the last direction d
and step t) and direct dots. In exact arithmetic the direction is the two-loop's; in floating
point it agrees to rounding (`tests/solvers/test_lbfgs.py`: 25 iterations within 1e-11 of optax's).

Measured (2-core CPU, float64, (K, d, n) = (10, 64, 100), 16 configurations, 35 iterations of
`ufm.solve_batch(..., solver="lbfgs", width=4, tol=0.0)` on one device): 1.8 s against 3.3 s
with optax's preconditioner (`benchmarks/RESULTS.md`). For one run at a time (width 1, what
the runner now chooses on a CPU from this size up) the two-loop recursion is the faster one
(a memory that one step both writes and reads is copied whole there), so
`lbfgs(compact=False)` keeps it; the solvers choose by whether the step is vmapped.

A point the optimizer has not left writes no pair (s = 0: the count stays, the memory is
untouched), so a configuration frozen under `vmap` (converged, diverged, out of steps) keeps
its compact memory without a select over it: the solver's step selects only the rest of the
state (`freeze`).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

MEMORY_SIZE = 10  # optax's, scipy's default
MAX_LINESEARCH_STEPS = 20  # optax.lbfgs's default


class CompactLBFGSState(NamedTuple):
    """count: pairs written; started: a call has been made (the last_* fields are a point's);
    last_params, last_grad: the point and gradient of the last call (named so that optax's
    state lookups find only the line search's `grad`); s, y: the stacked pairs (a leading
    memory axis on every leaf), in a ring (slot count % m is next); sy[i, j] = s_i . y_j,
    yy[i, j] = y_i . y_j; last_sg, last_yg: S^T g and Y^T g at the last call; last_yd: Y^T d
    for the direction d = -H g it returned."""

    count: jax.Array
    started: jax.Array
    last_params: optax.Params
    last_grad: optax.Params
    s: optax.Params
    y: optax.Params
    sy: jax.Array
    yy: jax.Array
    last_sg: jax.Array
    last_yg: jax.Array
    last_yd: jax.Array


def _dots(stack, vector):
    """(m,) products of the m stacked trees with one tree: a matrix-vector product per leaf."""
    return sum(jnp.einsum("m...,...->m", a, b)
               for a, b in zip(jax.tree.leaves(stack), jax.tree.leaves(vector), strict=True))


def _combine(coefficients, stack):
    return jax.tree.map(lambda a: jnp.einsum("m,m...->...", coefficients.astype(a.dtype), a),
                        stack)


def _init(params, m: int) -> CompactLBFGSState:
    dtype = jax.tree.leaves(params)[0].dtype
    stacked = jax.tree.map(lambda x: jnp.zeros((m,) + x.shape, x.dtype), params)
    small = jnp.zeros((m,), dtype)
    return CompactLBFGSState(
        count=jnp.zeros((), jnp.int32), started=jnp.zeros((), bool),
        last_params=optax.tree.zeros_like(params), last_grad=optax.tree.zeros_like(params),
        s=stacked, y=stacked, sy=jnp.zeros((m, m), dtype), yy=jnp.zeros((m, m), dtype),
        last_sg=small, last_yg=small, last_yd=small)


def _direction(grad, state: CompactLBFGSState, params, step_size, m: int):
    """(H g, state): the L-BFGS direction of `optax.scale_by_lbfgs(m)` (with its
    `scale_init_precond`) by the coefficient recursion, where the last step was
    params - last_params = step_size * (-H g) of the last call.

    The new pair's products with the memory come without a pass over it: S^T y = S^T g -
    S^T g_old and Y^T y likewise (S^T g_old kept from the last call, its new slot by a dot),
    Y^T s = step_size * Y^T d (kept); s . y and y . y by direct dots."""
    s_new = optax.tree.sub(params, state.last_params)
    y_new = optax.tree.sub(grad, state.last_grad)
    # No pair before the first point, nor where the point has not moved (a frozen run).
    write = state.started & (optax.tree.norm(s_new) > 0)
    slot = state.count % m
    put = lambda a, v: a.at[slot].set(jnp.where(write, v, a[slot]))
    S = jax.tree.map(put, state.s, s_new)
    Y = jax.tree.map(put, state.y, y_new)
    Sg, Yg = _dots(S, grad), _dots(Y, grad)  # the one pass over the memory for products
    s_y, y_y = optax.tree.vdot(s_new, y_new), optax.tree.vdot(y_new, y_new)
    Sy = (Sg - state.last_sg.at[slot].set(optax.tree.vdot(s_new, state.last_grad)))
    Yy = (Yg - state.last_yg.at[slot].set(optax.tree.vdot(y_new, state.last_grad)))
    Sy, Yy = Sy.at[slot].set(s_y), Yy.at[slot].set(y_y)
    Ys = (step_size * state.last_yd).at[slot].set(s_y)
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
    # The recursions on m-vectors, unrolled (m is static).
    u, alpha = jnp.zeros_like(Sg), jnp.zeros_like(Sg)
    for j in reversed(range(m)):  # newest first
        i = order[j]
        a = rho[i] * (Sg[i] + sy[i] @ u)
        u, alpha = u.at[i].add(-a), alpha.at[i].set(a)
    v = jnp.zeros_like(Sg)
    for j in range(m):  # oldest first
        i = order[j]
        b = rho[i] * (gamma * (Yg[i] + yy[i] @ u) + sy[:, i] @ v)
        v = v.at[i].add(alpha[i] - b)
    # H g = gamma g + S v + gamma Y u; its Y-products for the next call's Y^T s.
    direction = jax.tree.map(lambda g, sv, yu: gamma * g + sv + gamma * yu, grad,
                             _combine(v, S), _combine(u, Y))
    yd = -(gamma * Yg + sy.T @ v + gamma * (yy @ u))
    return direction, CompactLBFGSState(
        count=count, started=jnp.ones((), bool), last_params=params, last_grad=grad, s=S,
        y=Y, sy=sy, yy=yy, last_sg=Sg, last_yg=Yg, last_yd=yd)


def lbfgs(memory_size: int = MEMORY_SIZE, compact: bool = True
          ) -> optax.GradientTransformationExtraArgs:
    """`optax.lbfgs(memory_size=...)`: the same parts (direction, sign, zoom line search with
    strong Wolfe conditions and initial step 1) and the same state tuple (so
    `optax.value_and_grad_from_state` finds the line search's value and gradient), with the
    compact preconditioner (`compact`; the fast one under vmap) or optax's own two-loop
    recursion (the fast one for a single run on a CPU: there a memory that a step both reads
    and writes is copied whole, which the compact form's products pay for, twice).

    `update(..., moving=False)` hands the line search a zero direction: a run frozen under
    `vmap` (converged, diverged, out of steps) ends its search after one evaluation instead of
    spinning to `MAX_LINESEARCH_STEPS` at a point it cannot improve, which every running
    neighbour in the batch would wait for. The preconditioner still sees the true gradient,
    so the compact memory stays that of the run (`freeze`)."""
    search = optax.scale_by_zoom_linesearch(max_linesearch_steps=MAX_LINESEARCH_STEPS,
                                            initial_guess_strategy="one")
    two_loop = optax.scale_by_lbfgs(memory_size=memory_size)

    def init_fn(params):
        first = _init(params, memory_size) if compact else two_loop.init(params)
        return (first, optax.EmptyState(), search.init(params))

    def update_fn(updates, state, params, *, value, grad, value_fn, moving=True):
        if compact:  # the last step was its search's stepsize times the last direction
            direction, first = _direction(updates, state[0], params, state[2].learning_rate,
                                          memory_size)
        else:
            direction, first = two_loop.update(updates, state[0], params)
        direction = jax.tree.map(lambda d: jnp.where(moving, -d, jnp.zeros_like(d)), direction)
        updates, search_state = search.update(direction, state[2], params, value=value,
                                              grad=grad, value_fn=value_fn)
        return updates, (first, state[1], search_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def freeze(keep: ArrayLike, new_state: Any, old_state: Any) -> Any:
    """The optimizer state of a step that did not move (`keep` False: old_state) without a
    select over the memory: the compact preconditioner's state is taken as is (a point not
    left writes no pair), every other part is selected."""
    def select(new, old):
        if isinstance(new, CompactLBFGSState):
            return new
        return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, old)

    return jax.tree.map(select, new_state, old_state,
                        is_leaf=lambda x: isinstance(x, CompactLBFGSState))
