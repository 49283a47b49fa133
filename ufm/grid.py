"""Grids of UFM runs: expand an experiment, group by static `Problem`, run each group as ONE
jitted, vmapped call over (Hyper, seed), and write the results folder.

Configurations sharing a Problem differ only in traced values (Hyper, seed), so a group compiles
once however many configurations it holds.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from ufm import config as _config
from ufm import io
from ufm.problem import Hyper, Problem
from ufm.solvers import solve_batch



@dataclasses.dataclass
class GridResult:
    """What a grid run produced: the experiment, one row per (configuration, seed) and the
    matching histories (dicts of 1-D arrays)."""

    experiment: _config.Experiment
    rows: list
    histories: list
    seconds: float
    out: Path | None = None


def _as_experiment(config_or_path, overrides) -> _config.Experiment:
    if isinstance(config_or_path, _config.Experiment):
        experiment = config_or_path
    elif config_or_path is None:
        experiment = _config.load_default()
    else:
        experiment = _config.load(config_or_path)
    return _config.apply_overrides(experiment, list(overrides)) if overrides else experiment


def _groups(configs) -> dict[tuple[Problem, str], list[int]]:
    """Configurations by static signature (Problem, solver): each group compiles once."""
    groups: dict[tuple[Problem, str], list[int]] = {}
    for index, cfg in enumerate(configs):
        groups.setdefault((cfg.problem, cfg.solver), []).append(index)
    return groups


def _row(index, group, cfg, solver, status, steps, diverged_at, optimum, history, seconds):
    row = {"row": index, "group": group, **_config_columns(cfg.problem, cfg.hyper, solver)}
    row.update({"seed": cfg.seed, "status": status, "steps": int(steps),
                "diverged_at": None if diverged_at < 0 else int(diverged_at),
                "f_star": None if optimum is None else optimum.objective,
                "optimum_is_zero": None if optimum is None else optimum.is_zero})
    for key, values in history.items():  # final values; "loss" names the loss function here
        if key != "iteration":
            row["mean_loss" if key == "loss" else key] = float(values[-1])
    row["seconds"] = seconds
    return row


def _config_columns(problem: Problem, hyper: Hyper, solver: str) -> dict:
    row = {name: getattr(problem, name) for name in io.PROBLEM_COLUMNS}
    row.update(hyper._asdict())
    row["solver"] = solver
    return row


def _run_landscape(experiment, configs, progress):
    """Landscape experiments: one `ufm.landscape` experiment per (Problem, Hyper) of the grid."""
    from ufm import landscape

    settings, solver, seeds = experiment.landscape, experiment.solver, experiment.run["seeds"]
    pairs = list(dict.fromkeys((c.problem, c.hyper, c.solver) for c in configs))
    rows, histories, spectra = [], [], {}
    for index, (problem, hyper, solver_name) in enumerate(pairs):
        base = {"config": index, **_config_columns(problem, hyper, solver_name)}
        common = dict(steps=solver["steps"], log_every=solver["log_every"], progress=progress)
        if experiment.kind == "benign":
            found, spectra_here, saddle_probes = landscape.benign_landscape(
                problem, hyper, random_starts=settings["random_starts"],
                saddle_starts=settings["saddle_starts"], epsilon=settings["epsilon"][0],
                ranks=settings["ranks"] or None, solver=solver_name, tol=solver["tol"],
                reach_rtol=settings["reach_rtol"], seed=seeds[0], method=settings["method"],
                **common)
            for name, eigs in spectra_here.items():
                spectra[f"{index}|{name}"] = eigs
            for name, p in saddle_probes.items():
                spectra[f"{index}|{name}|verdict"] = np.array(p.verdict)
        elif experiment.kind == "origin_phase":
            found = landscape.origin_phase(problem, hyper, ratios=settings["ratios"], seeds=seeds,
                                           solver=solver_name, tol=solver["tol"],
                                           method=settings["method"], **common)
        else:
            found, history = landscape.saddle_escape(
                problem, hyper, saddle=settings["saddle"], epsilons=settings["epsilon"],
                seeds=seeds, drop=settings["drop"], **common)
            for k in range(len(found)):
                histories.append({key: (v if key == "iteration" else v[k])
                                  for key, v in history.items()})
        rows += [{"row": len(rows) + i, **base, **r} for i, r in enumerate(found)]
    arrays = {"spectra.npz": spectra} if spectra else None
    return rows, histories, arrays, len(pairs)


class ResultsFolderError(ValueError):
    """The output folder holds something that is not this experiment's results."""


CHECKPOINTS = "checkpoints"


def _claim_folder(out: Path, config_text: str) -> None:
    """Refuse a folder that holds another configuration's results; write config.toml first so
    an interrupted run can be recognised and resumed."""
    existing = out / io.CONFIG
    if existing.is_file():
        old = existing.read_text()
        if old != config_text:
            diff = next((f"{a!r} != {b!r}" for a, b in zip(old.splitlines(),
                                                             config_text.splitlines()) if a != b),
                        "different length")
            raise ResultsFolderError(
                f"{out} holds results of a different configuration (first difference: {diff}); "
                "choose another --out or remove the folder")
    elif out.is_dir() and any(out.iterdir()):
        raise ResultsFolderError(f"{out} is not empty and is not a ufm results folder "
                                 f"({io.CONFIG} is missing); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    existing.write_text(config_text)


def _checkpoint_paths(out: Path, group_index: int) -> tuple[Path, Path]:
    stem = out / CHECKPOINTS / f"group-{group_index:05d}"
    return stem.with_suffix(".json"), stem.with_suffix(".npz")


def _save_group(out: Path, group_index: int, indices, rows, histories) -> None:
    """Checkpoint one finished group (rows as JSON, histories as npz), then append its rows to
    results.csv so the table grows as the grid runs."""
    rows_path, hist_path = _checkpoint_paths(out, group_index)
    rows_path.parent.mkdir(exist_ok=True)
    group_rows = [rows[i] for i in indices]
    stacked = {k: np.stack([histories[i][k] for i in indices]) for k in histories[indices[0]]
               if k != "iteration"}
    np.savez_compressed(hist_path, iteration=histories[indices[0]]["iteration"], **stacked)
    tmp = rows_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(group_rows, default=list))
    tmp.replace(rows_path)  # the JSON appears last: a group counts as done only when complete
    io.append_table(out / io.RESULTS, group_rows)


def _load_group(out: Path, group_index: int, indices, rows, histories) -> bool:
    rows_path, hist_path = _checkpoint_paths(out, group_index)
    if not (rows_path.is_file() and hist_path.is_file()):
        return False
    for row in json.loads(rows_path.read_text()):
        if row.get("class_counts") is not None:
            row["class_counts"] = tuple(row["class_counts"])
        rows[row["row"]] = row
    with np.load(hist_path) as data:
        for j, i in enumerate(indices):
            histories[i] = {k: (data[k] if k == "iteration" else data[k][j]) for k in data.files}
    return True


def run(config_or_path=None, out=None, *, overrides=(), progress=None) -> GridResult:
    """Run an experiment (a path to a TOML file, an `Experiment`, or None for the built-in
    default) and, when `out` is given, write the results folder there.

    Every configuration is validated (and its Problem built) before anything compiles. With
    `out`, every finished group is checkpointed and appended to results.csv at once; running
    the same experiment into the same folder again resumes: finished groups are read back, not
    recomputed, and the final folder equals an uninterrupted run's (timings aside). A folder
    holding another configuration is refused (`ResultsFolderError`).
    """
    experiment = _as_experiment(config_or_path, overrides)
    configs = _config.configurations(experiment)
    config_text = _config.dumps(experiment)
    out = None if out is None else Path(out)
    if out is not None:
        _claim_folder(out, config_text)
    if experiment.kind != "solve":
        t0 = time.perf_counter()
        rows, histories, arrays, n_pairs = _run_landscape(experiment, configs, progress)
        seconds = time.perf_counter() - t0
        result = GridResult(experiment, rows, histories, seconds)
        if out is not None:
            result.out = io.write_results(
                out, config_text, rows, histories,
                io.manifest(seconds, experiment=experiment.name, kind=experiment.kind,
                            configurations=n_pairs), arrays)
        return result
    solver = experiment.solver
    rows: list = [None] * len(configs)
    histories: list = [None] * len(configs)
    t0 = time.perf_counter()
    groups = _groups(configs)
    if out is not None and (out / io.RESULTS).is_file():
        (out / io.RESULTS).unlink()  # rebuilt from the checkpoints below, in group order
    resumed = 0
    for group_index, ((problem, solver_name), indices) in enumerate(groups.items()):
        if out is not None and _load_group(out, group_index, indices, rows, histories):
            io.append_table(out / io.RESULTS, [rows[i] for i in indices])
            resumed += 1
            continue
        hypers = Hyper(*(np.array([getattr(configs[i].hyper, f) for i in indices])
                         for f in Hyper._fields))
        seeds = [configs[i].seed for i in indices]
        desc = f"group {group_index + 1}/{len(groups)}: {problem.loss} {problem.geometry} {solver_name}"
        batch = solve_batch(problem, hypers, seeds, steps=solver["steps"],
                            log_every=solver["log_every"], tol=solver["tol"],
                            solver=solver_name, init_scale=solver["init_scale"],
                            progress=progress, desc=desc)
        per_config_seconds = batch.seconds / len(indices)
        for j, i in enumerate(indices):
            history = {k: (v if k == "iteration" else v[j]) for k, v in batch.history.items()}
            histories[i] = history
            rows[i] = _row(i, group_index, configs[i], solver_name, batch.status[j],
                           batch.steps[j], batch.diverged_at[j], batch.optimum[j], history,
                           per_config_seconds)
        if out is not None:
            _save_group(out, group_index, indices, rows, histories)
    seconds = time.perf_counter() - t0
    result = GridResult(experiment, rows, histories, seconds)
    if out is not None:
        result.out = io.write_results(
            out, config_text, rows, histories,
            io.manifest(seconds, experiment=experiment.name, configurations=len(configs),
                        groups=len(groups), groups_resumed=resumed))
    return result
