"""What an experiment kind is: the `Kind` record of functions and the `Unit` of work it plans.
Kinds are registered by name in `ufm.running.registry` and run by `ufm.running.experiment`.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

from ufm.running.config import Schema


class Unit(NamedTuple):
    """One unit of work of an experiment: checkpointed when finished, never split. `tag` names
    its checkpoint; `rows` the table rows it produces (checked on resume); `work` its share of
    the progress bar; `spec` whatever the kind needs to run it."""

    tag: str
    rows: tuple
    work: int
    spec: Any


class Kind(NamedTuple):
    """An experiment kind.

    schema      the config engine's sections (`ufm.running.config.Schema`)
    check       (experiment) -> None: checks of values in combination (raise ConfigError)
    units       (experiment, folder or None) -> [Unit]: the plan of work (may read / write a
                plan in the folder so a resumed run cuts the work the same way; every process
                must get the same plan)
    run_unit    (experiment, unit, bar, scratch folder or None) -> ufm.running.results.UnitResult
    summary     (table: dict of columns) -> str, the text `ufm run` / `ufm show` print
    figures     (directory, table, metrics, x, y) -> [Path] written
    describe    (experiment) -> str, e.g. "12 runs"
    manifest    (experiment, units) -> dict of extra manifest entries
    notes       section -> a comment written under it in config.toml, or {key: comment}
                written beside those keys (keys that do not apply)
    extend      (old experiment, new experiment, folder) -> [Path]: carry the finished results
                of the folder's old experiment over to the new one that extends it (new seeds,
                new axis values) and return the old files to remove once the new
                configuration is the folder's; raise ResultsFolderError (saying what changed)
                when the new experiment does not extend the old. None: a folder of another
                configuration is refused.
    quick       {section: {key: value}}: the settings `ufm run FILE --quick` merges into any
                file of this kind (few steps, one seed, few starts, two epochs), before the
                file's own [quick.<section>] tables: a smoke run of every shipped experiment
                in minutes (CI's stage `.ci/experiments`).
    about       one paragraph: what an experiment of this kind does and what its table holds
                (the configuration reference, `ufm config KIND`)
    """

    name: str
    schema: Schema
    check: Callable
    units: Callable
    run_unit: Callable
    summary: Callable
    figures: Callable
    describe: Callable
    manifest: Callable = lambda experiment, units: {}
    notes: Callable = lambda experiment: {}
    extend: Callable | None = None
    quick: dict = {}
    about: str = ""
