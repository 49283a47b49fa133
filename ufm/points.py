"""Critical points found numerically (a solver run), for the landscape probes: the closed-form
points are in `ufm.theory`."""
from __future__ import annotations

import dataclasses

import numpy as np

from ufm.problem import Hyper, Params, Problem
from ufm.solvers import solve


def rank_r_critical_point(problem: Problem, hyper: Hyper, rank: int, *, key=0,
                          steps: int = 5000) -> Params:
    """A critical point with rank W = r: solve the same UFM with feature dimension r (float64,
    L-BFGS, to a gradient norm of 1e-12), then pad W and H with zeros up to d. For r < K-1 it is
    a strict saddle of the full problem with (d-r)(K-1-r) negative eigenvalues."""
    if not 1 <= rank < problem.feature_dim:
        raise ValueError(f"rank={rank} is not allowed: an integer in [1, feature_dim)")
    small = dataclasses.replace(problem, feature_dim=rank, dtype="float64")
    res = solve(small, hyper, key=key, steps=steps, log_every=steps, tol=1e-12, solver="lbfgs")
    pad = problem.feature_dim - rank
    W = np.pad(np.asarray(res.params.W, np.float64), ((0, 0), (0, pad)))
    H = np.pad(np.asarray(res.params.H, np.float64), ((0, pad), (0, 0)))
    return Params(W, H, np.asarray(res.params.b, np.float64), None)
