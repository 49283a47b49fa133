"""ufm: a JAX simulator of the unconstrained feature model of neural collapse.

The public names are here, one room of the package each (docs/architecture.md):

    ufm.model       the UFM: Problem, Hyper, Params, losses, geometry
    ufm.analysis    NC metrics, closed forms, the convex oracle, codes, the Hessian probe
    ufm.solvers     SolverSettings, solve, solve_batch, make_run
    ufm.nets        the flax (NNX) path: real networks measured the same way
    ufm.running     experiment files, results folders, kinds, tables and figures
    ufm.cli         the `ufm` command

Rooms load on first use, so `import ufm` stays light. Module names of release 0.1
(`ufm.theory`, `ufm.landscape`, `ufm.grid`, ...) still import for one release, with a
DeprecationWarning naming each name's new home (`ufm._moved`).
"""
import importlib
import importlib.metadata

from ufm import _cache, _moved
from ufm._cache import compilation_cache
from ufm.analysis.nc import nc_metrics
from ufm.errors import ConfigError, InputError
from ufm.model.problem import Hyper, Params, Problem, init, objective
from ufm.solvers import (
    BatchResult,
    Result,
    RunOutput,
    SolverSettings,
    make_run,
    solve,
    solve_batch,
)

try:  # the one version is pyproject.toml's, read from the installed metadata
    __version__ = importlib.metadata.version("ufm")
except importlib.metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, never installed
    __version__ = "0+unknown"

_moved.install()
_cache.enable()  # JAX's persistent compilation cache in the user's cache folder (ufm._cache)

ROOMS = (
    "analysis",
    "cli",
    "model",
    "nets",
    "running",
    "solvers",
)
# Loaded on first use: (module, name).
_LAZY_NAMES = {
    "run": ("ufm.running.experiment", "run"),
    "load_results": ("ufm.running.results", "load_results"),
}


def __getattr__(name):
    if name in ROOMS:
        return importlib.import_module(f"ufm.{name}")
    if name in _LAZY_NAMES:
        module, attribute = _LAZY_NAMES[name]
        return getattr(importlib.import_module(module), attribute)
    if f"ufm.{name}" in _moved.MOVED:  # a module of release 0.1
        return importlib.import_module(f"ufm.{name}")
    raise AttributeError(f"module 'ufm' has no attribute {name!r}")


def __dir__():
    return sorted(set(__all__) | set(ROOMS))


__all__ = [
    "BatchResult",
    "ConfigError",
    "Hyper",
    "InputError",
    "Params",
    "Problem",
    "Result",
    "RunOutput",
    "SolverSettings",
    "compilation_cache",
    "init",
    "load_results",
    "make_run",
    "nc_metrics",
    "objective",
    "run",
    "solve",
    "solve_batch",
]
