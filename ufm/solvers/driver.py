"""Full-batch solvers for the UFM and the one entry point `solve`.

Solvers (optax): "gd", "momentum" (heavy ball), "nesterov", "adam", "lbfgs" (`ufm.solvers.lbfgs`:
optax's L-BFGS with its zoom line search and a preconditioner that vmaps; `Hyper.lr` is not
used). On the sphere the first-order solvers are Riemannian: the gradient is
projected to the tangent space, the optimizer's update is projected again (Adam's per-coordinate
scaling leaves the tangent space) and the step is retracted by normalization. L-BFGS on the
sphere minimizes the pullback f(normalize(V)) over unconstrained V, whose Euclidean gradient is
the Riemannian gradient divided by the row/column norms of V (Absil et al. 2008, Sec. 4.1); the
convergence test uses the Riemannian gradient norm in both cases.

A run is a `lax.scan` over log points: each point is kept (variables and gradient norm), then
up to `log_every` steps run in a loop that stops when the run has ended (under vmap: every run of
the batch). The NC metrics of the kept points are computed after the scan, all at once, by their
own compiled program (`_compiled_records`): compiled once, not inside every run program.
`solve` executes the scan in a few jitted chunks so a progress bar can advance and a run
whose configurations have all finished stops early. `make_run` is the same run as one pure,
vmappable function of (hyper, key, f_star). Inside the scan nothing raises: a configuration
whose gradient norm drops to `tol` freezes as "converged", one whose iterate turns non-finite
freezes at its last finite point as "diverged"; neighbours in a vmapped batch are untouched.
"""
from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ufm.analysis import nc as metrics
from ufm.analysis import theory
from ufm.model import manifolds
from ufm.model.problem import (
    BALL_GEOMETRIES,
    Hyper,
    Params,
    Problem,
    init_traced,
    mean_loss,
    objective,
    penalty,
    representations,
    validate_hyper,
)
from ufm.solvers import batching as runner
from ufm.solvers import fast_step as fused
from ufm.solvers import kernels, lbfgs
from ufm.solvers.settings import (  # noqa: F401 (re-exported: the names of 0.1)
    CHECK_EVERY,
    PROJECTED_SOLVERS,
    SOLVERS,
    STEP_LIMIT,
    Anneal,
    FastPath,
    SolverSettings,
    check_solver_geometry,
    default_tol,
)

# Appended only: checkpoints store a status by its index.
STATUSES = ("running", "converged", "max_steps", "diverged", "plateau")
RUNNING, CONVERGED, MAX_STEPS, DIVERGED, PLATEAU = range(5)
# What each final status means (the summary tables print the lines of those that appear).
STATUS_MEANINGS = {
    "converged": "stationary to tol at the loss's own scale (`ufm.solvers.stationarity`), or "
                 "within tol of the closed-form f* (relative) when the step budget ran out",
    "max_steps": "the step budget ran out before the run was stationary",
    "plateau": "the step budget ran out with the gradient norm under tol, but not at the "
               "loss's own scale: a plateau (at small tau, anneal tau or use L-BFGS; "
               "docs/science.md, section 7)",
    "diverged": "the iterate turned non-finite; frozen at its last finite point",
}
# A run that ends on a plateau: gradient norm <= tol, stationarity > PLATEAU_FACTOR tol.
PLATEAU_FACTOR = 10.0
HISTORY_KEYS = ("objective", "loss", "grad_norm", "stationarity", "gap",
                "rel_gap") + metrics.METRIC_NAMES
# The reference path's steps between two tests of whether a run goes on (`_run_logs`).
REFERENCE_STEPS_PER_TEST = 10


def stationarity(problem: Problem, hyper: Hyper, value, grad_norm):
    """The number a run's tolerance is compared with: stationarity at the loss's own scale.

    On the weight-decay UFM it is the gradient norm: the penalties give the objective its
    scale. Without penalties on W and H (the sphere, the norm balls) the loss's gradient
    vanishes like exp(-margin / tau) on its way to the optimum, so an absolute test says
    "converged" on plateaus far from it. There it is the gradient norm of tau log f,

        tau ||grad f|| / f,

    the gradient of a smooth maximum of minus the logit margins at temperature tau (the
    objective the softmax-code search minimizes, `ufm.analysis.codes`): scale-free in tau and f (f
    > 0
    for every loss), zero exactly at the critical points of f."""
    if problem.geometry == "wd":
        return grad_norm
    return grad_norm * hyper.tau / jnp.abs(value)


def final_status(status, grad_norm, stat, rel_gap, tol):
    """The status of a run whose steps have ended (numpy or jax arrays): a run still RUNNING
    when its budget ran out is CONVERGED if its objective is within tol of the closed-form f*
    (relative; rel_gap NaN where none is known), PLATEAU if its gradient norm is under tol
    while its stationarity is more than PLATEAU_FACTOR tol, and MAX_STEPS otherwise."""
    xp = jnp if isinstance(status, jax.Array) else np
    near_optimum = xp.abs(rel_gap) <= tol  # False for NaN
    plateau = (grad_norm <= tol) & (stat > PLATEAU_FACTOR * tol)
    ended = xp.where(near_optimum, CONVERGED, xp.where(plateau, PLATEAU, MAX_STEPS))
    return xp.where(status == RUNNING, ended, status)


def annealed_tau(anneal: Anneal | None, tau, start):
    """The temperature of the log interval that starts at global step `start`."""
    if anneal is None:
        return tau
    tau_from = jnp.maximum(jnp.asarray(anneal.tau_from, jnp.result_type(tau)), tau)
    done = jnp.clip(start / jnp.maximum(anneal.steps, 1), 0.0, 1.0)
    return jnp.where(done < 1.0, tau * (tau_from / tau) ** (1.0 - done), tau)


class RunState(NamedTuple):
    """State of one run (add a leading batch axis for a vmapped batch)."""

    variables: Params  # what the optimizer moves (on the sphere with L-BFGS: the unnormalized V)
    opt_state: Any  # optax state
    step: jax.Array  # shape=(), int32: steps taken
    status: jax.Array  # shape=(), int32: RUNNING, CONVERGED or DIVERGED
    diverged_at: jax.Array  # shape=(), int32: step whose update went non-finite, -1 if none
    grad_norm: jax.Array  # shape=(): (Riemannian) gradient norm at the last step's start
    stationarity: jax.Array  # shape=(): `stationarity` there, at the temperature stepped at


def _optimizer(solver: str, hyper: Hyper, vmapped: bool = True) -> optax.GradientTransformation:
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


def _uses_pullback(problem: Problem, solver: str) -> bool:
    return problem.geometry == "sphere" and solver == "lbfgs"


def point_of(problem: Problem, solver: str, variables: Params) -> Params:
    """The UFM point (W, H, b) that the optimizer's variables stand for."""
    if _uses_pullback(problem, solver):
        return manifolds.retract(problem, variables)
    return variables


def _trainable_mask(problem: Problem, grads: Params) -> Params:
    """Zero the gradient of what is not trained (a fixed ETF classifier, an absent bias)."""
    W = grads.W if problem.classifier == "learned" else jnp.zeros_like(grads.W)
    b = grads.b if problem.bias else jnp.zeros_like(grads.b)
    return grads._replace(W=W, b=b)


def _make_step(
    problem: Problem, solver: str, hyper: Hyper, vmapped: bool = True
) -> tuple[optax.GradientTransformation, Callable]:
    """The optimizer and one masked step: state -> state (frozen once converged or diverged)."""
    tx = _optimizer(solver, hyper, vmapped)
    pullback = _uses_pullback(problem, solver)

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


def _record(problem: Problem, solver: str, hyper: Hyper, variables: Params, grad_norm, stat,
            f_star) -> dict:
    """Every logged quantity at one point of a run (one log point of the history): the
    optimizer's `variables` there, the gradient norm and the stationarity at the last step's
    start (at the temperature stepped at, while tau is annealed)."""
    point = point_of(problem, solver, variables)
    loss = mean_loss(problem, hyper, point)  # once: `objective` is loss + penalty
    value = loss + penalty(problem, hyper, point)
    record = {
        "objective": value,
        "loss": loss,
        "grad_norm": grad_norm,
        "stationarity": stat,
        "gap": value - f_star,
        "rel_gap": (value - f_star) / jnp.abs(f_star),
    }
    b = point.b if problem.bias else None
    # The classifier's input: H itself, or the last hidden representation of a deep UFM.
    reps = representations(problem, point)
    if problem.multilabel:
        record.update(metrics.multilabel_metrics(point.W, reps[-1], problem.sample_sets,
                                                problem.label_sets, b))
    else:
        record.update(metrics.run_metrics(point.W, reps[-1], jnp.asarray(problem.labels), b))
    if problem.depth > 1:  # layer-wise NC1: the free features (layer 0) up to the last layer
        sets = problem.sample_sets
        for layer, X in enumerate(reps):
            record[f"nc1_layer{layer}"] = metrics.nc1(X, jnp.asarray(sets), int(sets.max()) + 1)
    return record


def _records(problem: Problem, solver: str, hyper: Hyper, trace, f_star,
             points_at_once: int | None = None) -> dict:
    """`_record` at every point of one run's trace ((variables, grad_norm, stationarity)
    with a leading axis of log points), `points_at_once` of them vmapped at a time (None:
    all)."""
    one = lambda point: _record(problem, solver, hyper, *point, f_star)
    return runner.map_points(one, trace,
                             trace[1].shape[0] if points_at_once is None else points_at_once)


def _initial_state(problem: Problem, solver: str, hyper: Hyper, key, init_scale,
                   start: Params | None = None, fast: bool = False,
                   vmapped: bool = True) -> RunState:
    tx = _optimizer(solver, hyper, vmapped)
    variables = init_traced(problem, key, init_scale) if start is None else start
    if problem.geometry in BALL_GEOMETRIES:  # a projected method starts feasible
        variables = manifolds.retract(problem, variables, hyper)
    dtype = problem.jnp_dtype
    return RunState(
        variables=variables,
        # The fast path keeps optimizer state for the trained leaves only.
        opt_state=tx.init(fused.trained(problem, variables) if fast else variables),
        step=jnp.zeros((), jnp.int32),
        status=jnp.full((), RUNNING, jnp.int32),
        diverged_at=jnp.full((), -1, jnp.int32),
        grad_norm=jnp.full((), jnp.nan, dtype),
        stationarity=jnp.full((), jnp.nan, dtype),
    )


def _fast_block(problem: Problem, solver: str, hyper: Hyper, tol, max_steps, log_every: int,
                fast_path: FastPath) -> Callable:
    """`block(state, start) -> state`: the fast path's `log_every` steps from global step
    `start` (the same for every configuration of a batch, so it stays unbatched under vmap).

    Steps run in intervals of `check_every`: plain steps (`fused.plain_step`: no reductions,
    no masks), then one checked step that applies the reference's rules at its start point x:
    stationarity <= tol: converged, frozen at x; objective or gradient non-finite at x:
    diverged, frozen at the interval's first point (the last one that passed a check, with
    `diverged_at` its step: the first non-finite iterate came within check_every steps of it);
    update non-finite: diverged, frozen at x with `diverged_at` its step (the reference's rule
    exactly). An interval is cut short at `max_steps`, so runs stop where the reference stops.
    With `fast_path.kernel`, plain steps are the Pallas kernel's one-pass GD step.
    """
    tx = _optimizer(solver, hyper)
    Y = fused.targets(problem, problem.jnp_dtype)
    check_every = fast_path.check_every
    # plain GD's update is already tangent (`ufm.solvers.fast_step`)
    project_update = solver != "gd"

    def interval(state: RunState, n) -> RunState:  # n >= 1 steps
        def plain(_, carry):
            if fast_path.kernel:  # plain GD: optax.sgd keeps no state
                return kernels.gd_step(problem, hyper, carry[0]), carry[1]
            return fused.plain_step(problem, hyper, tx, Y, *carry, project_update=project_update)

        variables, opt_state = jax.lax.fori_loop(0, n - 1, plain,
                                                 (state.variables, state.opt_state))
        value, grad_norm, updates, new_opt_state = fused.checked_step(
            problem, hyper, tx, Y, variables, opt_state, project_update=project_update)
        running = state.status == RUNNING
        stat = stationarity(problem, hyper, value, grad_norm)
        converged = running & (stat <= tol)
        point_finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
        # Plain GD's update is -lr grad: its norm is a scalar product, not another pass.
        update_norm = hyper.lr * grad_norm if solver == "gd" else optax.tree.norm(updates)
        finite = point_finite & jnp.isfinite(update_norm)
        move = running & ~converged & finite
        diverged = running & ~converged & ~finite
        back = ~running | (diverged & ~point_finite)  # to the interval's first point
        variables = fused.apply(problem, variables, updates, move)
        pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(back, b, a), new, old)
        last = state.step + n - 1  # the checked point's step
        return RunState(
            variables=pick(variables, state.variables),
            opt_state=pick(jax.tree.map(lambda a, b: jnp.where(move, a, b), new_opt_state,
                                        opt_state), state.opt_state),
            step=jnp.where(back, state.step, last + move.astype(jnp.int32)),
            status=jnp.where(converged, CONVERGED,
                             jnp.where(diverged, DIVERGED, state.status)).astype(jnp.int32),
            diverged_at=jnp.where(diverged, jnp.where(point_finite, last, state.step),
                                  state.diverged_at),
            grad_norm=jnp.where(running, grad_norm, state.grad_norm),
            stationarity=jnp.where(running, stat, state.stationarity),
        )

    def run_interval(state, first, length):
        n = jnp.clip(max_steps - first, 0, length)
        return jax.lax.cond(n > 0, interval, lambda s, _: s, state, n)

    def block(state: RunState, start) -> RunState:
        full, rest = divmod(log_every, check_every)
        # Intervals until the run ends (under vmap: until every run of the batch has ended).
        going = lambda carry: (carry[0] < full) & (carry[1].status == RUNNING)
        state = jax.lax.while_loop(
            going,
            lambda c: (c[0] + 1, run_interval(c[1], start + c[0] * check_every, check_every)),
            (jnp.zeros((), jnp.int32), state))[1]
        return run_interval(state, start + full * check_every, rest) if rest else state

    return block


def _run_logs(problem, solver, log_every, num_points, hyper, state, tol, max_steps,
              first_step=0, fast_path: FastPath | None = None, anneal: Anneal | None = None,
              vmapped: bool = True):
    """Scan over `num_points` log points from global step `first_step`: at each, the point is
    kept (its variables and gradient norm: the trace its metrics are computed from, after the
    scan) and then `log_every` steps run, none past `max_steps`. `fast_path` None is the
    reference path (autodiff, every step checked), else the fast path (`_fast_block`).
    `anneal`: the temperature's continuation schedule (`Anneal`; None: tau throughout).
    Returns (state after the last point's steps, trace)."""

    def steps_at(interval_hyper):
        if fast_path is not None:
            return _fast_block(problem, solver, interval_hyper, tol, max_steps, log_every,
                               fast_path)
        _, step = _make_step(problem, solver, interval_hyper, vmapped)
        per_test = min(REFERENCE_STEPS_PER_TEST, log_every)
        full, rest = divmod(log_every, per_test)

        def some(state, n):  # n steps, a fixed count: no test between them
            return jax.lax.fori_loop(0, n, lambda _, s: step(s, tol, max_steps), state)

        def steps(state, _):
            # `log_every` steps in groups of `per_test`, until the step budget or the run's end
            # (under vmap: every run's end). `step` keeps a finished run frozen, so a group
            # needs no test inside it; under vmap a loop whose test is batched selects its
            # whole carry (L-BFGS's memory too) at every turn, so it turns once per group.
            def going(carry):
                i, s = carry
                return (i < full) & (s.status == RUNNING) & (s.step < max_steps)

            state = jax.lax.while_loop(going, lambda c: (c[0] + 1, some(c[1], per_test)),
                                       (jnp.zeros((), jnp.int32), state))[1]
            if not rest:
                return state
            return jax.lax.cond((state.status == RUNNING) & (state.step < max_steps),
                                lambda s: some(s, rest), lambda s: s, state)

        return steps

    def advance(state, start):
        # A finished run skips its steps (a real branch when unbatched, e.g. one configuration
        # at a time under `lax.map`; under vmap both sides run and the mask keeps it frozen).
        if anneal is None:
            return jax.lax.cond(state.status == RUNNING, steps_at(hyper), lambda s, _: s,
                                state, start)
        tau = annealed_tau(anneal, hyper.tau, start)
        changed = tau != annealed_tau(anneal, hyper.tau, start - log_every)
        # A new temperature is a new objective: fresh optimizer state, and a run that was
        # stationary at the last one goes on.
        fresh = _initial_state(problem, solver, hyper, None, 1.0, state.variables,
                               fast=fast_path is not None, vmapped=vmapped).opt_state
        resumed = changed & (state.status == CONVERGED)
        state = state._replace(
            opt_state=jax.tree.map(lambda a, b: jnp.where(changed, a, b), fresh,
                                   state.opt_state),
            status=jnp.where(resumed, RUNNING, state.status).astype(jnp.int32),
            # it waited, frozen, for this interval: its steps count from here
            step=jnp.where(resumed, jnp.maximum(state.step, start), state.step))
        interval = steps_at(hyper._replace(tau=tau))
        return jax.lax.cond(state.status == RUNNING, interval, lambda s, _: s, state, start)

    def outer(state, index):
        kept = (state.variables, state.grad_norm, state.stationarity)
        start = first_step + index * log_every
        # Past the step budget (the run's last point, or a call that only reads the points)
        # nothing runs: the predicate is the same for a whole batch, so this branch is real.
        state = jax.lax.cond(start < max_steps, advance, lambda s, _: s, state, start)
        return state, kept

    return jax.lax.scan(outer, state, jnp.arange(num_points, dtype=jnp.int32))


class RunOutput(NamedTuple):
    """What `make_run`'s pure run returns (a pytree: vmapped, every field gains a leading
    axis): the point reached, its history (the initial point and every log point), steps run
    and the status as an int code into `STATUSES`."""

    params: Params
    history: dict
    steps: jax.Array
    status: jax.Array


def make_run(problem: Problem, settings: SolverSettings | None = None, **options) -> Callable:
    """A whole run as one pure function `run(hyper, key, f_star) -> RunOutput(params, history,
    steps, status)`, jittable and vmappable over all three arguments (status is an int code
    into `STATUSES`; history holds the initial point and every log point). `f_star` is the
    closed-form optimum (NaN when unknown); hyper should already be in the problem's dtype.
    `settings` / `options`: as in `solve` (here tol defaults to 0: the budget runs out)."""
    settings = SolverSettings.of(settings, **options)
    if settings.tol is None:  # a pure run ends at its budget unless given a tol
        settings = settings._replace(tol=0.0)
    settings = settings.checked(problem)
    solver, steps, tol = settings.name, settings.steps, settings.tol
    fast_path, anneal = settings.fast_path(problem), settings.anneal()

    def run(hyper: Hyper, key, f_star):
        state = _initial_state(problem, solver, hyper, key, settings.init_scale,
                               fast=fast_path is not None)
        state, trace = _run_logs(problem, solver, settings.log_every, settings.num_logs + 1,
                                 hyper, state, tol, steps, 0, fast_path, anneal)
        history = _records(problem, solver, hyper, trace, f_star)
        status = final_status(state.status, state.grad_norm, state.stationarity,
                              history["rel_gap"][-1], tol)
        return RunOutput(point_of(problem, solver, state.variables), history, state.step,
                         status)

    return run


class Result(NamedTuple):
    """A finished run: the point reached, its history (one entry per log point, the initial
    point first; `history["iteration"]` gives the iteration of each), steps run, status
    ("converged" | "max_steps" | "plateau" | "diverged"; `STATUS_MEANINGS`), the step that
    diverged (or None), the closed-form optimum (None where unknown) and wall seconds."""

    params: Params
    history: dict
    steps: int
    status: str
    diverged_at: int | None
    optimum: theory.Optimum | None
    seconds: float


class BatchResult(NamedTuple):
    """A vmapped batch of runs: the fields of `Result` with a leading configuration axis."""

    params: Params  # leaves (B, ...)
    history: dict  # arrays (B, T); "iteration" is (T,)
    steps: np.ndarray  # (B,)
    status: list  # B strings
    diverged_at: np.ndarray  # (B,), -1 where none
    optimum: list  # B entries, None where unknown
    seconds: float


def optimum_values(problem: Problem, hypers: Hyper) -> tuple[list, np.ndarray]:
    """Closed-form optima of each configuration of a scalar or batched Hyper: (list of Optimum
    or None, f* array with NaN where unknown), one entry per configuration."""
    arrays = [np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in hypers]
    batch = max(a.shape[0] for a in arrays)
    arrays = [np.broadcast_to(a, (batch,)) for a in arrays]
    opts = [theory.optimum(problem, Hyper(*(float(a[i]) for a in arrays))) for i in range(batch)]
    return opts, np.array([np.nan if o is None else o.objective for o in opts])


@functools.lru_cache(maxsize=64)
def _compiled_chunk(problem, solver, log_every, points_per_chunk, batched, width=None,
                    fast_path=None, annealing=False):
    """jit(start), jit(chunk) (over a configuration axis when `batched`, see
    `runner.over_batch`); one compilation per static signature. `fast_path`: as in
    `_run_logs`; `annealing`: whether the chunk's `anneal` argument (an `Anneal` of traced
    scalars) schedules tau. Neither computes a metric: `_compiled_records` does, from the
    chunk's trace."""

    vmapped = batched and width != 1  # `runner.over_batch`: width 1 runs unbatched

    def chunk(hyper, state, tol, max_steps, first_step, anneal):
        return _run_logs(problem, solver, log_every, points_per_chunk, hyper, state, tol,
                         max_steps, first_step, fast_path, anneal if annealing else None,
                         vmapped=vmapped)

    def start(hyper, key, init_scale, start_params):
        return _initial_state(problem, solver, hyper, key, init_scale, start_params,
                              fast=fast_path is not None, vmapped=vmapped)

    if batched:  # each local device runs its shard in slices of `width` (`ufm.solvers.batching`)
        chunk = runner.over_configurations(chunk, (0, 0, None, None, None, None), width)
        start = runner.over_configurations(start, (0, 0, None, 0), width)
    return jax.jit(start), jax.jit(chunk)


@functools.lru_cache(maxsize=64)
def _compiled_records(problem, pullback, batched, width, points_at_once):
    """jit(records): the history entries of a chunk's trace. Compiled apart from the run (the
    metrics cost as much to compile as the steps; one program serves every solver without a
    pullback, and the first and the later chunks) and computed for all of a call's points at
    once, `points_at_once` per configuration vmapped at a time."""
    solver = "lbfgs" if pullback else "gd"  # all `point_of` needs to know

    def records(hyper, trace, f_star):
        return _records(problem, solver, hyper, trace, f_star, points_at_once)

    if batched:
        records = runner.over_configurations(records, (0, 0, 0), width)
    return jax.jit(records)


def _as_key(key):
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    return key


def _execute(problem, hyper, keys, f_star, settings: SolverSettings, *, start_params, progress,
             batched, batch_size, desc=None, width=None):
    """Host loop over jitted chunks, each followed by the metrics of the points it kept;
    returns host arrays of everything (a batch is sharded over the local devices and trimmed
    back to `batch_size`). `settings` are checked (`SolverSettings.checked`)."""
    solver, steps, log_every = settings.name, settings.steps, settings.log_every
    tol, init_scale = settings.tol, settings.init_scale
    fast_path, anneal = settings.fast_path(problem), settings.anneal()
    num_logs = math.ceil(steps / log_every)
    n_points = num_logs + 1  # the start and every log point
    n_dev = jax.local_device_count()
    dtype = problem.jnp_dtype
    if start_params is not None:
        start_params = jax.tree.map(lambda x: jnp.asarray(x, dtype), start_params)
    if batched:
        # Each local device runs an equal share in slices of `width` (None: its whole share,
        # one vmap); pad to whole slices on every device, then shard.
        share = -(-batch_size // n_dev)
        if width is not None and width >= share:
            width = None
        runner.check_in_flight(problem, width or share, batch_size,
                               "compute fewer at once (width=1: one configuration per vmapped "
                               "slice on each device)")
        hyper, keys, f_star, start_params = runner.shard_over_devices(runner.pad_batch(
            (hyper, keys, f_star, start_params), batch_size, (width or share) * n_dev))
    configs = int(np.shape(f_star)[0]) if batched else 1
    per_chunk, n_chunks = runner.logs_per_call(problem, n_points, configs)
    at_once = width or configs // n_dev if batched else 1
    start, chunk = _compiled_chunk(problem, solver, log_every, per_chunk, batched, width,
                                   fast_path, anneal is not None)
    anneal_args = Anneal(jnp.asarray(0.0 if anneal is None else anneal.tau_from, dtype),
                         jnp.asarray(0 if anneal is None else anneal.steps, jnp.int32))
    records = _compiled_records(problem, _uses_pullback(problem, solver), batched, width,
                                runner.points_width(problem, at_once, per_chunk))
    tol_arr, steps_arr = jnp.asarray(tol, dtype), jnp.asarray(steps, jnp.int32)
    no_steps = jnp.asarray(0, jnp.int32)
    state = start(hyper, keys, jnp.asarray(init_scale, dtype), start_params)
    trim = (lambda a: np.asarray(a)[:batch_size]) if batched else np.asarray
    history_parts = []
    own_bar = not hasattr(progress, "update")
    bar = (
        runner.progress_bar(
            progress, total=steps * batch_size, desc=desc or f"{problem.loss} {solver}"
        )
        if own_bar
        else progress
    )
    done_steps = 0
    kept = 0  # points whose metrics are in history_parts
    for c in range(n_chunks):
        first_step = jnp.asarray(c * per_chunk * log_every, jnp.int32)
        state, trace = chunk(hyper, state, tol_arr, steps_arr, first_step, anneal_args)
        # Left on the device until the end: the host waits only for the statuses below.
        history_parts.append(records(hyper, trace, f_star))
        kept += per_chunk
        finished = int(np.sum(trim(state.status) != RUNNING))
        advance = min(kept * log_every, steps) * batch_size
        if bar is not None:
            bar.update(advance - done_steps)
            if own_bar:
                bar.set_postfix(finished=f"{finished}/{batch_size}")
        done_steps = advance
        if kept >= n_points:
            break
        # Runs stationary at an annealed temperature go on at the next one: the last change
        # comes at the first interval starting at or after anneal.steps.
        annealing = anneal is not None and (c + 1) * per_chunk * log_every < (
            anneal.steps + log_every)
        if finished == batch_size and not annealing:
            # Every run stopped within the chunk, perhaps after its last kept point: keep the
            # point it stopped at (a call with no step budget only reads the points).
            _, trace = chunk(hyper, state, tol_arr, no_steps, first_step, anneal_args)
            final = jax.tree.map(lambda a: a[..., :1], records(hyper, trace, f_star))
            history_parts.append(final)
            kept += 1
            break
    if bar is not None:
        bar.update(steps * batch_size - done_steps)
        if own_bar:
            bar.close()
    n_logged = min(n_points, kept)
    history = {
        k: np.concatenate([trim(r[k]) for r in history_parts], axis=-1)[..., :n_logged]
        for k in history_parts[0]
    }
    history["iteration"] = np.minimum(np.arange(n_logged) * log_every, steps)
    if batched:
        state = jax.tree.map(lambda a: a[:batch_size], state)
    return state, history


def solve(problem: Problem, hyper: Hyper = Hyper(), settings: SolverSettings | None = None,  # noqa: B008
          *, key=0, start: Params | None = None, progress: bool | None = None,
          **options) -> Result:
    """Minimize the UFM objective of `problem` from a random start.

    Args:
      problem, hyper: the UFM and its hyperparameters (scalars).
      settings: how to solve (`SolverSettings`: solver name, steps, log_every, tol,
        init_scale, fast, check_every, kernel, anneal_from, anneal_fraction); default the
        defaults. `options`: any of its fields as keywords, replacing the settings' (`solver=`
        for `name`), e.g. `solve(prob, hyper, solver="lbfgs", steps=500)`.
      key: a `jax.random.key` or an int seed; identical keys give identical runs.
      start: a point (Params) to start from instead of a random one (e.g. near a saddle).
      progress: show a progress bar (default: when stderr is a terminal), or a tqdm-like bar
        to advance (how a grid keeps one bar over all of its runs).

    The settings, as `SolverSettings` documents them:
      steps: maximum number of steps; log_every: steps between logged metrics.
      tol: stop ("converged") when the run is stationary to tol at the loss's own scale
        (`stationarity`: the (Riemannian) gradient norm on weight decay, tau ||grad f|| / f
        without penalties on W and H); default `default_tol(problem)`. A run whose budget
        runs out is "converged" within tol of a closed-form f*, "plateau" where only the
        gradient norm is under tol, else "max_steps" (`final_status`).
      name (solver=): one of SOLVERS.  init_scale: norm scale of the random start.
      fast: take the fast path where it applies (`fast_step.supports`: the first-order solvers
        at depth 1): closed-form gradients, convergence and divergence decided every
        `check_every` steps (`_fast_block`); False: the reference path (autodiff, every step
        checked). Both give the same iterates to round-off; `steps` and `diverged_at` of a
        run that stops early agree to within `check_every`.
      kernel: "xla", or "pallas" for plain GD on weight decay: the one-pass Pallas kernel
        (`ufm.solvers.kernels`; a GPU's Triton backend, interpret mode elsewhere, for testing).
      anneal_from, anneal_fraction: continuation in the temperature (`Anneal`): start at
        tau = anneal_from and lower it geometrically to hyper.tau over the first
        anneal_fraction of the steps (how small temperatures reach the softmax code on the
        sphere, docs/science.md, section 7); None: no annealing.
    Returns:
      `Result` (params, history, steps, status, diverged_at, optimum, seconds).

    Example:
      >>> prob = ufm.Problem(num_classes=4, feature_dim=8, n_per_class=5, dtype="float64")
      >>> res = ufm.solve(prob, ufm.Hyper(lam_W=1e-2, lam_H=1e-2), solver="lbfgs", steps=500)
    """
    settings = SolverSettings.of(settings, **options).checked(problem)
    validate_hyper(hyper)
    if any(np.ndim(v) for v in hyper):
        raise ValueError("solve() takes one configuration: every Hyper field must be a scalar "
                         "(use solve_batch for a batch)")
    opts, f_star = optimum_values(problem, hyper)
    t0 = time.perf_counter()
    with problem.x64_scope():
        dtype = problem.jnp_dtype
        state, history = _execute(
            problem, hyper.astype(dtype), _as_key(key), jnp.asarray(f_star[0], dtype),
            settings, start_params=start, progress=progress, batched=False, batch_size=1)
        params = point_of(problem, settings.name, state.variables)
        jax.block_until_ready(params)
    status = int(final_status(np.asarray(state.status), np.asarray(state.grad_norm),
                              np.asarray(state.stationarity), history["rel_gap"][-1],
                              settings.tol))
    diverged_at = int(state.diverged_at)
    return Result(params, history, int(state.step), STATUSES[status],
                  None if diverged_at < 0 else diverged_at, opts[0], time.perf_counter() - t0)


def solve_batch(problem: Problem, hypers: Hyper, keys, settings: SolverSettings | None = None, *,
                start: Params | None = None, progress: bool | None = None,
                desc: str | None = None, width: int | None = None,
                **options) -> BatchResult:
    """`solve` for a batch of configurations in ONE jitted, vmapped call.

    `width`: configurations per vmapped slice; None vmaps the whole batch, a smaller width runs
    `lax.map` over slices of that many inside the same compiled call (1: one configuration at a
    time, the fast way for large problems on a CPU; see `ufm.solvers.batching.batch_width`).
    With several local devices the batch is sharded over them, and each device runs its share
    in slices of `width` (None: its whole share in one vmap).

    `hypers` fields are scalars or arrays of a common length B; `keys` is a batch of B keys or
    a list of B int seeds; `start`, if given, is a batch of B starting points (leaves with a
    leading axis B). A diverging configuration is flagged and frozen without touching its
    neighbours. `settings` / `options`: as in `solve`.
    """
    settings = SolverSettings.of(settings, **options).checked(problem)
    validate_hyper(hypers)
    if isinstance(keys, (list, tuple, np.ndarray)) and all(
            isinstance(k, (int, np.integer)) for k in np.asarray(keys).ravel()):
        keys = jax.vmap(jax.random.key)(jnp.asarray(keys, jnp.uint32))
    batch = keys.shape[0]
    opts, f_star = optimum_values(problem, hypers)
    if len(opts) == 1:
        opts, f_star = opts * batch, np.full(batch, f_star[0])
    if len(opts) != batch:
        raise ValueError(f"hypers describe {len(opts)} configurations but {batch} keys were given")
    if width is not None and (isinstance(width, bool) or not isinstance(width, (int, np.integer))
                              or width < 1):
        raise ValueError(f"width={width!r} is not allowed: None or an integer >= 1")
    t0 = time.perf_counter()
    with problem.x64_scope():
        dtype = problem.jnp_dtype
        hypers = hypers.broadcast(batch, dtype)
        state, history = _execute(
            problem, hypers, keys, jnp.asarray(f_star, dtype), settings, start_params=start,
            progress=progress, batched=True, batch_size=batch, desc=desc, width=width)
        params = jax.vmap(functools.partial(point_of, problem, settings.name))(state.variables)
        jax.block_until_ready(params)
    status = final_status(np.asarray(state.status), np.asarray(state.grad_norm),
                          np.asarray(state.stationarity), history["rel_gap"][:, -1],
                          settings.tol)
    return BatchResult(params, history, np.asarray(state.step), [STATUSES[s] for s in status],
                       np.asarray(state.diverged_at), opts, time.perf_counter() - t0)
