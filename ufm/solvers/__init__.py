"""The solvers room: runs of the UFM, one or a batch in one compiled call.

`settings` (`SolverSettings`: every solver option, its default and its rule), `driver`
(`solve`, `solve_batch`, `make_run`, run state, the reference step, the run loop, the metric
records, the host loop), `fast_step` (the fast path's closed-form step), `kernels` (its
one-pass Pallas kernel), `lbfgs` (L-BFGS that vmaps), `batching` (mapping over
configurations, padding, sharding over devices, sizes from measured numbers, progress bars).
Imports the model and analysis rooms."""
import importlib

from ufm.solvers.driver import (
    SOLVERS,
    STATUS_MEANINGS,
    STATUSES,
    BatchResult,
    Result,
    RunOutput,
    default_tol,
    final_status,
    make_run,
    solve,
    solve_batch,
    stationarity,
)
from ufm.solvers.settings import SolverSettings

__all__ = [
    "SOLVERS",
    "STATUS_MEANINGS",
    "STATUSES",
    "BatchResult",
    "Result",
    "RunOutput",
    "SolverSettings",
    "default_tol",
    "final_status",
    "make_run",
    "solve",
    "solve_batch",
    "stationarity",
]

SUBMODULES = (
    "batching",
    "driver",
    "fast_step",
    "kernels",
    "lbfgs",
    "settings",
)


def __getattr__(name):  # submodules load on first use (PEP 562)
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES))
