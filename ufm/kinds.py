"""The registry of experiment kinds: a kind is a value (`Kind`), registered here by name.

A kind is what an experiment file's `kind = "..."` names: its schema (the config engine's
sections, `ufm.config`), its checks, its units of work and how to run one, its summary table
and its figures. `ufm.experiment` runs any kind the same way (one results folder, checkpoints
per unit, resume, several processes); the CLI only parses arguments and dispatches.

Adding a kind: write its module (defining `KINDS = {name: Kind(...)}`) and add one line to
KIND_MODULES. Modules are imported on first use, so a UFM grid never imports flax.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, NamedTuple

from ufm.config import ConfigError, Schema

# kind name -> the module that defines it
KIND_MODULES = {
    "grid": "ufm.grid",
    "benign": "ufm.landscape_kinds",
    "origin_phase": "ufm.landscape_kinds",
    "saddle_escape": "ufm.landscape_kinds",
    "net": "ufm.nets.experiment",
}
DEFAULT_KIND = "grid"
# Older names still read: kind = "solve" was the grid's name before kinds were values.
ALIASES = {"solve": "grid"}


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

    schema      the config engine's sections (`ufm.config.Schema`)
    check       (experiment) -> None: checks of values in combination (raise ConfigError)
    units       (experiment, folder or None) -> [Unit]: the plan of work (may read / write a
                plan in the folder so a resumed run cuts the work the same way; every process
                must get the same plan)
    run_unit    (experiment, unit, bar, scratch folder or None) -> ufm.results.UnitResult
    summary     (table: dict of columns) -> str, the text `ufm run` / `ufm show` print
    figures     (directory, table, metrics, x, y) -> [Path] written
    describe    (experiment) -> str, e.g. "12 runs"
    manifest    (experiment, units) -> dict of extra manifest entries
    notes       section -> a comment written under it in config.toml (keys that do not apply)
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


def canonical(name) -> str:
    """A kind's registered name (an alias resolved); ConfigError naming the known kinds."""
    name = ALIASES.get(name, name)
    if not isinstance(name, str) or name not in KIND_MODULES:
        raise ConfigError(f"kind={name!r} is not allowed: one of {list(KIND_MODULES)}")
    return name


def get(name: str) -> Kind:
    """The registered kind (its module imported on first use)."""
    name = canonical(name)
    return importlib.import_module(KIND_MODULES[name]).KINDS[name]
