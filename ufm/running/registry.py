"""The registry of experiment kinds: a kind is a value (`Kind`), registered here by name.

A kind (`ufm.running.kind.Kind`) is what an experiment file's `kind = "..."` names: its schema (the
config engine's sections, `ufm.running.config`), its checks, its units of work and how to run one,
its
summary table and its figures. `ufm.running.experiment` runs any kind the same way (one results
folder,
checkpoints per unit, resume, several processes); the CLI only parses arguments and dispatches.

Adding a kind: write its module (defining `KINDS = {name: Kind(...)}`) and add one line to
KIND_MODULES. Modules are imported on first use, so a UFM grid never imports flax.
"""
from __future__ import annotations

import importlib

from ufm.running.config import ConfigError
from ufm.running.kind import Kind

# kind name -> the module that defines it
KIND_MODULES = {
    "grid": "ufm.running.kinds.grid",
    "benign": "ufm.running.kinds.landscape",
    "origin_phase": "ufm.running.kinds.landscape",
    "saddle_escape": "ufm.running.kinds.landscape",
    "net": "ufm.running.kinds.net",
    "transfer": "ufm.running.kinds.transfer",
}
DEFAULT_KIND = "grid"
# Older names still read: kind = "solve" was the grid's name before kinds were values.
ALIASES = {"solve": "grid"}


def canonical(name: str) -> str:
    """A kind's registered name (an alias resolved); ConfigError naming the known kinds."""
    name = ALIASES.get(name, name)
    if not isinstance(name, str) or name not in KIND_MODULES:
        raise ConfigError(f"kind={name!r} is not allowed: one of {list(KIND_MODULES)}")
    return name


def get(name: str) -> Kind:
    """The registered kind (its module imported on first use)."""
    name = canonical(name)
    return importlib.import_module(KIND_MODULES[name]).KINDS[name]
