"""ufm: a JAX simulator of the unconstrained feature model of neural collapse.

The core names are here (`Problem`, `Hyper`, `solve`, `nc_metrics`, `run`, `load_results`,
...); every module is an attribute too, imported on first use (`ufm.grid`, `ufm.landscape`,
`ufm.theory`, `ufm.nets`, ...), so `import ufm` stays fast. The layers and what each module owns:
docs/architecture.md.
"""
import importlib

from ufm.metrics import nc_metrics
from ufm.problem import Hyper, Params, Problem, init, objective
from ufm.solvers import BatchResult, Result, make_run, solve, solve_batch

__version__ = "0.1.0"

# Submodules loaded on first attribute access (PEP 562).
SUBMODULES = (
    "cli",
    "codes",
    "config",
    "deprecation",
    "experiment",
    "frames",
    "fused",
    "grid",
    "host_metrics",
    "kernels",
    "kind",
    "kinds",
    "landscape",
    "lbfgs",
    "losses",
    "manifolds",
    "metrics",
    "multihost",
    "nets",
    "oracle",
    "plots",
    "points",
    "problem",
    "results",
    "runner",
    "solvers",
    "streaming",
    "theory",
)


def __getattr__(name):
    if name in SUBMODULES:
        return importlib.import_module(f"ufm.{name}")
    if name == "run":
        from ufm.experiment import run

        return run
    if name == "load_results":
        from ufm.results import load_results

        return load_results
    raise AttributeError(f"module 'ufm' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES) | {"run", "load_results"})


__all__ = [
    "BatchResult", "Hyper", "Params", "Problem", "Result", "init", "load_results", "make_run",
    "nc_metrics", "objective", "run", "solve", "solve_batch",
]
