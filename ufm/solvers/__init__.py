"""The solvers room: runs of the UFM, one or a batch in one compiled call.

In the order they build on each other: `settings` (`SolverSettings`: every solver option, its
default and its rule), `statuses` (how a run ends, stationarity), `reference` (run state, the
optimizers, the reference step by autodiff), `fast_step` (the fast path's closed-form step) and
`kernels` (its one-pass Pallas kernel), `lbfgs` (L-BFGS that vmaps), `records` (the metrics of
the kept points, their own compiled program), `loop` (the scan over log points, `make_run`),
`batching` (mapping over configurations, padding, sharding over devices, sizes from measured
numbers, progress bars) and `driver` (the host loop, `solve`, `solve_batch`). Imports the
model and analysis rooms."""
from ufm import _lazy
from ufm.solvers.driver import BatchResult, Result, solve, solve_batch
from ufm.solvers.loop import RunOutput, make_run
from ufm.solvers.settings import SOLVERS, SolverSettings, default_tol
from ufm.solvers.statuses import STATUS_MEANINGS, STATUSES, final_status, stationarity

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
    "loop",
    "records",
    "reference",
    "settings",
    "statuses",
)

# Submodules load on first use.
__getattr__, __dir__ = _lazy.submodules(__name__, SUBMODULES, set(globals()))
