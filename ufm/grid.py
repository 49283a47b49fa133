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

import jax
import numpy as np

from ufm import config as _config
from ufm import io
from ufm.problem import Hyper, Problem
from ufm.solvers import progress_bar, solve_batch



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


# Working set under which a vmapped batch stays fast. CPU: measured on the 2-core development
# machine, 16 configurations of (K, d, n) = (10, 64, 100) (~1 MB each) vmap well while one of
# (10, 512, 500) (~40 MB) already runs 1.9x slower vmapped than one after another.
CPU_BATCH_BYTES = 32 * 2**20
ACCELERATOR_MEMORY_FRACTION = 0.5


def config_bytes(problem: Problem) -> int:
    """Approximate bytes one configuration touches per step: W, H, b with their gradients and
    two optimizer moments, plus the logits, probabilities and dL/dZ (K x N each)."""
    K, d, N = problem.num_classes, problem.feature_dim, problem.num_samples
    itemsize = 8 if problem.dtype == "float64" else 4
    return itemsize * (4 * (K * d + d * N + K) + 3 * K * N)


def batch_width(problem: Problem, n_configs: int) -> int:
    """Configurations per vmapped call from the problem size and the device: as many as fit the
    working-set budget (the cache on a CPU, a fraction of memory on an accelerator), times the
    number of local devices the batch is sharded over."""
    device = jax.local_devices()[0]
    n_dev = jax.local_device_count()
    if device.platform == "cpu":
        budget = CPU_BATCH_BYTES
    else:
        stats = device.memory_stats() or {}
        budget = ACCELERATOR_MEMORY_FRACTION * stats.get("bytes_limit", 8 * 2**30)
    per_device = max(1, int(budget // config_bytes(problem)))
    return max(1, min(n_configs, per_device * n_dev))


def _timed_trial(problem, solver_name, solver, hypers, seeds, width) -> int:
    """Keep `width` only if a short vmapped trial beats running its configurations one after
    another (both compiled first); otherwise run them one at a time."""
    steps = min(solver["steps"], 50)
    kwargs = dict(steps=steps, log_every=steps, tol=0.0, solver=solver_name,
                  init_scale=solver["init_scale"], progress=False)
    take = lambda tree, n: Hyper(*(np.asarray(v)[:n] for v in tree))
    for _ in range(2):  # the first call of each compiles
        batched = solve_batch(problem, take(hypers, width), seeds[:width], **kwargs).seconds
        single = solve_batch(problem, take(hypers, 1), seeds[:1], **kwargs).seconds
    return width if batched <= single * width else 1


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


def _checkpoint_paths(out: Path, tag: str) -> tuple[Path, Path]:
    stem = out / CHECKPOINTS / tag
    return stem.with_suffix(".json"), stem.with_suffix(".npz")


def _save_chunk(out: Path, tag: str, indices, rows, histories) -> None:
    """Checkpoint one finished chunk (rows as JSON, histories as npz), then append its rows to
    results.csv so the table grows as the grid runs."""
    rows_path, hist_path = _checkpoint_paths(out, tag)
    rows_path.parent.mkdir(exist_ok=True)
    chunk_rows = [rows[i] for i in indices]
    stacked = {k: np.stack([histories[i][k] for i in indices]) for k in histories[indices[0]]
               if k != "iteration"}
    np.savez_compressed(hist_path, iteration=histories[indices[0]]["iteration"], **stacked)
    tmp = rows_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(chunk_rows, default=list))
    tmp.replace(rows_path)  # the JSON appears last: a chunk counts as done only when complete
    io.append_table(out / io.RESULTS, chunk_rows)


def _load_chunk(out: Path, tag: str, indices, rows, histories) -> bool:
    rows_path, hist_path = _checkpoint_paths(out, tag)
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


def _group_hypers(configs, indices) -> Hyper:
    return Hyper(*(np.array([getattr(configs[i].hyper, f) for i in indices]) for f in Hyper._fields))


def _plan(experiment, configs, groups, out) -> list[int]:
    """Configurations per vmapped call, one width per group: the file's run.batch, or
    `batch_width` confirmed by `_timed_trial` when the group is worth a trial. Saved with the
    checkpoints, so a resumed run cuts its groups exactly as the first run did."""
    plan_path = None if out is None else out / CHECKPOINTS / "plan.json"
    if plan_path is not None and plan_path.is_file():
        return json.loads(plan_path.read_text())
    widths = []
    for (problem, solver_name), indices in groups.items():
        if experiment.run["batch"]:
            widths.append(min(experiment.run["batch"], len(indices)))
            continue
        width = batch_width(problem, len(indices))
        # A trial costs two compilations: worth it only for long runs of batches whose working
        # set comes near the budget, where vmap can lose to a loop.
        near_budget = width * config_bytes(problem) > CPU_BATCH_BYTES / 4
        if width > 1 and near_budget and experiment.solver["steps"] >= 500:
            seeds = [configs[i].seed for i in indices]
            width = _timed_trial(problem, solver_name, experiment.solver,
                                 _group_hypers(configs, indices), seeds, width)
        widths.append(width)
    if plan_path is not None:
        plan_path.parent.mkdir(exist_ok=True)
        plan_path.write_text(json.dumps(widths))
    return widths


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
    widths = _plan(experiment, configs, groups, out)
    if out is not None and (out / io.RESULTS).is_file():
        (out / io.RESULTS).unlink()  # rebuilt from the checkpoints below, in run order
    chunks = []  # (group index, chunk index, problem, solver, indices, width)
    for g, (((problem, solver_name), indices), width) in enumerate(zip(groups.items(), widths)):
        for c, first in enumerate(range(0, len(indices), width)):
            chunks.append((g, c, problem, solver_name, indices[first:first + width], width))
    # One bar over the whole grid (configuration-steps, ETA); solve_batch advances it.
    bar = progress_bar(progress, sum(w for *_, w in chunks) * solver["steps"],
                       f"{len(configs)} configurations")
    resumed = 0
    for g, c, problem, solver_name, indices, width in chunks:
        tag = f"group-{g:05d}-chunk-{c:05d}"
        if out is not None and _load_chunk(out, tag, indices, rows, histories):
            io.append_table(out / io.RESULTS, [rows[i] for i in indices])
            resumed += 1
            if bar is not None:
                bar.update(width * solver["steps"])
            continue
        # Pad a short last chunk with copies of its last configuration: same shape, no
        # recompilation; the copies' results are dropped.
        padded = indices + [indices[-1]] * (width - len(indices))
        if bar is not None:
            bar.set_description(f"group {g + 1}/{len(groups)} {problem.loss} {solver_name}")
        batch = solve_batch(problem, _group_hypers(configs, padded),
                            [configs[i].seed for i in padded], steps=solver["steps"],
                            log_every=solver["log_every"], tol=solver["tol"],
                            solver=solver_name, init_scale=solver["init_scale"],
                            progress=bar if bar is not None else False)
        per_config_seconds = batch.seconds / len(padded)
        for j, i in enumerate(indices):
            history = {k: (v if k == "iteration" else v[j]) for k, v in batch.history.items()}
            histories[i] = history
            rows[i] = _row(i, g, configs[i], solver_name, batch.status[j], batch.steps[j],
                           batch.diverged_at[j], batch.optimum[j], history, per_config_seconds)
        if out is not None:
            _save_chunk(out, tag, indices, rows, histories)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    result = GridResult(experiment, rows, histories, seconds)
    if out is not None:
        result.out = io.write_results(
            out, config_text, rows, histories,
            io.manifest(seconds, experiment=experiment.name, configurations=len(configs),
                        groups=len(groups), batch_widths=widths, chunks=len(chunks),
                        chunks_resumed=resumed))
    return result
