"""Grids of UFM runs: expand an experiment, group by static `Problem`, run each group as ONE
jitted, vmapped call over (Hyper, seed), and write the results folder.

Configurations sharing a Problem differ only in traced values (Hyper, seed), so a group compiles
once however many configurations it holds.
"""
from __future__ import annotations

import dataclasses
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


def run(config_or_path=None, out=None, *, overrides=(), progress=None) -> GridResult:
    """Run an experiment (a path to a TOML file, an `Experiment`, or None for the built-in
    default) and, when `out` is given, write the results folder there.

    Every configuration is validated (and its Problem built) before anything compiles.
    """
    experiment = _as_experiment(config_or_path, overrides)
    configs = _config.configurations(experiment)
    if experiment.kind != "solve":
        t0 = time.perf_counter()
        rows, histories, arrays, n_pairs = _run_landscape(experiment, configs, progress)
        seconds = time.perf_counter() - t0
        result = GridResult(experiment, rows, histories, seconds)
        if out is not None:
            result.out = io.write_results(
                out, _config.dumps(experiment), rows, histories,
                io.manifest(seconds, experiment=experiment.name, kind=experiment.kind,
                            configurations=n_pairs), arrays)
        return result
    solver = experiment.solver
    rows: list = [None] * len(configs)
    histories: list = [None] * len(configs)
    t0 = time.perf_counter()
    groups = _groups(configs)
    for group_index, ((problem, solver_name), indices) in enumerate(groups.items()):
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
    seconds = time.perf_counter() - t0
    result = GridResult(experiment, rows, histories, seconds)
    if out is not None:
        result.out = io.write_results(
            out, _config.dumps(experiment), rows, histories,
            io.manifest(seconds, experiment=experiment.name, configurations=len(configs),
                        groups=len(groups)))
    return result
