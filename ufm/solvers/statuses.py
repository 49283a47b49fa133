"""How a run ends: the statuses, what each means, and the stationarity a run's tolerance is
compared with (at the loss's own scale; docs/science.md, section 7)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ufm.model.problem import (
    Hyper,
    Problem,
)

# Appended only: checkpoints store a status by its index.
STATUSES = ("running", "converged", "max_steps", "diverged", "plateau")
RUNNING, CONVERGED, MAX_STEPS, DIVERGED, PLATEAU = range(5)
# What each final status means (the summary tables print the lines of those that appear).
STATUS_MEANINGS = {
    "converged": "stationary to tol at the loss's own scale (`ufm.solvers.stationarity`), or "
                 "within tol of the closed-form f* (relative) when the step budget ran out",
    "max_steps": "the step budget ran out before the run was stationary",
    "plateau": "the step budget ran out with the gradient norm under tol, but not at the "
               "loss's own scale: a plateau (at small tau, anneal tau or use L-BFGS; "
               "docs/science.md, section 7)",
    "diverged": "the iterate turned non-finite; frozen at its last finite point",
}
# A run that ends on a plateau: gradient norm <= tol, stationarity > PLATEAU_FACTOR tol.
PLATEAU_FACTOR = 10.0


def stationarity(problem: Problem, hyper: Hyper, value: ArrayLike,
                 grad_norm: ArrayLike) -> jax.Array:
    """The number a run's tolerance is compared with: stationarity at the loss's own scale.

    On the weight-decay UFM it is the gradient norm: the penalties give the objective its
    scale. Without penalties on W and H (the sphere, the norm balls) the loss's gradient
    vanishes like exp(-margin / tau) on its way to the optimum, so an absolute test says
    "converged" on plateaus far from it. There it is the gradient norm of tau log f,

        tau ||grad f|| / f,

    the gradient of a smooth maximum of minus the logit margins at temperature tau (the
    objective the softmax-code search minimizes, `ufm.analysis.codes`): scale-free in tau and f (f
    > 0
    for every loss), zero exactly at the critical points of f."""
    if problem.geometry == "wd":
        return grad_norm
    return grad_norm * hyper.tau / jnp.abs(value)


def final_status(status: ArrayLike, grad_norm: ArrayLike, stat: ArrayLike, rel_gap: ArrayLike,
                 tol: float) -> np.ndarray:
    """The status of a run whose steps have ended (numpy or jax arrays): a run still RUNNING
    when its budget ran out is CONVERGED if its objective is within tol of the closed-form f*
    (relative; rel_gap NaN where none is known), PLATEAU if its gradient norm is under tol
    while its stationarity is more than PLATEAU_FACTOR tol, and MAX_STEPS otherwise."""
    xp = jnp if isinstance(status, jax.Array) else np
    near_optimum = xp.abs(rel_gap) <= tol  # False for NaN
    plateau = (grad_norm <= tol) & (stat > PLATEAU_FACTOR * tol)
    ended = xp.where(near_optimum, CONVERGED, xp.where(plateau, PLATEAU, MAX_STEPS))
    return xp.where(status == RUNNING, ended, status)
