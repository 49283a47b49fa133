"""The reference path: a run's state, its optax optimizer, and the step by autodiff through
the objective with every test (stationarity, divergence, freezing) applied at every step. It
runs L-BFGS, the deep UFM and everything with `fast=False`; the fast path (`fast_step`) is
held to it (the same iterates to round-off in float64). On the sphere the first-order steps
are Riemannian (projected gradient, projected update, retraction by normalization); L-BFGS
minimizes the pullback f(normalize(V)) (Absil et al. 2008, Sec. 4.1)."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from ufm.model import manifolds
from ufm.model.problem import (
    BALL_GEOMETRIES,
    Hyper,
    Params,
    Problem,
    init_traced,
    objective,
)
from ufm.solvers import fast_step, lbfgs
from ufm.solvers.settings import (
    SOLVERS,
)
from ufm.solvers.statuses import (
    CONVERGED,
    DIVERGED,
    RUNNING,
    stationarity,
)


class RunState(NamedTuple):
    """State of one run (add a leading batch axis for a vmapped batch)."""

    variables: Params  # what the optimizer moves (on the sphere with L-BFGS: the unnormalized V)
    opt_state: Any  # optax state
    step: jax.Array  # shape=(), int32: steps taken
    status: jax.Array  # shape=(), int32: RUNNING, CONVERGED or DIVERGED
    diverged_at: jax.Array  # shape=(), int32: step whose update went non-finite, -1 if none
    grad_norm: jax.Array  # shape=(): (Riemannian) gradient norm at the last step's start
    stationarity: jax.Array  # shape=(): `stationarity` there, at the temperature stepped at


def make_optimizer(solver: str, hyper: Hyper, vmapped: bool = True) -> optax.GradientTransformation:
    """`vmapped`: whether the step runs under vmap (L-BFGS's compact preconditioner there, the
    two-loop recursion for one run at a time; `ufm.solvers.lbfgs`)."""
    if solver == "gd":
        return optax.sgd(hyper.lr)
    if solver in ("momentum", "nesterov"):
        return optax.sgd(hyper.lr, momentum=hyper.momentum, nesterov=solver == "nesterov")
    if solver == "adam":
        return optax.adam(hyper.lr, b1=hyper.beta1, b2=hyper.beta2)
    if solver == "lbfgs":
        return lbfgs.lbfgs(compact=vmapped)  # optax.lbfgs() that vmaps (`ufm.solvers.lbfgs`)
    raise ValueError(f"solver={solver!r} is not allowed: one of {list(SOLVERS)}")


def uses_pullback(problem: Problem, solver: str) -> bool:
    return problem.geometry == "sphere" and solver == "lbfgs"


def point_of(problem: Problem, solver: str, variables: Params) -> Params:
    """The UFM point (W, H, b) that the optimizer's variables stand for."""
    if uses_pullback(problem, solver):
        return manifolds.retract(problem, variables)
    return variables


def _trainable_mask(problem: Problem, grads: Params) -> Params:
    """Zero the gradient of what is not trained (a fixed ETF classifier, an absent bias)."""
    W = grads.W if problem.classifier == "learned" else jnp.zeros_like(grads.W)
    b = grads.b if problem.bias else jnp.zeros_like(grads.b)
    return grads._replace(W=W, b=b)


def make_step(
    problem: Problem, solver: str, hyper: Hyper, vmapped: bool = True
) -> tuple[optax.GradientTransformation, Callable]:
    """The optimizer and one masked step: state -> state (frozen once converged or diverged)."""
    tx = make_optimizer(solver, hyper, vmapped)
    pullback = uses_pullback(problem, solver)

    def value_fn(variables):
        return objective(problem, hyper, point_of(problem, solver, variables))

    def step(state: RunState, tol, max_steps) -> RunState:
        variables = state.variables
        if solver == "lbfgs":
            value, egrad = optax.value_and_grad_from_state(value_fn)(
                variables, state=state.opt_state
            )
        else:
            value, egrad = jax.value_and_grad(value_fn)(variables)
        grad = _trainable_mask(problem, egrad)
        if pullback:
            # d/dV f(normalize(V)) is the Riemannian gradient at normalize(V) divided by the
            # row/column norms of V; undo that, or a V that has grown would look converged.
            grad_norm = optax.tree.norm(
                Params(
                    grad.W * jnp.linalg.norm(variables.W, axis=1, keepdims=True),
                    grad.H * jnp.linalg.norm(variables.H, axis=0, keepdims=True),
                    grad.b,
                )
            )
        else:
            grad = manifolds.riemannian_grad(problem, variables, grad, hyper)
            grad_norm = optax.tree.norm(grad)
        running = state.status == RUNNING
        active = running & (state.step < max_steps)
        if solver == "lbfgs":
            updates, opt_state = tx.update(grad, state.opt_state, variables, value=value,
                                           grad=grad, value_fn=value_fn, moving=active)
        else:
            updates, opt_state = tx.update(grad, state.opt_state, variables)
            updates = manifolds.project(problem, variables, updates)
        stat = stationarity(problem, hyper, value, grad_norm)
        converged = active & (stat <= tol)
        # Finiteness from scalars only: the value, the gradient norm and the update's norm (a
        # reduction XLA fuses into the update's producer), never a separate pass over the
        # new iterate; the frozen branch adds an exact zero, so no select over whole trees.
        finite = (
            jnp.isfinite(value) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))
        )
        move = active & ~converged & finite
        diverged = active & ~converged & ~finite
        moved = jax.tree.map(
            lambda x, u: x + jnp.where(move, u, jnp.zeros_like(u)), variables, updates
        )
        if not pullback and problem.geometry != "wd":
            # Retraction (projection onto the balls) is not bit-exact on a point already there:
            # keep a frozen point as is.
            moved = jax.tree.map(lambda a, b: jnp.where(move, a, b),
                                 manifolds.retract(problem, moved, hyper), variables)
        status = jnp.where(converged, CONVERGED, jnp.where(diverged, DIVERGED, state.status))
        return RunState(
            variables=moved,
            # L-BFGS's memory is not selected over (`lbfgs.freeze`): a point not left adds no pair.
            opt_state=lbfgs.freeze(move, opt_state, state.opt_state),
            step=state.step + move.astype(jnp.int32),
            status=status.astype(jnp.int32),
            diverged_at=jnp.where(diverged, state.step, state.diverged_at),
            grad_norm=jnp.where(active, grad_norm, state.grad_norm),
            stationarity=jnp.where(active, stat, state.stationarity),
        )

    return tx, step


def initial_state(problem: Problem, solver: str, hyper: Hyper, key: jax.Array | int,
                  init_scale: ArrayLike, start: Params | None = None, fast: bool = False,
                  vmapped: bool = True) -> RunState:
    tx = make_optimizer(solver, hyper, vmapped)
    variables = init_traced(problem, key, init_scale) if start is None else start
    if problem.geometry in BALL_GEOMETRIES:  # a projected method starts feasible
        variables = manifolds.retract(problem, variables, hyper)
    dtype = problem.jnp_dtype
    return RunState(
        variables=variables,
        # The fast path keeps optimizer state for the trained leaves only.
        opt_state=tx.init(fast_step.trained(problem, variables) if fast else variables),
        step=jnp.zeros((), jnp.int32),
        status=jnp.full((), RUNNING, jnp.int32),
        diverged_at=jnp.full((), -1, jnp.int32),
        grad_norm=jnp.full((), jnp.nan, dtype),
        stationarity=jnp.full((), jnp.nan, dtype),
    )
