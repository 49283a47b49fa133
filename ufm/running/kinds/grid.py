"""The grid kind: every configuration of an experiment solved, grouped by static `Problem` and
solver, each chunk of a group ONE jitted, vmapped call over (Hyper, seed).

Configurations sharing a Problem differ only in traced values (Hyper, seed), so a group compiles
once however many configurations it holds. A chunk is the unit of work: checkpointed when done,
distributed over processes (`ufm.running.experiment.run`).

    [problem]   Problem fields: num_classes, feature_dim, n_per_class | class_counts |
                multiplicity_counts, loss, geometry, bias, classifier, dtype, depth, activation
    [hyper]     Hyper fields: lam_W, lam_H, lam_b, tau, alpha, gamma, kappa, M, lr, momentum,
                beta1, beta2
    [solver]    SolverSettings fields: name, steps, log_every, tol, init_scale, fast,
                check_every, kernel, anneal_from, anneal_fraction (generated from
                `ufm.SolverSettings` and its rules, `ufm.solvers.settings.RULES`)
    [run]       seeds (a list of ints), batch (configurations per vmapped slice; 0 = auto),
                chunk (configurations per compiled call and checkpoint; 0 = auto, from memory)

A list in [problem] or [hyper] (or solver.name) is a grid axis (class_counts and
multiplicity_counts: a list of lists); [[zip]] tables may name them bare (`loss = [...]`, and
`solver = [...]` for solver.name). multiplicity_counts = [n_1, n_2, ...] makes multi-label data,
n_m samples on every set of m classes (`ufm.model.problem.multilabel_sets`).
"""
from __future__ import annotations

import dataclasses
import re
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ufm.analysis import end_points, theory
from ufm.errors import ConfigError, InputError
from ufm.model.losses import LOSSES
from ufm.model.problem import (
    ACTIVATIONS,
    CLASSIFIERS,
    DTYPES,
    GEOMETRIES,
    HYPER_RANGES,
    MAX_DEPTH,
    Hyper,
    Problem,
    describe_range,
    multilabel_sets,
    unused_hyper_fields,
)
from ufm.running import config, multihost, results
from ufm.running.config import Experiment, Field, Schema
from ufm.running.figures import (
    IGNORED_COLUMNS,
    TRAJECTORY_FIGURES,
    diverged_rows,
    draw_figure,
    draw_trajectories,
    figure_legend,
    nan_stats,
    pyplot,
    run_ends,
    save_figure,
    set_scale,
    settings_line,
    shown_on,
)
from ufm.running.kind import Kind, Unit
from ufm.running.results import ResultsFolderError, UnitResult, float_column
from ufm.running.tables import (
    CONFIG_COLUMNS,
    PROBLEM_COLUMNS,
    all_balanced,
    counts,
    determined_by,
    fmt,
    format_table,
    label_value,
    series_labels,
)
from ufm.solvers import STATUS_MEANINGS, STATUSES, batching, solve_batch
from ufm.solvers.settings import RULES, SolverSettings, check_solver_geometry


def _hyper_field(name: str, default: float) -> Field:
    lo, lo_ok, hi, hi_ok = HYPER_RANGES[name]
    test = lambda v: (v >= lo if lo_ok else v > lo) and (v <= hi if hi_ok else v < hi)
    return Field(default, "float", axis=True, rule=(test, describe_range(lo, lo_ok, hi, hi_ok)))


PROBLEM_SECTION = config.explained({
    "num_classes": Field(10, "int", axis=True), "feature_dim": Field(32, "int", axis=True),
    "n_per_class": Field(50, "int", axis=True, optional=True),
    "class_counts": Field(None, "ints", axis=True, optional=True),
    "loss": Field("ce", "str", axis=True), "geometry": Field("wd", "str", axis=True),
    "bias": Field(None, "bool", axis=True, optional=True),
    "classifier": Field("learned", "str", axis=True),
    "dtype": Field("float32", "str", axis=True),
    "multiplicity_counts": Field(None, "ints", axis=True, optional=True),
    "depth": Field(1, "int", axis=True), "activation": Field("linear", "str", axis=True),
}, {  # checked by `ufm.Problem`, whose words these are
    "num_classes": ("K, the number of classes", "an integer >= 2"),
    "feature_dim": ("d, the feature dimension (d < K - 1: generalized neural collapse)",
                    "an integer >= 1"),
    "n_per_class": ("n, samples per class (balanced classes); omit it with class_counts or "
                    "multiplicity_counts", "an integer >= 1"),
    "class_counts": ("n_k, the samples of each class (imbalanced classes), instead of "
                     "n_per_class", "num_classes integers >= 1"),
    "loss": ("the per-sample loss on the logits / tau (docs/science.md, section 2)",
             "one of " + ", ".join(repr(x) for x in sorted(LOSSES))),
    "geometry": ("wd: weight decay; sphere: unit-norm w_k and h_i; norm_ball: (1/K)||W||^2 <= "
                 "E_W and (1/N)||H||^2 <= E_H; norm_ball_each: every ||h_i||^2 <= E_H",
                 "one of " + ", ".join(repr(x) for x in GEOMETRIES)),
    "bias": ("learn a bias b (omitted: yes on weight decay, no on the other geometries)",
             "true or false"),
    "classifier": ("learned W; fixed_etf: W frozen at the simplex ETF (d >= K - 1); identity: "
                   "W = I with d = K, the logits are the features",
                   "one of " + ", ".join(repr(x) for x in CLASSIFIERS)),
    "dtype": ("the floating-point type of the whole run",
              "one of " + ", ".join(repr(x) for x in DTYPES)),
    "multiplicity_counts": ("multi-label data: the m-th count is the samples on every set of "
                            "m classes (pick-all-label; replaces n_per_class)",
                            "a list of integers >= 0"),
    "depth": ("L, weight matrices from the features to the logits (the deep UFM; 1: the UFM; "
              "weight decay only)", f"an integer from 1 to {MAX_DEPTH}"),
    "activation": ("the activation between the deep UFM's layers",
                   "one of " + ", ".join(repr(x) for x in ACTIVATIONS)),
})
HYPER_SECTION = config.explained(
    {name: _hyper_field(name, default) for name, default in Hyper()._asdict().items()}, {
        "lam_W": "weight decay on W (and the deep UFM's layers): lam_W/2 ||W||_F^2; weight "
                 "decay only",
        "lam_H": "weight decay on the features: lam_H/2 ||H||_F^2; weight decay only",
        "lam_b": "weight decay on the bias: lam_b/2 ||b||^2 (0: unpenalized, MSE's closed form)",
        "tau": "the temperature: the loss sees the logits / tau",
        "alpha": "label smoothing (losses 'ls', 'ls_off_target')",
        "gamma": "the focal loss's exponent: -(1 - p_y)^gamma log p_y",
        "kappa": "rescaled MSE: the weight of the true class's term",
        "M": "rescaled MSE: the target's magnitude",
        "lr": "the learning rate of the first-order solvers (not used by L-BFGS)",
        "momentum": "momentum and Nesterov's momentum",
        "beta1": "Adam's first-moment decay",
        "beta2": "Adam's second-moment decay",
        "E_W": "the norm balls' bound on W: (1/K) ||W||_F^2 <= E_W",
        "E_H": "the norm balls' bound on H: (1/N) ||H||_F^2 <= E_H (norm_ball_each: every "
               "||h_i||^2)",
    })


def _solver_field(name: str, default) -> Field:
    """A [solver] key from its `SolverSettings` field and rule (`ufm.solvers.settings.RULES`)."""
    rule = RULES[name]
    return Field(default, rule.type, axis=name == "name", optional=rule.optional,
                 choices=rule.choices,
                 rule=None if rule.test is None else (rule.test, rule.allowed),
                 meaning=rule.meaning, allowed=rule.allowed)


SOLVER_SECTION = {name: _solver_field(name, default)
                  for name, default in SolverSettings()._asdict().items()}
AUTO = "an integer >= 0 (0 chooses from the problem size and the device)"
RUN_SECTION = config.explained({
    "seeds": Field([0], "ints", rule=(lambda v: bool(v) and min(v) >= 0,
                                      "a non-empty list of integers >= 0")),
    "batch": Field(0, "int", rule=(lambda v: v >= 0, AUTO)),
    "chunk": Field(0, "int", rule=(lambda v: v >= 0, AUTO)),
}, {
    "seeds": "the random starts of every configuration (the innermost grid axis)",
    "batch": "configurations per vmapped slice (0: the whole chunk on an accelerator; about "
             "1 MB of working set per device on a CPU)",
    "chunk": "configurations per compiled call and checkpoint (0: as many as fit the memory)",
})
UFM_SECTIONS = {"problem": PROBLEM_SECTION, "hyper": HYPER_SECTION, "solver": SOLVER_SECTION,
                "run": RUN_SECTION}
SCHEMA = Schema(UFM_SECTIONS, aliases={"solver": ("solver", "name")})


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One point of the grid: a Problem, scalar Hyper, seed, and the axis values that vary."""

    problem: Problem
    hyper: Hyper
    seed: int
    axes: tuple  # ((field, value), ...) of the grid axes, for labels and tables
    solver: str = "gd"


def _problem_kwargs(values: dict) -> dict:
    kwargs = dict(values)
    if kwargs.get("class_counts") is not None:
        kwargs["class_counts"] = tuple(kwargs["class_counts"])
        kwargs["n_per_class"] = None
    multiplicity = kwargs.pop("multiplicity_counts", None)
    if multiplicity is not None:
        kwargs["label_sets"], kwargs["set_counts"] = multilabel_sets(kwargs["num_classes"],
                                                                     multiplicity)
        kwargs["n_per_class"] = None
    return kwargs


def configurations(experiment: config.Experiment) -> list[Configuration]:
    """Expand the grid: the Cartesian product of every list axis, every [[zip]] (its fields
    advance together) and the solver names, then the seeds (innermost). A Problem that cannot
    be built raises ConfigError naming the field."""
    cached = experiment.derived.get("configurations")
    if cached is not None:
        return cached
    built = {}
    out = []
    for point in config.points(experiment, SCHEMA):
        problem_values = {k: point.values[("problem", k)] for k in PROBLEM_SECTION}
        key = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in problem_values.items())
        if key not in built:
            try:
                built[key] = Problem(**_problem_kwargs(problem_values))
            except ValueError as err:
                raise ConfigError(f"problem.{err}") from None
        hyper = Hyper(**{k: point.values[("hyper", k)] for k in HYPER_SECTION})
        try:
            check_solver_geometry(built[key], point.values[("solver", "name")])
        except ValueError as err:
            raise ConfigError(f"solver.name: {err}") from None
        axes = tuple(("solver" if key == ("solver", "name") else key[1],
                      tuple(v) if isinstance(v, list) else v) for key, v in point.varying)
        out.append(Configuration(built[key], hyper, point.seed, axes,
                                 point.values[("solver", "name")]))
    experiment.derived["configurations"] = out
    return out


def check(experiment: config.Experiment) -> None:
    """A Problem built for every configuration (its errors surface before anything runs); the
    per-class counts replace n_per_class (which is then written out as unset)."""
    problem = experiment.sections["problem"]
    if (problem["class_counts"] is not None or problem["multiplicity_counts"] is not None) \
            and not isinstance(problem["n_per_class"], list):
        problem["n_per_class"] = None
    configurations(experiment)


def _groups(configs) -> dict[tuple[Problem, str], list[int]]:
    """Configurations by static signature (Problem, solver): each group compiles once."""
    groups: dict[tuple[Problem, str], list[int]] = {}
    for index, cfg in enumerate(configs):
        groups.setdefault((cfg.problem, cfg.solver), []).append(index)
    return groups


def _row(index, group, cfg, solver, status, steps, diverged_at, f_star, is_zero, history,
         seconds):
    row = {"row": index, "group": group, **config_columns(cfg.problem, cfg.hyper, solver)}
    row.update({"seed": cfg.seed, "status": status, "steps": int(steps),
                "diverged_at": None if diverged_at < 0 else int(diverged_at),
                "f_star": None if np.isnan(f_star) else float(f_star),
                "optimum_is_zero": None if np.isnan(f_star) else bool(is_zero),
                # why f* and rel_gap are empty, in words
                "no_closed_form": (theory.no_closed_form(cfg.problem, cfg.hyper)
                                   if np.isnan(f_star) else None)})
    for key, values in history.items():  # final values; "loss" names the loss function here
        if key != "iteration":
            row["mean_loss" if key == "loss" else key] = float(values[-1])
    row["seconds"] = seconds
    return row


def solver_settings(experiment: config.Experiment, name: str) -> SolverSettings:
    """The [solver] section as the value the solvers take, for one solver `name` (an axis)."""
    return SolverSettings(**{**experiment.solver, "name": name})


def _run_chunk(configs, settings: SolverSettings, problem, indices, size, width, bar) -> dict:
    """Run one chunk as one compiled call; its results as plain arrays."""
    # Pad a short last chunk with copies of its last configuration: same shape, no
    # recompilation; the copies' results are dropped.
    padded = indices + [indices[-1]] * (size - len(indices))
    batch = solve_batch(problem, _group_hypers(configs, padded),
                        [configs[i].seed for i in padded], settings,
                        progress=bar if bar is not None else False, width=width)
    n = len(indices)
    arrays = {f"history/{k}": (v if k == "iteration" else np.asarray(v)[:n])
              for k, v in batch.history.items()}
    arrays.update(
        steps=np.asarray(batch.steps)[:n],
        status=np.array([STATUSES.index(s) for s in batch.status[:n]]),
        diverged_at=np.asarray(batch.diverged_at)[:n],
        f_star=np.array([np.nan if o is None else o.objective for o in batch.optimum[:n]]),
        is_zero=np.array([False if o is None else o.is_zero for o in batch.optimum[:n]]),
        seconds=np.full(n, batch.seconds / len(padded)))
    hypers = _group_hypers(configs, indices)
    arrays.update(end_points.end_point_columns(problem, hypers, batch.params, n,
                                np.asarray(batch.history["objective"])[:n, -1]))
    return arrays


def config_columns(problem: Problem, hyper: Hyper, solver: str) -> dict:
    row = {name: getattr(problem, name) for name in PROBLEM_COLUMNS}
    if problem.multilabel:  # compact: "0 1 2 0+1 0+2 1+2"
        row["label_sets"] = " ".join("+".join(map(str, s)) for s in problem.label_sets)
    row.update(hyper._asdict())
    row["solver"] = solver
    return row


def _group_hypers(configs, indices) -> Hyper:
    return Hyper(
        *(np.array([getattr(configs[i].hyper, f) for i in indices]) for f in Hyper._fields)
    )


# ---------------------------------------------------------------------- the kind's functions


def _chunk_rows(arrays, group, solver_name, indices, configs) -> UnitResult:
    """Rows and histories of a finished chunk from its arrays."""
    rows, histories = [], []
    for j, i in enumerate(indices):
        history = {k.split("/", 1)[1]: (v if k == "history/iteration" else v[j])
                   for k, v in arrays.items() if k.startswith("history/")}
        row = _row(i, group, configs[i], solver_name, STATUSES[int(arrays["status"][j])],
                   arrays["steps"][j], arrays["diverged_at"][j], arrays["f_star"][j],
                   arrays["is_zero"][j], history, float(arrays["seconds"][j]))
        for key, values in arrays.items():
            if key.startswith("extra/"):
                value = float(values[j])
                row[key.split("/", 1)[1]] = None if np.isnan(value) else value
        rows.append(row)
        histories.append(history)
    return UnitResult(rows, histories, {})


def _plan_shape(value) -> str | None:
    """What is wrong with a saved plan.json: a list of [width, chunk] with 1 <= width <= chunk,
    chunk a multiple of width."""
    if not isinstance(value, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(type(v) is int for v in p)
            and 1 <= p[0] <= p[1] and p[1] % p[0] == 0 for p in value):
        return "not a list of [width, chunk] pairs of integers, 1 <= width <= chunk"
    return None


def _imports_shape(value, group_of=None) -> str | None:
    """What is wrong with an imports-<id>.json: a list of [tag, [row, ...]], each unit's rows
    distinct rows of one group of this grid (`group_of`: row -> group) and no row twice."""
    if not isinstance(value, list) or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
            and re.fullmatch(r"[A-Za-z0-9_-]+", p[0]) and isinstance(p[1], list) and p[1]
            and all(type(i) is int and i >= 0 for i in p[1]) for p in value):
        return "not a list of [unit tag, [row, ...]] pairs"
    if group_of is not None:
        rows = [i for _, indices in value for i in indices]
        if len(set(rows)) != len(rows) or not all(i in group_of for i in rows) or any(
                len({group_of[i] for i in indices}) != 1 for _, indices in value):
            return "its rows are not distinct rows of one group of this grid each"
    return None


def _plan(experiment, configs, groups, folder) -> list[tuple[int, int]]:
    """(vmapped width, chunk) per group: the file's run.batch / run.chunk, or the measured
    rules `batching.batch_width` and `batching.chunk_size`. Saved in the folder, so a resumed run
    cuts its groups exactly as the first run did; process 0's plan is every process's."""
    saved = None if folder is None else folder.read_json("plan.json", _plan_shape)
    if saved is not None and len(saved) == len(groups):
        return _fits(groups, [tuple(p) for p in saved])
    plan = []
    for (problem, _), indices in groups.items():
        if experiment.run["batch"]:
            width = min(experiment.run["batch"], len(indices))
        else:  # no timed trial per group: it cost two compilations a group
            width = batching.batch_width(problem, len(indices))
        if experiment.run["chunk"]:
            asked = experiment.run["chunk"]
            chunk = max(width, asked // width * width)
            if chunk != asked and asked < len(indices):
                why = ("run.batch" if experiment.run["batch"]
                       else "the automatic run.batch; set run.batch to choose it")
                batching.notice(f"group {len(plan) + 1}: run.chunk={asked} is rounded to {chunk} "
                              f"configurations (a chunk holds whole vmapped slices of {width}, "
                              f"{why})")
        else:
            chunk = batching.chunk_size(problem, len(indices), width)
        plan.append((width, min(chunk, -(-len(indices) // width) * width)))
    _fits(groups, plan)
    if folder is not None:  # the plan kept: a job array's shards share the first one's
        kept = folder.write_json("plan.json", [list(p) for p in plan])
        if _plan_shape(kept) is None and len(kept) == len(groups):
            plan = _fits(groups, [tuple(p) for p in kept])
    return plan


def _fits(groups, plan):
    """The plan, once every group's configurations computed at the same time fit the available
    memory (`batching.check_in_flight`), checked before anything compiles."""
    for g, ((problem, _), indices) in enumerate(groups.items()):
        try:
            batching.check_in_flight(problem, plan[g][0], len(indices),
                                   "compute fewer at once (run.batch = 1 and --host-devices 1: "
                                   "one configuration at a time)")
        except ValueError as err:
            raise InputError(f"group {g + 1}: {err}") from None
    return plan


class Chunk(NamedTuple):
    """A grid's unit of work: configurations `indices` of group `group` (one Problem and
    solver), run as one compiled call of `size` configurations (padded) in vmapped slices of
    `width`."""

    group: int
    problem: Problem
    solver: str
    indices: list
    size: int
    width: int


def _imports_file(folder) -> str:
    return f"imports-{folder.config_id}.json"


def units(experiment: Experiment, folder: Path) -> list[Unit]:
    """The grid's chunks, group by group: a chunk is one compiled call and one checkpoint. A
    grid that extends a finished one (`extend`) first lists the chunks carried over from it,
    then chunks of the configurations still to run (their tags carry the configuration's id,
    so no file of the old grid can be mistaken for them)."""
    configs = configurations(experiment)
    groups = _groups(configs)
    main = multihost.is_main()
    plan = [tuple(p) for p in multihost.broadcast_json(
        [list(p) for p in _plan(experiment, configs, groups, folder)] if main else None)]
    group_of = {i: g for g, indices in enumerate(groups.values()) for i in indices}
    imported = multihost.broadcast_json(
        (folder.read_json(_imports_file(folder), lambda v: _imports_shape(v, group_of))
         if folder is not None else None) or []
        if main else None)
    suffix = "" if not imported else f"-{folder.config_id}" if main else None
    suffix = multihost.broadcast_json(suffix if main else None)
    done = {i for _, indices in imported for i in indices}
    keys = list(groups)
    steps = experiment.solver["steps"]
    out = []
    for tag, indices in imported:
        g = group_of[indices[0]]
        width = plan[g][0]
        size = -(-len(indices) // width) * width
        out.append(Unit(tag, tuple(indices), size * steps,
                        Chunk(g, keys[g][0], keys[g][1], list(indices), size, width)))
    for g, (((problem, solver_name), indices), (width, size)) in enumerate(zip(groups.items(),
                                                                              plan)):
        left = [i for i in indices if i not in done]
        for c, first in enumerate(range(0, len(left), size)):
            chunk = left[first:first + size]
            out.append(Unit(f"group-{g:05d}-chunk-{c:05d}{suffix}", tuple(chunk), size * steps,
                            Chunk(g, problem, solver_name, chunk, size, width)))
    return out


def _identity(cfg: Configuration) -> tuple:
    return cfg.problem, tuple(cfg.hyper), cfg.solver, cfg.seed


def _label(cfg: Configuration) -> str:
    return ", ".join([f"{k}={label_value(v)}" for k, v in cfg.axes] + [f"seed={cfg.seed}"])


def extend(old: Experiment, new: Experiment, folder: Path) -> list:
    """Carry a finished (or partly finished) grid's results over to a grid that extends it:
    every configuration of the old grid is in the new one (new seeds and new axis values may
    be added) with the same shared solver settings. Its finished chunks are checkpointed
    again under the new grid's row numbers (`imports-<id>.json` lists them); returns the old
    files to remove once the new configuration is the folder's. Raises ResultsFolderError
    saying what changed otherwise: nothing already run is recomputed or dropped."""
    where = f"{folder.path} holds results of a different configuration"
    # The solver settings every configuration shares (all but the name, an axis) must be equal.
    old_shared, new_shared = (solver_settings(e, None).shared() for e in (old, new))
    if old_shared != new_shared:
        key = next(k for k in SolverSettings._fields
                   if getattr(old_shared, k) != getattr(new_shared, k))
        raise ResultsFolderError(
            f"{where}: solver.{key} = {getattr(old_shared, key)!r} there, "
            f"{getattr(new_shared, key)!r} here (a change of what was already run; an extension "
            "may only add seeds and axis values); choose another --out or remove the folder")
    old_configs, new_configs = configurations(old), configurations(new)
    position = {_identity(c): i for i, c in enumerate(new_configs)}
    dropped = [c for c in old_configs if _identity(c) not in position]
    if dropped:
        raise ResultsFolderError(
            f"{where}: {len(dropped)} of its {len(old_configs)} runs are not in this experiment "
            f"(e.g. {_label(dropped[0])}); an extension may add seeds and axis values but not "
            "change or drop what was already run; choose another --out or remove the folder")
    new_group = {i: g for g, indices in enumerate(_groups(new_configs).values())
                 for i in indices}
    # The folder as the old grid wrote it: its config.toml names its imports and chunk tags.
    old_folder = results.ResultsFolder(folder.path, folder.previous_text)
    old_imports = old_folder.read_json(_imports_file(old_folder), _imports_shape) or []
    listed = {tag for tag, _ in old_imports}
    chunk_tag = re.compile(r"group-\d{5}-chunk-\d{5}" + (
        re.escape(f"-{old_folder.config_id}") if old_imports else "") + "$")
    stale, carried = [], []
    for path in sorted(folder.checkpoints.glob("*.npz")):
        tag = path.stem
        if tag not in listed and not chunk_tag.match(tag):
            continue
        result = old_folder.load_unit(tag)
        if result is None:
            continue
        try:
            moved = [_moved_row(row, old_configs, position, new_group) for row in result.rows]
        except ValueError as err:
            warnings.warn(f"{path}: not a result of {folder.path}'s grid ({err}); its runs are "
                          "recomputed", stacklevel=2)
            continue
        tag = f"imported-{folder.config_id}-{len(carried):05d}"
        folder.save_unit(tag, results.pack_unit(tag, UnitResult(moved, result.histories,
                                                                 result.arrays), folder.digest))
        carried.append([tag, [row["row"] for row in moved]])
        stale.append(path)
    folder.write_json(_imports_file(folder), carried)
    stale += [folder.checkpoints / _imports_file(old_folder), folder.checkpoints / "plan.json"]
    reused = sum(len(rows) for _, rows in carried)
    batching.notice(f"{folder.path}: this grid extends the one there: {reused} finished runs "
                  f"reused, {len(new_configs) - reused} of {len(new_configs)} to run")
    return stale


def _moved_row(row: dict, old_configs, position: dict, new_group: dict) -> dict:
    """A checkpointed row of the old grid renumbered for the new grid, after checking that it
    is the run the old grid's configuration at its index describes."""
    index = row.get("row")
    if not isinstance(index, int) or not 0 <= index < len(old_configs):
        raise ValueError(f"row {index!r} is outside the old grid")
    cfg = old_configs[index]
    expected = {"seed": cfg.seed, "solver": cfg.solver, **cfg.hyper._asdict()}
    for key, value in expected.items():
        if row.get(key) != value:
            raise ValueError(f"row {index}: {key} = {row.get(key)!r}, expected {value!r}")
    new_index = position[_identity(cfg)]
    return {**row, "row": new_index, "group": new_group[new_index]}


def run_unit(experiment: Experiment, unit: Unit, bar: Any, scratch: Path) -> UnitResult:
    chunk: Chunk = unit.spec
    configs = configurations(experiment)
    if bar is not None:
        bar.set_description(f"group {chunk.group + 1} {chunk.problem.loss} {chunk.solver}")
    arrays = _run_chunk(configs, solver_settings(experiment, chunk.solver), chunk.problem,
                        list(chunk.indices), chunk.size, chunk.width, bar)
    return _chunk_rows(arrays, chunk.group, chunk.solver, chunk.indices, configs)


def manifest(experiment: Experiment, work: Path) -> dict:
    widths = {}
    for unit in work:
        widths.setdefault(unit.spec.group, (unit.spec.width, unit.spec.size))
    return {"configurations": len(configurations(experiment)), "groups": len(widths),
            "batch_widths": [w for w, _ in widths.values()],
            "chunk_sizes": [c for _, c in widths.values()], "chunks": len(work)}


SUMMARY_METRICS = ("nc1", "nc2_W", "nc2_H", "nc3", "nc4", "rel_gap")
# Tables with GNC columns (d < K-1, or the sphere) show those instead of the ETF distances;
# margins are "worst" at their smallest.
GNC_SUMMARY_METRICS = ("nc1", "gnc2_margin", "code_margin", "gnc2_tammes", "gnc3", "rel_gap")
# Multi-label tables: NC1 over label sets, the single-label ETF, and NC_m.
MULTILABEL_SUMMARY_METRICS = ("nc1", "nc2_W", "nc2_H", "nc3", "nc_m", "rel_gap")
# Imbalanced tables: minority collapse and the convex oracle's gap.
IMBALANCE_SUMMARY_METRICS = ("nc1", "nc2_W", "minority_cos", "w_norm_ratio", "oracle_gap",
                             "collapse_ratio")
LARGER_IS_BETTER = ("gnc2_margin", "gnc2_tammes", "code_margin")


def summary(table: dict) -> str:
    """One line per configuration (seeds pooled): status counts and the worst final metrics."""
    labels, _ = series_labels(table)
    metrics = (GNC_SUMMARY_METRICS if "gnc2_margin" in table
               else MULTILABEL_SUMMARY_METRICS if "nc_m" in table
               else IMBALANCE_SUMMARY_METRICS if "minority_cos" in table else SUMMARY_METRICS)
    header = ["configuration", "runs", "status", *metrics, "steps", "s/run"]
    lines = []
    for label in dict.fromkeys(labels):
        rows = [i for i, lab in enumerate(labels) if lab == label]
        status = counts(str(table["status"][i]) for i in rows)
        worst = []
        for key in metrics:
            values = np.abs(float_column(table, key)[rows])
            pick = np.nanmin if key in LARGER_IS_BETTER else np.nanmax
            worst.append(fmt(float(pick(values))) if not np.all(np.isnan(values)) else "-")
        steps = int(np.max(np.asarray(table["steps"])[rows]))
        seconds = float(np.mean(np.asarray(table["seconds"], dtype=float)[rows]))
        lines.append([label, str(len(rows)), status, *worst, str(steps), f"{seconds:.2f}"])
    out = format_table(header, lines)
    out.append("(worst over seeds of the final values; rel_gap: |f - f*|/|f*| to the closed-form "
               "optimum, signed (f - f*)/|f*| in results.csv)")
    out += _no_closed_form_lines(table, labels)
    out += _status_lines(table)
    if "minority_cos" in table:
        out.append("(minority_cos: mean cosine between minority classifiers, 1 at collapse; "
                   "oracle_gap: |f - f_oracle|/|f_oracle|, signed in results.csv; "
                   "collapse_ratio: the n_max/n_min at which the minority collapses, from the "
                   "convex oracle)")
    if "gnc2_margin" in table:
        out.append("(gnc2_margin: min one-vs-rest distance of the normalized classifiers; "
                   "code_margin: the softmax code's, known exactly or certified by polishing, "
                   "ufm.analysis.code_table)")
    return "\n".join(out)


def _no_closed_form_lines(table: dict, labels: list[str]) -> list[str]:
    """One line per reason for an empty rel_gap ('-'), naming the configurations it covers."""
    if "no_closed_form" not in table:
        return []
    by_reason: dict[str, list[str]] = {}
    for label, reason in zip(labels, table["no_closed_form"]):
        if reason not in ("", None) and label not in by_reason.setdefault(str(reason), []):
            by_reason[str(reason)].append(label)
    lines = []
    for reason, which in by_reason.items():
        named = "; ".join(which[:3]) + (f"; and {len(which) - 3} more" if len(which) > 3 else "")
        lines.append(f"(rel_gap '-': no closed form: {reason}: {named})")
    return lines


def _status_lines(table: dict) -> list[str]:
    """What the statuses that appear mean (`ufm.solvers.STATUS_MEANINGS`)."""
    shown = {str(s) for s in table.get("status", [])}
    return [f"({name}: {STATUS_MEANINGS[name]})" for name in STATUSES
            if name in shown and name in STATUS_MEANINGS]


def figures(directory: str | Path, table: dict, metrics: Sequence[str] | None = None,
            x: str | None = None, y: str | None = None) -> list[Path]:
    return plot_grid_results(directory, metrics=metrics, x=x, y=y)


def notes(experiment: Experiment) -> dict:
    """config.toml comments: the [hyper] keys no configuration uses, each with the reason (the
    sphere has no lam_W / lam_H, E_W / E_H are the norm balls', beta1 is adam's, ...)."""
    common = None
    for problem, solver_name in _groups(configurations(experiment)):
        unused = unused_hyper_fields(problem, solver_name)
        common = unused if common is None else {k: v for k, v in common.items() if k in unused}
    return {"hyper": {k: f"not used: {why}" for k, why in (common or {}).items()}}


def describe(experiment: Experiment) -> str:
    return f"{len(configurations(experiment))} runs"


# `ufm run FILE --quick`: few steps, one seed.
QUICK = {"solver": {"steps": 300, "log_every": 100}, "run": {"seeds": [0]}}


# ----------------------------------------------------------------------------- figures


GRID_METRICS = ("nc1", "nc2_W", "nc3", "rel_gap")


def _numeric_axes(table: dict) -> list[str]:
    """Configuration columns that vary across the table and hold numbers (seeds excluded)."""
    axes = []
    for c in CONFIG_COLUMNS:
        if c in table and len(set(map(str, table[c]))) > 1 and np.issubdtype(
                np.asarray(table[c]).dtype, np.number) and not np.any(
                np.isnan(np.asarray(table[c], float))):  # an axis only where every row has it
            axes.append(c)
    return axes


def _final(table, metric, rows):
    """A metric's final values on `rows`, without the runs that diverged (their metrics are
    those of the last finite point before the blow-up, not of a result)."""
    diverged = diverged_rows(table)
    rows = [i for i in rows if not diverged[i]]
    values = results.float_column(table, metric)[rows]
    return np.abs(values) if metric == "rel_gap" else values


def plot_grid(directory: str | Path, table: dict, metrics: Sequence[str] | None = None,
              x: str | None = None, y: str | None = None) -> list[Path]:
    """Final metrics over the grid's numeric axes: heatmaps over two axes (median over seeds;
    one panel per value of the other varying fields; a cell whose runs all diverged is grey and
    says so), or lines over one axis with a min-max band over seeds. Axes are chosen from the
    grid unless x / y name them. Each figure is drawn in isolation (`draw_figure`)."""
    axes = _numeric_axes(table)
    x = x or (axes[0] if axes else None)
    if x is None:
        return []
    # A y that is a function of x (zipped with it) adds no second dimension: skip it.
    independent = lambda a: len(set(zip(map(str, table[x]), map(str, table[a])))) > len(
        set(map(str, table[x])))
    y = y or next((a for a in axes if a != x and independent(a)), None)
    others = [c for c in CONFIG_COLUMNS if c in table and c not in (x, y)
              and len(set(map(str, table[c]))) > 1 and (c not in axes or independent(c))
              and not (c == "class_counts" and all_balanced(table))]
    # A column the others (and the axes) determine (the label sets, given K and the counts)
    # tells no panel apart.
    shown = [a for a in (x, y) if a is not None]
    for c in list(others):  # one at a time: of two that determine each other, one stays
        if determined_by(table, c, shown + [o for o in others if o != c]):
            others.remove(c)
    n_rows = len(table["row"])
    panel_of = [", ".join(f"{c}={label_value(table[c][i])}" for c in others) or "all"
                for i in range(n_rows)]
    panels = list(dict.fromkeys(panel_of))
    written = []
    for metric in [m for m in (metrics or GRID_METRICS) if m in table]:
        if np.all(np.isnan(results.float_column(table, metric))):
            continue
        if y is not None:
            name = f"grid_{metric}_{x}_{y}.png"
            written += draw_figure(name, _grid_heatmap, Path(directory) / name, table, metric,
                                   x, y, panels, panel_of)
        else:
            name = f"grid_{metric}_{x}.png"
            written += draw_figure(name, _grid_lines, Path(directory) / name, table, metric, x,
                                   panels, panel_of)
    return written


def _grid_heatmap(path, table, metric, x, y, panels, panel_of) -> Path:
    plt = pyplot()
    n_rows = len(table["row"])
    xs = sorted(set(np.asarray(table[x], float)))
    ys = sorted(set(np.asarray(table[y], float)))
    cells = {}  # (panel, iy, ix) -> (log10 median or NaN, every run there diverged)
    for panel in panels:
        for iy, yv in enumerate(ys):
            for ix, xv in enumerate(xs):
                rows = [i for i in range(n_rows) if panel_of[i] == panel
                        and float(table[x][i]) == xv and float(table[y][i]) == yv]
                if not rows:
                    continue
                value = nan_stats(shown_on(_final(table, metric, rows), "log")[:, None])[0][0]
                cells[panel, iy, ix] = (np.log10(value) if np.isfinite(value) else np.nan,
                                        bool(diverged_rows(table)[rows].all()))
    finite = [v for v, _ in cells.values() if np.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if low == high:
        low, high = low - 0.5, high + 0.5
    fig, axs = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8),
                            layout="constrained", squeeze=False)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    for ax, panel in zip(axs.flat, panels):
        shown = np.full((len(ys), len(xs)), np.nan)
        for (p, iy, ix), (value, all_diverged) in cells.items():
            if p != panel:
                continue
            shown[iy, ix] = value
            if all_diverged:
                ax.text(ix, iy, "diverged", ha="center", va="center", fontsize=7)
        im = ax.imshow(np.ma.masked_invalid(shown), origin="lower", aspect="auto", cmap=cmap,
                       vmin=low, vmax=high)
        ax.set_xticks(range(len(xs)), [f"{v:.3g}" for v in xs], rotation=45, fontsize=7)
        ax.set_yticks(range(len(ys)), [f"{v:.3g}" for v in ys], fontsize=7)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(panel, fontsize=8)
        fig.colorbar(im, ax=ax, label=f"log10 {metric} (median over seeds)")
    fig.suptitle(settings_line(table), fontsize=8)
    return save_figure(fig, path)


def _grid_lines(path, table, metric, x, panels, panel_of) -> Path:
    plt = pyplot()
    n_rows = len(table["row"])
    fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
    for panel in panels:
        rows = [i for i in range(n_rows) if panel_of[i] == panel]
        xs = sorted(set(np.asarray(table[x], float)[rows]))
        stats = [nan_stats(shown_on(_final(table, metric, [i for i in rows
                                                           if float(table[x][i]) == xv]),
                                    "log")[:, None]) for xv in xs]
        mid, lo, hi = (np.array([s[j][0] for s in stats]) for j in range(3))
        (line,) = ax.plot(xs, mid, "o-", label=panel)
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    values = sorted(set(np.asarray(table[x], float)))
    ax.set_xscale("log" if min(values) > 0 else "linear")
    if len(values) <= 12:  # the grid's own values as ticks, not powers of ten
        from matplotlib.ticker import NullLocator

        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(values, [f"{v:.3g}" for v in values])
    set_scale(ax, "log")
    ax.set_xlabel(x)
    ax.set_ylabel(f"final {metric} (median, min-max over seeds)")
    ax.set_title(textwrap.fill(settings_line(table), 80), fontsize=7)
    figure_legend(fig, ax)
    return save_figure(fig, path)


def check_figure_options(table: dict, history: dict, metrics: Sequence[str] | None = None,
                         x: str | None = None, y: str | None = None) -> None:
    """ValueError naming a --metric, --x or --y that this grid's folder cannot draw, with the
    names it can."""
    drawable = [key for key, _, _ in TRAJECTORY_FIGURES if key in history]
    drawable += [c for c in table if c not in drawable and c not in IGNORED_COLUMNS
                 and c not in CONFIG_COLUMNS and np.issubdtype(np.asarray(table[c]).dtype,
                                                               np.number)]
    for metric in metrics or ():
        if metric not in drawable:
            raise ValueError(f"--metric {metric!r} is not in this results folder: one of "
                             f"{', '.join(drawable)}")
    axes = _numeric_axes(table)
    for flag, name in (("--x", x), ("--y", y)):
        if name is not None and name not in axes:
            allowed = (f"one of {', '.join(axes)}" if axes else
                       "this grid has no numeric axis that varies")
            raise ValueError(f"{flag} {name!r} is not a numeric axis of this grid: {allowed}")
    if x is not None and x == y:
        raise ValueError(f"--x and --y are both {x!r}: choose two different axes")


def plot_grid_results(directory: str | Path, metrics: Sequence[str] | None = None,
                      x: str | None = None, y: str | None = None) -> list[Path]:
    """The figures of a grid's results folder (trajectories, overview, final metrics over the
    grid's axes, and GNC, imbalance and layer-wise figures where they apply), each drawn in
    isolation; returns the files written. Any results folder: `ufm.running.experiment.figures`."""
    directory = Path(directory)
    table = results.read_table(directory / results.RESULTS)
    history = results.read_history(directory / results.HISTORY, len(table["row"]))
    check_figure_options(table, history, metrics, x, y)
    written = []
    if history.get("iteration") is not None and len(table["row"]):
        figures = [f for f in TRAJECTORY_FIGURES if f[0] in history
                   and (metrics is None or f[0] in metrics)
                   and np.isfinite(np.asarray(history[f[0]], float)).any()]
        for figure in figures:
            written += draw_figure(f"{figure[0]}.png", _trajectory_figure, directory, table,
                                   history, [figure], f"{figure[0]}.png")
        if figures:
            written += draw_figure("overview.png", _trajectory_figure, directory, table,
                                   history, figures, "overview.png")
    written += plot_grid(directory, table, metrics, x, y)
    if "gnc2_margin" in table and len(set(map(str, table.get("tau", [])))) > 1:
        written += draw_figure("gnc_margin.png", plot_gnc_margin, directory, table)
    if "minority_cos" in table:
        written += draw_figure("imbalance.png", plot_imbalance, directory, table)
    if "nc1_layer0" in table:
        written += draw_figure("layer_nc1.png", plot_layer_nc1, directory, table)
    return written


def _trajectory_figure(directory, table, history, figures, filename) -> Path:
    """One panel per (key, label, scale) of `figures` against iteration: one figure for a
    metric, the overview for several; one legend, the shared settings as the title."""
    plt = pyplot()
    labels, _ = series_labels(table)
    n_series = len(set(labels))
    width = 5.5 if n_series <= 8 else 8.5 + 2.5 * (n_series // 30)
    iteration = np.asarray(history["iteration"])
    keep = run_ends(table, iteration.size, iteration)
    diverged = diverged_rows(table)
    cols = min(3, len(figures))
    rows = -(-len(figures) // cols)
    size = (width, 3.8) if len(figures) == 1 else (4.6 * cols + width - 5.5, 3.4 * rows)
    fig, axes = plt.subplots(rows, cols, figsize=size, layout="constrained", squeeze=False)
    for ax, (key, ylabel, scale) in zip(axes.flat, figures):
        draw_trajectories(ax, iteration, history[key], labels, key, scale, keep, diverged)
        if len(figures) == 1:
            ax.set_ylabel(ylabel)
        else:
            ax.set_title(ylabel, fontsize=9)
    for ax in list(axes.flat)[len(figures):]:
        ax.axis("off")
    figure_legend(fig, axes.flat[:len(figures)])
    note = " (x: diverged)" if diverged.any() else ""
    fig.suptitle(settings_line(table) + note, fontsize=8)
    return save_figure(fig, Path(directory) / filename)


def plot_gnc_margin(directory: str | Path, table: dict) -> list[Path]:
    """GNC margin (min one-vs-rest distance of the normalized classifiers) against tau: one
    panel per feature dimension d, one line per K (best over seeds), the softmax code's margin
    dashed where it is known exactly or certified (`ufm.analysis.code_table`)."""
    plt = pyplot()
    K_col, d_col = np.asarray(table["num_classes"], int), np.asarray(table["feature_dim"], int)
    tau = np.asarray(table["tau"], float)
    margin = np.asarray(table["gnc2_margin"], float)
    code = results.float_column(table, "code_margin")
    dims = sorted(set(d_col))
    fig, axes = plt.subplots(1, len(dims), figsize=(3.6 * len(dims), 3.4), layout="constrained",
                             squeeze=False)
    for ax, d in zip(axes.flat, dims):
        for K in sorted(set(K_col[d_col == d])):
            rows = (d_col == d) & (K_col == K)
            taus = sorted(set(tau[rows]))
            best = [nan_stats(margin[rows & (tau == t)][:, None])[2][0] for t in taus]
            (line,) = ax.plot(taus, best, "o-", label=f"K={K}")
            known = code[rows]
            if np.isfinite(known).any():
                ax.axhline(np.nanmax(known), color=line.get_color(), ls="--", lw=1)
        ax.set_xscale("log")
        set_scale(ax, "log")
        ax.set_xlabel("tau")
        ax.set_title(f"d = {d}", fontsize=9)
        ax.legend(fontsize=7)
    axes.flat[0].set_ylabel("one-vs-rest margin (dashed: softmax code)")
    return [save_figure(fig, Path(directory) / "gnc_margin.png")]


def plot_layer_nc1(directory: str | Path, table: dict) -> list[Path]:
    """Final NC1 of every representation of a deep UFM (layer 0 = the free features, the last
    = the classifier's input), one line per configuration (median over seeds, min-max band)."""
    plt = pyplot()
    labels, _ = series_labels(table)
    logged = sorted(int(key[len("nc1_layer"):]) for key in table if key.startswith("nc1_layer"))
    fig, ax = plt.subplots(figsize=(6, 3.8), layout="constrained")
    for label in dict.fromkeys(labels):
        rows = [i for i, lab in enumerate(labels) if lab == label]
        layers = [k for k in logged
                  if np.isfinite(results.float_column(table, f"nc1_layer{k}")[rows]).any()]
        if not layers:
            continue
        values = np.array([results.float_column(table, f"nc1_layer{k}")[rows] for k in layers])
        values = np.maximum(values, 1e-32)
        (line,) = ax.plot(layers, np.median(values, axis=1), "o-", label=label)
        ax.fill_between(layers, values.min(axis=1), values.max(axis=1),
                        color=line.get_color(), alpha=0.2, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("layer (0 = free features)")
    ax.set_ylabel("final NC1")
    ax.legend(fontsize=7)
    return [save_figure(fig, Path(directory) / "layer_nc1.png")]


def plot_imbalance(directory: str | Path, table: dict) -> list[Path]:
    """Minority collapse against the imbalance ratio n_max/n_min: mean cosine between minority
    classifiers (solver: markers per seed; convex oracle: line) with the oracle's collapse
    threshold dashed; minority/majority norm ratios; |f - f_oracle|/|f_oracle|."""
    plt = pyplot()
    counts = [np.array(str(c).split(), float) for c in table["class_counts"]]
    ratio = np.array([c.max() / c.min() if c.size else 1.0 for c in counts])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    order = np.argsort(ratio, kind="stable")
    axes[0].plot(ratio[order], results.float_column(table, "minority_cos")[order], "o", ms=4,
                 label="solver (each seed)")
    oracle_cos = results.float_column(table, "oracle_minority_cos")
    if np.isfinite(oracle_cos).any():
        axes[0].plot(ratio[order], oracle_cos[order], "-", label="convex oracle")
    threshold = results.float_column(table, "collapse_ratio")
    for value in sorted(set(threshold[np.isfinite(threshold)])):
        axes[0].axvline(value, color="k", ls="--", lw=1)
        axes[0].text(value, -0.05, f" R*={value:.3g}", fontsize=7)
    axes[0].axhline(1.0, color="gray", lw=0.5)
    axes[0].set_ylabel("mean cos between minority classifiers")
    axes[0].legend(fontsize=7)
    axes[1].plot(ratio[order], results.float_column(table, "w_norm_ratio")[order], "o-", ms=3,
                 label="||w|| minority / majority")
    axes[1].plot(ratio[order], results.float_column(table, "h_norm_ratio")[order], "s-", ms=3,
                 label="||mu - mu_G|| minority / majority")
    axes[1].legend(fontsize=7)
    axes[1].set_yscale("log")
    axes[2].semilogy(
        ratio[order],
        np.maximum(results.float_column(table, "minority_spread")[order], 1e-17),
        "o",
        ms=4,
        label="minority spread (solver)",
    )
    gap = np.abs(results.float_column(table, "oracle_gap"))
    if np.isfinite(gap).any():
        axes[2].semilogy(ratio[order], np.maximum(gap[order], 1e-17), "x", ms=4,
                         label="|f - f_oracle| / |f_oracle|")
    axes[2].legend(fontsize=7)
    from matplotlib.ticker import NullFormatter

    for ax in axes:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # the decades only: no crowded labels
        ax.set_xlabel("imbalance ratio n_max / n_min")
    return [save_figure(fig, Path(directory) / "imbalance.png")]


ABOUT = ("Every configuration of the grid (the product of the list-valued keys, the [[zip]] "
         "tables and the seeds) solved from a random start, in one compiled call per group of "
         "configurations sharing a Problem and solver; a row per run: its configuration, "
         "status, steps, final NC metrics, the closed-form f* and the gap to it, with the "
         "histories in history.npz.")
KINDS = {"grid": Kind("grid", SCHEMA, check, units, run_unit, summary, figures, describe,
                      manifest, notes, extend, QUICK, ABOUT)}
