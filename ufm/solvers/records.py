"""The history of a run: every NC metric and the objective's terms at each kept point,
computed by their own compiled program after the steps (`compiled_records`: compiled once,
not inside every run program; vmapped over a call's points within a memory budget)."""
from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ufm.analysis import nc as metrics
from ufm.model.problem import (
    Hyper,
    Params,
    Problem,
    mean_loss,
    penalty,
    representations,
)
from ufm.solvers import batching
from ufm.solvers.reference import (
    point_of,
)

HISTORY_KEYS = ("objective", "loss", "grad_norm", "stationarity", "gap",
                "rel_gap") + metrics.METRIC_NAMES


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


def history_records(problem: Problem, solver: str, hyper: Hyper, trace: tuple,
                    f_star: ArrayLike, points_at_once: int | None = None) -> dict:
    """`_record` at every point of one run's trace ((variables, grad_norm, stationarity)
    with a leading axis of log points), `points_at_once` of them vmapped at a time (None:
    all)."""
    one = lambda point: _record(problem, solver, hyper, *point, f_star)
    return batching.map_points(one, trace,
                             trace[1].shape[0] if points_at_once is None else points_at_once)


@functools.lru_cache(maxsize=64)
def compiled_records(problem: Problem, pullback: bool, batched: bool, width: int | None,
                     points_at_once: int | None) -> Callable:
    """jit(records): the history entries of a chunk's trace. Compiled apart from the run (the
    metrics cost as much to compile as the steps; one program serves every solver without a
    pullback, and the first and the later chunks) and computed for all of a call's points at
    once, `points_at_once` per configuration vmapped at a time."""
    solver = "lbfgs" if pullback else "gd"  # all `point_of` needs to know

    def records(hyper, trace, f_star):
        return history_records(problem, solver, hyper, trace, f_star, points_at_once)

    if batched:
        records = batching.over_configurations(records, (0, 0, 0), width)
    return jax.jit(records)
