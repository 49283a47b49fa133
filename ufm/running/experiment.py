"""Experiments of every kind: read, check, run into a results folder, summarize, draw.

    import ufm
    result = ufm.run("experiments/optimizers.toml", out="runs/optimizers")
    result = ufm.run(None, out="runs/default", overrides=["solver.steps=2000"])

An experiment file names its kind (`kind = "grid"`, the default, or "benign", "origin_phase",
"saddle_escape", "net"; `ufm.running.registry`). Every kind runs the same way: its work is cut into
units
(a chunk of a grid, a configuration of a landscape or network experiment); each finished unit
is checkpointed in the results folder at once and results.csv grows with it; running the same
experiment into the same folder again resumes (finished units are read back, a damaged
checkpoint is named in a warning and its unit recomputed); a folder holding another
configuration is refused. Several processes (`ufm.running.multihost.initialize()` first): each runs
its
share of the units, in rounds of one unit per process, every round's results are gathered to
all, and process 0 alone writes.
"""
from __future__ import annotations

import dataclasses
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

from ufm.errors import InputError
from ufm.running import config, multihost, results, shipped
from ufm.running import registry as kinds
from ufm.running.config import ConfigError, Experiment
from ufm.solvers import batching

DEFAULT_PATH = Path(__file__).with_name("default.toml")


@dataclasses.dataclass
class RunResult:
    """What a run produced: the experiment, the table's rows and the matching histories (dicts
    of 1-D arrays; empty for kinds without trajectories), wall seconds, the folder, and how many
    units were read back from checkpoints instead of run. A shard of a job array (`shard`:
    (I, N)) that did not assemble the table has `out` None, its own units' count in `mine` and
    the experiment's units not finished anywhere yet in `pending`."""

    experiment: Experiment
    rows: list
    histories: list
    seconds: float
    out: Path | None = None
    units: int = 0
    resumed: int = 0
    shard: tuple[int, int] | None = None
    mine: int = 0
    pending: int = 0


def resolve(raw: dict) -> Experiment:
    """Check a parsed experiment file of any kind and fill in every default."""
    if not isinstance(raw, dict):
        raise ConfigError(f"an experiment is a table of keys, got {raw!r}")
    name = kinds.canonical(raw.get("kind", kinds.DEFAULT_KIND))
    kind = kinds.get(name)
    experiment = config.resolve(raw, kind.schema, name)
    kind.check(experiment)
    return experiment


def load(path: str | Path) -> Experiment:
    """Read and check an experiment file of any kind."""
    return resolve(config.read_toml(path))


def load_default() -> Experiment:
    """The built-in experiment `ufm run` runs without a file."""
    return load(DEFAULT_PATH)


def apply_overrides(experiment: Experiment, overrides: Sequence[str]) -> Experiment:
    """`--set key=value` overrides ("section.key" or a key unique to one section; values in
    TOML syntax, bare words as strings), checked again."""
    schema = kinds.get(experiment.kind).schema
    return resolve(config.override(experiment.to_dict(), schema, list(overrides)))


def dumps(experiment: Experiment) -> str:
    """The experiment as TOML, every key written out: the results folder's config.toml."""
    kind = kinds.get(experiment.kind)
    return config.dumps(experiment, kind.schema, kind.notes(experiment))


def as_experiment(path_or_experiment: str | Path | Experiment | None = None,
                  overrides: Sequence[str] = (), quick: bool = False) -> Experiment:
    """An Experiment from a path, an Experiment, or None (the built-in default); `quick`
    merges its kind's quick settings (`Kind.quick`) in before the overrides."""
    if isinstance(path_or_experiment, Experiment):
        experiment = path_or_experiment
    elif path_or_experiment is None:
        experiment = load_default()
    else:
        experiment = load(shipped_path(path_or_experiment))
    if quick:
        experiment = quick_version(experiment)
    return apply_overrides(experiment, overrides) if overrides else experiment


def shipped_path(path_or_name: str | Path) -> Path:
    """A path as given, or, where no such file exists and it is a bare name ("closed_forms"),
    the shipped experiment file of that name (`ufm.running.shipped`; `ufm list`)."""
    path = Path(path_or_name)
    if path.exists() or not shipped.looks_like_name(path_or_name):
        return path
    try:
        found = shipped.find(str(path_or_name))
    except InputError as err:
        raise ConfigError(str(err)) from None
    if found.kind == "script":
        raise ConfigError(f"{found.name!r} is a shipped script, not an experiment file: run it "
                          f"with `ufm run {found.name}` or `python3 {found.path}`")
    return found.path


def quick_version(experiment: Experiment) -> Experiment:
    """The experiment with its kind's quick settings (`Kind.quick`: few steps, one seed, ...)
    merged in (keys its schema lacks left out), then the file's own [quick.<section>] tables
    (a large grid's smaller axes); checked again."""
    kind = kinds.get(experiment.kind)
    raw = experiment.to_dict()
    for settings in (kind.quick, experiment.quick):
        for section, values in settings.items():
            if section in kind.schema.sections:
                raw.setdefault(section, {}).update(
                    {k: v for k, v in values.items() if k in kind.schema.sections[section]})
    return resolve(raw)


def describe(experiment: Experiment) -> str:
    """What a run will do, in a few words ("12 runs")."""
    return kinds.get(experiment.kind).describe(experiment)


def run(path_or_experiment: str | Path | Experiment | None = None, out: str | Path | None = None, *,
        overrides: Sequence[str] = (), progress: bool | None = None,
        shard: tuple[int, int] | None = None) -> RunResult:
    """Run an experiment of any kind (a path to a TOML file, an `Experiment`, or None for the
    built-in default) and, with `out`, write its results folder there (see the module
    docstring: checkpoints, resume, refusal of another configuration's folder, several
    processes). Every configuration is checked before anything compiles.

    `shard=(I, N)`: only shard I of N of the units (those whose index is I mod N), into
    `out`'s shard folder (`results.ShardFolder`), for a job array of independent processes
    sharing `out`; the shard that finds every unit finished assembles the table in `out`, and
    so does any later run of the experiment into `out` (with or without a shard)."""
    experiment = as_experiment(path_or_experiment, overrides)
    kind = kinds.get(experiment.kind)
    if shard is not None:
        return _run_shard(experiment, kind, out, shard, progress)
    main = multihost.is_main()
    folder = None
    config_text = dumps(experiment)
    digest = results.config_digest(config_text)
    if out is not None and main:
        folder = results.ResultsFolder(out, config_text, _checker(experiment.kind))
        try:
            folder.open()
        except results.DifferentConfiguration as err:
            try:
                _extend(folder, experiment, err)
            except BaseException:
                folder.close()
                raise
        try:
            folder.import_shards()  # units a job array's shards finished (`_run_shard`)
        except BaseException:
            folder.close()
            raise
    try:
        return _run(experiment, kind, folder, digest, progress)
    finally:
        if folder is not None:
            folder.close()


def _run_shard(experiment: Experiment, kind, out, shard: tuple[int, int], progress) -> RunResult:
    """`run` for shard I of N (see `run`): its own units into its own folder, then the table
    when every unit of the experiment has finished somewhere."""
    index, count = shard
    if out is None:
        raise ConfigError("a shard needs a results folder shared by the shards (out / --out)")
    if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
        raise ConfigError(f"shard={shard!r} is not allowed: (I, N) with integers 0 <= I < N")
    if multihost.count() > 1:
        raise ConfigError("a shard is one independent process: not with several processes "
                          "(--distributed); a job array's tasks each run one shard")
    config_text = dumps(experiment)
    digest = results.config_digest(config_text)
    folder = results.ShardFolder(out, config_text, index, count, _checker(experiment.kind))
    folder.open()
    t0 = time.perf_counter()
    try:
        work = kind.units(experiment, folder)
        mine = [k for k in range(len(work)) if k % count == index]
        bar = batching.progress_bar(progress, sum(work[k].work for k in mine),
                                    f"{experiment.name}: shard {index}/{count}")
        resumed = 0
        for k in mine:
            unit = work[k]
            if folder.load_unit(unit.tag, unit.rows or None) is not None:
                resumed += 1
            else:
                before = bar.n if bar is not None else 0
                result = kind.run_unit(experiment, unit, bar, folder.scratch(unit.tag))
                folder.save_unit(unit.tag, results.pack_unit(unit.tag, result, digest))
                if bar is not None:
                    bar.update(before + unit.work - bar.n)
                continue
            if bar is not None:
                bar.update(unit.work)
        if bar is not None:
            bar.close()
    finally:
        folder.close()
    pending = sum(not folder.landed(unit.tag) for unit in work)
    seconds = time.perf_counter() - t0
    if pending == 0:
        try:  # the last shard in: the table, as any later run into `out` would make it
            assembled = run(experiment, out, progress=False)
            return dataclasses.replace(assembled, shard=shard, mine=len(mine),
                                       seconds=seconds + assembled.seconds)
        except results.FolderBusy:  # another shard is assembling it
            pass
    return RunResult(experiment, [], [], seconds, None, len(work), resumed, shard, len(mine),
                     pending)


def _checker(kind_name: str):
    """`ResultsFolder`'s test of a config.toml: a configuration of some kind, and not one cut
    short at a line end (such a file still parses, its missing keys filled with defaults: it is
    a strict beginning of the file its configuration writes)."""
    def check(text: str) -> None:
        try:
            full = dumps(resolve(tomllib.loads(text)))
        except ConfigError as err:
            raise ValueError(str(err)) from None
        if full != text and full.startswith(text):
            raise ValueError(f"it stops after line {text.count(chr(10))} of "
                             f"{full.count(chr(10))}: cut short")
    return check


def _run(experiment: Experiment, kind, folder, digest: str, progress) -> RunResult:
    """`run` in a claimed folder (or none)."""
    main = multihost.is_main()
    t0 = time.perf_counter()
    work = kind.units(experiment, folder)
    found = {}  # unit index -> (blob, result) read back from the folder (process 0)
    if folder is not None:
        for k, unit in enumerate(work):
            loaded = folder.load_unit(unit.tag, unit.rows or None)
            if loaded is not None:
                found[k] = loaded
    done = set(multihost.broadcast_json(sorted(found)))
    finished: dict = dict(found)
    if folder is not None and found:
        folder.write_rows(_assemble(work, finished)[0])
    bar = batching.progress_bar(progress if main else False, sum(u.work for u in work),
                              f"{experiment.name}: {describe(experiment)}")
    if bar is not None:
        bar.update(sum(work[k].work for k in done))
    todo = [k for k in range(len(work)) if k not in done]
    n_proc, me = multihost.count(), multihost.index()
    for first in range(0, len(todo), n_proc):
        # One round: process p runs unit todo[first + p]; then every process has every result.
        round_units = todo[first:first + n_proc]
        blob = b""
        if me < len(round_units):
            unit = work[round_units[me]]
            # a unit's own progress (a network's training state) is kept by process 0 alone
            scratch = None if folder is None else folder.scratch(unit.tag)
            before = bar.n if bar is not None else 0
            result = kind.run_unit(experiment, unit, bar if n_proc == 1 else None, scratch)
            blob = results.pack_unit(unit.tag, result, digest)
            if bar is not None and n_proc == 1:
                bar.update(before + unit.work - bar.n)
        for k, got in zip(round_units, multihost.allgather_bytes(blob)):
            # The result as the checkpoint holds it: a resumed run reads the same rows back.
            finished[k] = results.unpack_unit(got)[1]
            if folder is not None:
                folder.save_unit(work[k].tag, got)
            if bar is not None and n_proc > 1:
                bar.update(work[k].work)
        if folder is not None:
            folder.write_rows(_assemble(work, finished)[0])
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    rows, histories, arrays = _assemble(work, finished) if main else ([], [], {})
    result = RunResult(experiment, rows, histories, seconds, None, len(work), len(done))
    if folder is not None:
        result.out = results.write_results(
            folder.path, folder.config_text, rows, histories,
            results.manifest(seconds, experiment=experiment.name, kind=experiment.kind,
                             processes=n_proc, units=len(work), units_resumed=len(done),
                             **kind.manifest(experiment, work)), arrays)
    return result


def _extend(folder, experiment: Experiment, refusal) -> None:
    """Adopt a folder holding another configuration when this experiment extends it (its kind
    carries the finished results over); otherwise raise `refusal`, or the kind's reason."""
    kind = kinds.get(experiment.kind)
    try:
        old = resolve(tomllib.loads(refusal.old_text))
    except (ConfigError, tomllib.TOMLDecodeError):
        raise refusal from None
    if kind.extend is None or old.kind != experiment.kind:
        raise refusal
    try:
        stale = kind.extend(old, experiment, folder)
    except results.ResultsFolderError as err:
        if not folder.damage:
            raise
        raise results.ResultsFolderError(f"{folder.path}: {folder.damage}held results of a "
                                         f"different configuration: {err}") from None
    folder.adopt()  # from here on the folder is this experiment's
    for path in stale:
        Path(path).unlink(missing_ok=True)


def _assemble(work, finished: dict) -> tuple[list, list, dict]:
    """Rows, histories and arrays of the finished units in unit order; rows whose unit knows
    their indices are put in that order, the others numbered in unit order."""
    rows, histories, arrays = [], [], {}
    for k in sorted(finished):
        result = finished[k]
        rows += [dict(r) for r in result.rows]
        histories += result.histories
        for name, content in result.arrays.items():
            arrays.setdefault(name, {}).update(content)
    if all(work[k].rows for k in finished):
        order = sorted(range(len(rows)), key=lambda i: rows[i]["row"])
        rows = [rows[i] for i in order]
        if len(histories) == len(order):
            histories = [histories[i] for i in order]
    else:
        for i, row in enumerate(rows):
            row["row"] = i
    return rows, histories, arrays


def kind_of(directory: str | Path) -> str:
    """The kind of a results folder (from its config.toml)."""
    path = Path(directory) / results.CONFIG
    try:
        return kinds.canonical(tomllib.loads(path.read_text()).get("kind", kinds.DEFAULT_KIND))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise results.ResultsFolderError(f"{directory}: cannot read {results.CONFIG} "
                                         f"({err})") from None


def summary(directory: str | Path) -> str:
    """The summary table of a results folder, as `ufm run` and `ufm show` print it."""
    table = results.read_table(Path(directory) / results.RESULTS)
    return kinds.get(kind_of(directory)).summary(table)


def figures(directory: str | Path, metrics: Sequence[str] | None = None, x: str | None = None,
            y: str | None = None) -> list[Path]:
    """Draw the figures of a results folder into it; returns the files written."""
    directory = Path(directory)
    table = results.read_table(directory / results.RESULTS)
    kind = kind_of(directory)
    if kind != "grid" and (metrics or x or y):
        raise results.ResultsFolderError(
            f"--metric, --x and --y choose among a grid's figures; {directory} holds a {kind!r} "
            "experiment, whose figures are fixed (run `ufm plot DIR` alone)")
    return kinds.get(kind).figures(directory, table, metrics, x, y)
