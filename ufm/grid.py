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
from ufm import io, multihost
from ufm.problem import Hyper, Problem
from ufm.solvers import STATUSES, progress_bar, solve_batch



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


def _row(index, group, cfg, solver, status, steps, diverged_at, f_star, is_zero, history,
         seconds):
    row = {"row": index, "group": group, **_config_columns(cfg.problem, cfg.hyper, solver)}
    row.update({"seed": cfg.seed, "status": status, "steps": int(steps),
                "diverged_at": None if diverged_at < 0 else int(diverged_at),
                "f_star": None if np.isnan(f_star) else float(f_star),
                "optimum_is_zero": None if np.isnan(f_star) else bool(is_zero)})
    for key, values in history.items():  # final values; "loss" names the loss function here
        if key != "iteration":
            row["mean_loss" if key == "loss" else key] = float(values[-1])
    row["seconds"] = seconds
    return row


# Working set under which a vmapped slice stays fast on a CPU. Measured on the 2-core
# development machine at (K, d, n) = (10, 64, 100) (~1.1 MB a configuration), 64 configurations,
# GD: slices of 1/2/4/8/16/32/64 ran 5975/6269/8121/8617/8108/5905/4875 configuration-steps/s;
# at (10, 512, 500) (~40 MB) one vmapped configuration runs several times slower than an
# unbatched one (a batched matmul misses the fast path), so large problems go one at a time.
CPU_BATCH_BYTES = 10 * 2**20
# Share of memory one compiled call may fill with configurations' state: host memory on a CPU,
# device memory on an accelerator (the rest is for XLA's temporaries and the histories).
HOST_MEMORY_FRACTION = 0.25
ACCELERATOR_MEMORY_FRACTION = 0.5
# Configurations per compiled call at most, whatever the memory: one chunk is also one
# checkpoint, so this bounds the work an interruption can lose.
MAX_CHUNK = 4096


def config_bytes(problem: Problem) -> int:
    """Approximate bytes one configuration touches per step: W, H, b with their gradients and
    two optimizer moments, plus the logits, probabilities and dL/dZ (K x N each)."""
    K, d, N = problem.num_classes, problem.feature_dim, problem.num_samples
    itemsize = 8 if problem.dtype == "float64" else 4
    return itemsize * (4 * (K * d + d * N + K) + 3 * K * N)


def _accelerator(device) -> bool:
    return device.platform != "cpu"


def _memory_bytes(device=None) -> float:
    """Memory one compiled call may use on `device` (default: the host; see the fractions)."""
    if device is not None and _accelerator(device):
        stats = device.memory_stats() or {}
        return ACCELERATOR_MEMORY_FRACTION * stats.get("bytes_limit", 8 * 2**30)
    try:
        import os

        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        host = 8 * 2**30
    return HOST_MEMORY_FRACTION * host


def batch_width(problem: Problem, n_configs: int) -> int:
    """Configurations per vmapped slice. CPU: as many as fit the cache-sized working-set budget
    (1 for large problems: one at a time, the fast way there); accelerator: the whole chunk
    (vmap fills the device). Times the local device count the batch is sharded over."""
    device = jax.local_devices()[0]
    if _accelerator(device):
        return chunk_size(problem, n_configs)
    per_device = max(1, int(CPU_BATCH_BYTES // config_bytes(problem)))
    widest = max(1, min(n_configs, per_device * jax.local_device_count()))
    return -(-n_configs // -(-n_configs // widest))  # equal slices: the least padding


def chunk_size(problem: Problem, n_configs: int, width: int = 1) -> int:
    """Configurations per compiled call (and per checkpoint): as many as fit the memory of the
    local devices, at most MAX_CHUNK, a multiple of `width`; a grid larger than memory runs as
    several chunks."""
    device = jax.local_devices()[0]
    fits = int(_memory_bytes(device) * jax.local_device_count() // config_bytes(problem))
    fits = max(width, min(fits, MAX_CHUNK) // width * width)
    n_chunks = -(-n_configs // fits)
    per_chunk = -(-n_configs // n_chunks)  # equal chunks: the least padding
    return -(-per_chunk // width) * width


def _timed_trial(problem, solver_name, solver, hypers, seeds, width) -> int:
    """Keep `width` only if a short vmapped trial beats running its configurations one at a
    time (both compiled first); otherwise run them one at a time."""
    steps = min(solver["steps"], 50)
    kwargs = dict(steps=steps, log_every=steps, tol=0.0, solver=solver_name,
                  init_scale=solver["init_scale"], progress=False, fast=solver["fast"],
                  check_every=solver["check_every"], kernel=solver["kernel"])
    take = lambda tree, n: Hyper(*(np.asarray(v)[:n] for v in tree))
    for _ in range(2):  # the first call of each compiles
        batched = solve_batch(problem, take(hypers, width), seeds[:width], **kwargs).seconds
        single = solve_batch(problem, take(hypers, width), seeds[:width], width=1,
                             **kwargs).seconds
    return width if batched <= single else 1


def _config_columns(problem: Problem, hyper: Hyper, solver: str) -> dict:
    row = {name: getattr(problem, name) for name in io.PROBLEM_COLUMNS}
    if problem.multilabel:  # compact: "0 1 2 0+1 0+2 1+2"
        row["label_sets"] = " ".join("+".join(map(str, s)) for s in problem.label_sets)
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
        common = dict(steps=solver["steps"], log_every=solver["log_every"], progress=progress,
                      fast=solver["fast"], check_every=solver["check_every"],
                      kernel=solver["kernel"])
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


def _run_chunk(configs, solver, problem, solver_name, indices, size, width, bar) -> dict:
    """Run one chunk as one compiled call; its results as plain arrays (what is gathered from
    other hosts)."""
    # Pad a short last chunk with copies of its last configuration: same shape, no
    # recompilation; the copies' results are dropped.
    padded = indices + [indices[-1]] * (size - len(indices))
    batch = solve_batch(problem, _group_hypers(configs, padded),
                        [configs[i].seed for i in padded], steps=solver["steps"],
                        log_every=solver["log_every"], tol=solver["tol"], solver=solver_name,
                        init_scale=solver["init_scale"], fast=solver["fast"],
                        check_every=solver["check_every"], kernel=solver["kernel"],
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
    arrays.update(_extra_arrays(problem, hypers, batch.params, n,
                                np.asarray(batch.history["objective"])[:n, -1]))
    return arrays


def _extra_arrays(problem: Problem, hypers: Hyper, params, n: int, objective) -> dict:
    """Columns beyond the history's metrics, from the final points (host side): GNC metrics
    (`reports_gnc`), and for imbalanced classes the minority-collapse metrics and, for a convex
    loss, the convex oracle's global optimum next to the solver's value (`ufm.oracle`)."""
    arrays = {}
    if problem.depth > 1:
        return arrays  # the GNC and imbalance columns (and the oracle) are the UFM's
    if reports_gnc(problem):
        arrays.update(_gnc_arrays(problem, params, n))
    if not problem.balanced and not problem.multilabel and problem.geometry == "wd":
        arrays.update(_imbalance_arrays(problem, hypers, params, n, objective))
    return arrays


def _imbalance_arrays(problem: Problem, hypers: Hyper, params, n: int, objective) -> dict:
    """Minority-collapse metrics of each final point; for a convex loss the oracle's optimum,
    its minority cosine and (two count levels) the collapse ratio, once per distinct Hyper
    (the seeds of a configuration share them)."""
    from ufm import metrics, oracle

    W, H = np.asarray(params.W), np.asarray(params.H)
    found = [metrics.imbalance_metrics(W[j], H[j], problem.labels, problem.class_counts)
             for j in range(n)]
    arrays = {f"extra/{k}": np.array([f[k] for f in found]) for k in found[0]}
    hyper_list = [Hyper(*(float(np.asarray(v)[j]) for v in hypers)) for j in range(n)]
    if (problem.loss not in oracle.CONVEX_LOSSES or problem.classifier != "learned"
            or not all(h.lam_W > 0 and h.lam_H > 0 for h in hyper_list)):
        return arrays
    counts = np.asarray(problem.class_counts)
    minority = np.flatnonzero(counts < counts.max())
    two_levels = len(set(problem.class_counts)) == 2 and minority.size >= 2
    per_hyper = {}
    for h in dict.fromkeys(hyper_list):
        optimum = oracle.convex_oracle(problem, h)
        cos = metrics.imbalance_metrics(optimum.W, optimum.H_bar, np.arange(problem.num_classes),
                                        problem.class_counts)["minority_cos"]
        # Two count levels: the ratio n_major/n_minor at which the minority collapses.
        ratio = (oracle.minority_collapse_threshold(problem, h, minority=minority,
                                                    n_minority=counts.min())
                 if two_levels else np.nan)
        per_hyper[h] = (optimum.objective, float(optimum.rank), cos, ratio)
    value, rank, cos, ratio = (np.array(column) for column in zip(*map(per_hyper.get,
                                                                        hyper_list)))
    arrays.update({"extra/oracle_objective": value,
                   "extra/oracle_gap": (np.asarray(objective, np.float64) - value) / np.abs(value),
                   "extra/oracle_rank": rank, "extra/oracle_minority_cos": cos})
    if two_levels:
        arrays["extra/collapse_ratio"] = ratio
    return arrays


def reports_gnc(problem: Problem) -> bool:
    """GNC columns (docs/science.md, section 3) for the generalized-NC regime d < K-1 and for every
    sphere problem (where the margin of the ETF, K/(K-1), checks the metric)."""
    if problem.multilabel:
        return False
    return problem.feature_dim < problem.num_classes - 1 or problem.geometry == "sphere"


def _gnc_arrays(problem: Problem, params, n: int) -> dict:
    """gnc1, gnc2_margin (exact QP), gnc2_tammes, gnc3 of each final point (host numpy), and
    the margin of the softmax code where it is known exactly (`theory.known_code_margin`)."""
    from ufm import metrics, theory

    W, H = np.asarray(params.W), np.asarray(params.H)
    found = [metrics.gnc_metrics(W[j], H[j], problem.labels) for j in range(n)]
    arrays = {f"extra/{k}": np.array([f[k] for f in found]) for k in found[0]}
    known = theory.known_code_margin(problem.num_classes, problem.feature_dim)
    arrays["extra/code_margin"] = np.full(n, np.nan if known is None else known)
    return arrays


def _apply_chunk(arrays, group, solver_name, indices, configs, rows, histories) -> None:
    """Rows and histories of a finished chunk from its arrays."""
    for j, i in enumerate(indices):
        history = {k.split("/", 1)[1]: (v if k == "history/iteration" else v[j])
                   for k, v in arrays.items() if k.startswith("history/")}
        histories[i] = history
        rows[i] = _row(i, group, configs[i], solver_name, STATUSES[int(arrays["status"][j])],
                       arrays["steps"][j], arrays["diverged_at"][j], arrays["f_star"][j],
                       arrays["is_zero"][j], history, float(arrays["seconds"][j]))
        for key, values in arrays.items():
            if key.startswith("extra/"):
                value = float(values[j])
                rows[i][key.split("/", 1)[1]] = None if np.isnan(value) else value


def _group_hypers(configs, indices) -> Hyper:
    return Hyper(*(np.array([getattr(configs[i].hyper, f) for i in indices]) for f in Hyper._fields))


def _plan(experiment, configs, groups, out) -> list[tuple[int, int]]:
    """(vmapped width, chunk) per group: the file's run.batch / run.chunk, or `batch_width`
    (confirmed by `_timed_trial` when the group is worth a trial) and `chunk_size`. Saved with
    the checkpoints, so a resumed run cuts its groups exactly as the first run did."""
    plan_path = None if out is None else out / CHECKPOINTS / "plan.json"
    if plan_path is not None and plan_path.is_file():
        return [tuple(p) if isinstance(p, list) else (p, p)
                for p in json.loads(plan_path.read_text())]
    plan = []
    for (problem, solver_name), indices in groups.items():
        if experiment.run["batch"]:
            width = min(experiment.run["batch"], len(indices))
        else:
            width = batch_width(problem, len(indices))
            # A trial costs two compilations: worth it only for long runs of batches whose
            # working set comes near the budget, where vmap can lose to one at a time.
            near_budget = width * config_bytes(problem) > CPU_BATCH_BYTES / 4
            if (width > 1 and near_budget and experiment.solver["steps"] >= 500
                    and not _accelerator(jax.local_devices()[0])):
                seeds = [configs[i].seed for i in indices]
                width = _timed_trial(problem, solver_name, experiment.solver,
                                     _group_hypers(configs, indices), seeds, width)
        if experiment.run["chunk"]:
            chunk = max(width, experiment.run["chunk"] // width * width)
        else:
            chunk = chunk_size(problem, len(indices), width)
        plan.append((width, min(chunk, -(-len(indices) // width) * width)))
    if plan_path is not None:
        plan_path.parent.mkdir(exist_ok=True)
        plan_path.write_text(json.dumps(plan))
    return plan


def run(config_or_path=None, out=None, *, overrides=(), progress=None) -> GridResult:
    """Run an experiment (a path to a TOML file, an `Experiment`, or None for the built-in
    default) and, when `out` is given, write the results folder there.

    Every configuration is validated (and its Problem built) before anything compiles. With
    `out`, every finished group is checkpointed and appended to results.csv at once; running
    the same experiment into the same folder again resumes: finished groups are read back, not
    recomputed, and the final folder equals an uninterrupted run's (timings aside). A folder
    holding another configuration is refused (`ResultsFolderError`).

    Several processes (after `ufm.multihost.initialize()`): each runs its share of the chunks,
    in rounds of one chunk per process; every round's results are gathered to all processes and
    process 0 alone writes the folder. Landscape kinds run whole on every process.
    """
    experiment = _as_experiment(config_or_path, overrides)
    configs = _config.configurations(experiment)
    config_text = _config.dumps(experiment)
    out = None if out is None else Path(out)
    if out is not None and multihost.is_main():
        _claim_folder(out, config_text)
    if experiment.kind != "solve":
        t0 = time.perf_counter()
        rows, histories, arrays, n_pairs = _run_landscape(experiment, configs, progress)
        seconds = time.perf_counter() - t0
        result = GridResult(experiment, rows, histories, seconds)
        if out is not None and multihost.is_main():
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
    main = multihost.is_main()
    writer = out if main else None  # only process 0 writes
    # Every process must cut the grid the same way: process 0's plan (it may have timed trials).
    plan = [tuple(p) for p in multihost.broadcast_json(
        [list(p) for p in _plan(experiment, configs, groups, writer)] if main else None)]
    if writer is not None and (writer / io.RESULTS).is_file():
        (writer / io.RESULTS).unlink()  # rebuilt from the checkpoints below, in run order
    chunks = []  # (group index, chunk index, problem, solver, indices, chunk size, width)
    for g, (((problem, solver_name), indices), (width, size)) in enumerate(zip(groups.items(),
                                                                              plan)):
        for c, first in enumerate(range(0, len(indices), size)):
            chunks.append((g, c, problem, solver_name, indices[first:first + size], size, width))
    tags = [f"group-{g:05d}-chunk-{c:05d}" for g, c, *_ in chunks]
    # One bar over the whole grid (configuration-steps, ETA); solve_batch advances it.
    bar = progress_bar(progress if main else False,
                       sum(size for *_, size, _ in chunks) * solver["steps"],
                       f"{len(configs)} configurations")
    # Finished chunks (checkpoints of an interrupted run), as process 0 sees them.
    done = [k for k, (tag, chunk) in enumerate(zip(tags, chunks))
            if writer is not None and _load_chunk(writer, tag, chunk[4], rows, histories)]
    done = multihost.broadcast_json(done)
    if writer is not None:
        io.append_table(writer / io.RESULTS, [rows[i] for k in done for i in chunks[k][4]])
    todo = [k for k in range(len(chunks)) if k not in set(done)]
    n_proc, me = multihost.count(), multihost.index()
    if bar is not None:
        bar.update(sum(chunks[k][5] for k in done) * solver["steps"])
    for first in range(0, len(todo), n_proc):
        # One round: process p runs chunk todo[first + p]; then every process gets every result.
        round_chunks = todo[first:first + n_proc]
        mine = round_chunks[me] if me < len(round_chunks) else None
        blob = b""
        if mine is not None:
            g, c, problem, solver_name, indices, size, width = chunks[mine]
            if bar is not None:
                bar.set_description(f"group {g + 1}/{len(groups)} {problem.loss} {solver_name}")
            blob = multihost.pack_arrays(_run_chunk(configs, solver, problem, solver_name,
                                                    indices, size, width,
                                                    bar if n_proc == 1 else None))
        for k, got in zip(round_chunks, multihost.allgather_bytes(blob)):
            g, c, problem, solver_name, indices, size, width = chunks[k]
            _apply_chunk(multihost.unpack_arrays(got), g, solver_name, indices, configs, rows,
                         histories)
            if n_proc > 1 and bar is not None:
                bar.update(size * solver["steps"])
        if writer is not None:
            for k in round_chunks:  # checkpoint and append to results.csv as soon as done
                _save_chunk(writer, tags[k], chunks[k][4], rows, histories)
    resumed = len(done)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    result = GridResult(experiment, rows, histories, seconds)
    if writer is not None:
        result.out = io.write_results(
            out, config_text, rows, histories,
            io.manifest(seconds, experiment=experiment.name, configurations=len(configs),
                        processes=n_proc,
                        groups=len(groups), batch_widths=[w for w, _ in plan],
                        chunk_sizes=[c for _, c in plan], chunks=len(chunks),
                        chunks_resumed=resumed))
    return result
