"""The host driver and the public entry points: `solve`, `solve_batch` (and `make_run`, from
`loop`). Full-batch solvers for the UFM.

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
own compiled program (`compiled_records`): compiled once, not inside every run program.
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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ufm.analysis import theory
from ufm.model.problem import (
    Hyper,
    Params,
    Problem,
    validate_hyper,
)
from ufm.solvers import batching
from ufm.solvers.loop import (
    compiled_chunk,
)
from ufm.solvers.records import (
    compiled_records,
)
from ufm.solvers.reference import (
    point_of,
    uses_pullback,
)
from ufm.solvers.settings import (
    Anneal,
    SolverSettings,
)
from ufm.solvers.statuses import (
    RUNNING,
    STATUSES,
    final_status,
)


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
        batching.check_in_flight(problem, width or share, batch_size,
                               "compute fewer at once (width=1: one configuration per vmapped "
                               "slice on each device)")
        hyper, keys, f_star, start_params = batching.shard_over_devices(batching.pad_batch(
            (hyper, keys, f_star, start_params), batch_size, (width or share) * n_dev))
    configs = int(np.shape(f_star)[0]) if batched else 1
    per_chunk, n_chunks = batching.logs_per_call(problem, n_points, configs)
    at_once = width or configs // n_dev if batched else 1
    start, chunk = compiled_chunk(problem, solver, log_every, per_chunk, batched, width,
                                   fast_path, anneal is not None)
    anneal_args = Anneal(jnp.asarray(0.0 if anneal is None else anneal.tau_from, dtype),
                         jnp.asarray(0 if anneal is None else anneal.steps, jnp.int32))
    records = compiled_records(problem, uses_pullback(problem, solver), batched, width,
                                batching.points_width(problem, at_once, per_chunk))
    tol_arr, steps_arr = jnp.asarray(tol, dtype), jnp.asarray(steps, jnp.int32)
    no_steps = jnp.asarray(0, jnp.int32)
    state = start(hyper, keys, jnp.asarray(init_scale, dtype), start_params)
    trim = (lambda a: np.asarray(a)[:batch_size]) if batched else np.asarray
    history_parts = []
    own_bar = not hasattr(progress, "update")
    bar = (
        batching.progress_bar(
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
          *, key: jax.Array | int = 0, start: Params | None = None, progress: bool | None = None,
          **options) -> Result:
    """Minimize the UFM objective of `problem` from a random start.

    Args:
      problem: the UFM (`Problem`).
      hyper: its hyperparameters (`Hyper`, scalars).
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
        `check_every` steps (`fast_block`); False: the reference path (autodiff, every step
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
    one = _solve_configurations(problem, hyper, _as_key(key),
                                SolverSettings.of(settings, **options), start=start,
                                progress=progress, batched=False)
    diverged_at = int(one.diverged_at[0])
    return Result(jax.tree.map(lambda a: a[0], one.params),
                  {k: v if k == "iteration" else v[0] for k, v in one.history.items()},
                  int(one.steps[0]), one.status[0], None if diverged_at < 0 else diverged_at,
                  one.optimum[0], one.seconds)


def solve_batch(problem: Problem, hypers: Hyper, keys: jax.Array,
                settings: SolverSettings | None = None, *, start: Params | None = None,
                progress: bool | None = None, desc: str | None = None, width: int | None = None,
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
    if isinstance(keys, (list, tuple, np.ndarray)) and all(
            isinstance(k, (int, np.integer)) for k in np.asarray(keys).ravel()):
        keys = jax.vmap(jax.random.key)(jnp.asarray(keys, jnp.uint32))
    if width is not None and (isinstance(width, bool) or not isinstance(width, (int, np.integer))
                              or width < 1):
        raise ValueError(f"width={width!r} is not allowed: None or an integer >= 1")
    return _solve_configurations(problem, hypers, keys, SolverSettings.of(settings, **options),
                                 start=start, progress=progress, batched=True, desc=desc,
                                 width=width)


def _solve_configurations(problem: Problem, hypers: Hyper, keys, settings: SolverSettings, *,
                          start, progress, batched: bool, desc=None, width=None) -> BatchResult:
    """What `solve` and `solve_batch` share: checks, closed-form f*, the x64 scope, the run
    (`_execute`) and the result, as a `BatchResult`. `batched=False` is one configuration (a
    scalar Hyper, one key, `start` unbatched) run by the unbatched program, as `width=1` runs
    each slice; its result has a leading axis of 1 like a batch of one."""
    settings = settings.checked(problem)
    validate_hyper(hypers)
    if not batched and any(np.ndim(v) for v in hypers):
        raise ValueError("solve() takes one configuration: every Hyper field must be a scalar "
                         "(use solve_batch for a batch)")
    batch = keys.shape[0] if batched else 1
    opts, f_star = optimum_values(problem, hypers)
    if len(opts) == 1:
        opts, f_star = opts * batch, np.full(batch, f_star[0])
    if len(opts) != batch:
        raise ValueError(f"hypers describe {len(opts)} configurations but {batch} keys were given")
    t0 = time.perf_counter()
    with problem.x64_scope():
        dtype = problem.jnp_dtype
        if batched:
            hypers, f_star = hypers.broadcast(batch, dtype), jnp.asarray(f_star, dtype)
        else:
            hypers, f_star = hypers.astype(dtype), jnp.asarray(f_star[0], dtype)
        state, history = _execute(
            problem, hypers, keys, f_star, settings, start_params=start,
            progress=progress, batched=batched, batch_size=batch, desc=desc, width=width)
        point = functools.partial(point_of, problem, settings.name)
        params = jax.vmap(point)(state.variables) if batched else point(state.variables)
        jax.block_until_ready(params)
    if not batched:  # the leading axis of a batch of one
        params = jax.tree.map(lambda a: a[None], params)
        state = jax.tree.map(lambda a: np.asarray(a)[None], state)
        history = {k: v if k == "iteration" else v[None] for k, v in history.items()}
    status = final_status(np.asarray(state.status), np.asarray(state.grad_norm),
                          np.asarray(state.stationarity), history["rel_gap"][:, -1],
                          settings.tol)
    return BatchResult(params, history, np.asarray(state.step), [STATUSES[s] for s in status],
                       np.asarray(state.diverged_at), opts, time.perf_counter() - t0)
