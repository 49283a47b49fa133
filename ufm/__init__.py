"""ufm: a JAX simulator of the unconstrained feature model of neural collapse."""
from ufm import losses, manifolds, metrics, theory
from ufm.metrics import nc_metrics
from ufm.problem import Hyper, Params, Problem, init, objective
from ufm.solvers import BatchResult, Result, make_run, solve, solve_batch

__version__ = "0.1.0"

__all__ = [
    "BatchResult", "Hyper", "Params", "Problem", "Result", "init", "losses", "make_run",
    "manifolds", "metrics", "nc_metrics", "objective", "solve", "solve_batch", "theory",
]
