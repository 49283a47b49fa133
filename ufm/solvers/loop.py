"""The run loop: a `lax.scan` over log points; each point is kept (variables and gradient
norm), then up to `log_every` steps run in a loop that stops when the run has ended (under
vmap: every run of the batch). The fast path's blocks of `check_every` plain steps and the
reference path's groups of steps; annealing in tau; `make_run`, the whole run as one pure
function; `compiled_chunk`, a chunk of log points compiled for the host loop (`driver`).
Inside the scan nothing raises: a configuration whose gradient norm drops to `tol` freezes as
"converged", one whose iterate turns non-finite freezes at its last finite point as
"diverged"; neighbours in a vmapped batch are untouched."""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from ufm.model.problem import (
    Hyper,
    Params,
    Problem,
)
from ufm.solvers import batching as runner
from ufm.solvers import fast_step as fused
from ufm.solvers import kernels
from ufm.solvers.records import (
    history_records,
)
from ufm.solvers.reference import (
    RunState,
    initial_state,
    make_optimizer,
    make_step,
    point_of,
)
from ufm.solvers.settings import (
    Anneal,
    FastPath,
    SolverSettings,
)
from ufm.solvers.statuses import (
    CONVERGED,
    DIVERGED,
    RUNNING,
    final_status,
    stationarity,
)

# The reference path's steps between two tests of whether a run goes on (`run_logs`).
REFERENCE_STEPS_PER_TEST = 10


def annealed_tau(anneal: Anneal | None, tau: ArrayLike, start: ArrayLike) -> jax.Array:
    """The temperature of the log interval that starts at global step `start`."""
    if anneal is None:
        return tau
    tau_from = jnp.maximum(jnp.asarray(anneal.tau_from, jnp.result_type(tau)), tau)
    done = jnp.clip(start / jnp.maximum(anneal.steps, 1), 0.0, 1.0)
    return jnp.where(done < 1.0, tau * (tau_from / tau) ** (1.0 - done), tau)


def fast_block(problem: Problem, solver: str, hyper: Hyper, tol: float, max_steps: ArrayLike,
               log_every: int, fast_path: FastPath) -> Callable:
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
    tx = make_optimizer(solver, hyper)
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


def run_logs(problem: Problem, solver: str, log_every: int, num_points: int, hyper: Hyper,
             state: RunState, tol: float, max_steps: ArrayLike, first_step: ArrayLike = 0,
             fast_path: FastPath | None = None, anneal: Anneal | None = None,
             vmapped: bool = True) -> tuple[RunState, dict]:
    """Scan over `num_points` log points from global step `first_step`: at each, the point is
    kept (its variables and gradient norm: the trace its metrics are computed from, after the
    scan) and then `log_every` steps run, none past `max_steps`. `fast_path` None is the
    reference path (autodiff, every step checked), else the fast path (`fast_block`).
    `anneal`: the temperature's continuation schedule (`Anneal`; None: tau throughout).
    Returns (state after the last point's steps, trace)."""

    def steps_at(interval_hyper):
        if fast_path is not None:
            return fast_block(problem, solver, interval_hyper, tol, max_steps, log_every,
                               fast_path)
        _, step = make_step(problem, solver, interval_hyper, vmapped)
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
        fresh = initial_state(problem, solver, hyper, None, 1.0, state.variables,
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
        state = initial_state(problem, solver, hyper, key, settings.init_scale,
                               fast=fast_path is not None)
        state, trace = run_logs(problem, solver, settings.log_every, settings.num_logs + 1,
                                 hyper, state, tol, steps, 0, fast_path, anneal)
        history = history_records(problem, solver, hyper, trace, f_star)
        status = final_status(state.status, state.grad_norm, state.stationarity,
                              history["rel_gap"][-1], tol)
        return RunOutput(point_of(problem, solver, state.variables), history, state.step,
                         status)

    return run


@functools.lru_cache(maxsize=64)
def compiled_chunk(problem: Problem, solver: str, log_every: int, points_per_chunk: int,
                   batched: bool, width: int | None = None, fast_path: FastPath | None = None,
                   annealing: bool = False) -> tuple[Callable, Callable]:
    """jit(start), jit(chunk) (over a configuration axis when `batched`, see
    `runner.over_batch`); one compilation per static signature. `fast_path`: as in
    `run_logs`; `annealing`: whether the chunk's `anneal` argument (an `Anneal` of traced
    scalars) schedules tau. Neither computes a metric: `compiled_records` does, from the
    chunk's trace."""

    vmapped = batched and width != 1  # `runner.over_batch`: width 1 runs unbatched

    def chunk(hyper, state, tol, max_steps, first_step, anneal):
        return run_logs(problem, solver, log_every, points_per_chunk, hyper, state, tol,
                         max_steps, first_step, fast_path, anneal if annealing else None,
                         vmapped=vmapped)

    def start(hyper, key, init_scale, start_params):
        return initial_state(problem, solver, hyper, key, init_scale, start_params,
                              fast=fast_path is not None, vmapped=vmapped)

    if batched:  # each local device runs its shard in slices of `width` (`ufm.solvers.batching`)
        chunk = runner.over_configurations(chunk, (0, 0, None, None, None, None), width)
        start = runner.over_configurations(start, (0, 0, None, 0), width)
    return jax.jit(start), jax.jit(chunk)
