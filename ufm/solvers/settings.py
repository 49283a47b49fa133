"""How a run is solved, as one typed value: `SolverSettings`.

Every solver option is a field here with its default and its rule (`RULES`: type, allowed
values, meaning); nothing else lists them. `solve`, `solve_batch` and `make_run` take a
`SolverSettings` (or its fields as keywords), the grid's `[solver]` section is generated from
it (`ufm.running.kinds.grid.SOLVER_SECTION`, as `[hyper]` is generated from `Hyper`), the kinds
and the landscape drivers pass it whole, and two results folders' shared settings are compared
as two values (`SolverSettings.shared`). Adding an option is a field and a rule here, and its
use in the run (`ufm.solvers.loop`, `driver`).

The fields split by what they change: `name`, `log_every` and the fast path (`fast`,
`check_every`, `kernel`) are static (one compilation each); `steps`, `tol`, `init_scale` and the
annealing schedule are traced values of the same program.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

from ufm.model.problem import BALL_GEOMETRIES, Problem
from ufm.solvers import fast_step, kernels

SOLVERS = ("gd", "momentum", "nesterov", "adam", "lbfgs")
# The solvers that take projected steps on the norm balls.
PROJECTED_SOLVERS = ("gd", "momentum", "nesterov", "adam")
KERNELS = kernels.KERNELS  # "pallas": plain GD's one-pass Pallas kernel
# Steps between convergence / divergence checks on the fast path (`loop.fast_block`).
CHECK_EVERY = 25
# Step counts are int32 inside the compiled run (the counter, max_steps, diverged_at).
STEP_LIMIT = 2**31 - 1
# Above 1e6 the squared norms of a start (d N entries of size init_scale^2) leave float32's
# range and every run dies in its first metrics (1e39: "SVD did not converge", on every rerun).
INIT_SCALE_LIMIT = 1e6


class Rule(NamedTuple):
    """What one field allows: `type` ("str", "int", "float", "bool"), a test of a value of that
    type and its words (or `choices`), whether None is allowed, and what the field means."""

    type: str
    allowed: str
    test: Callable[[Any], bool] | None = None
    choices: tuple = ()
    optional: bool = False
    meaning: str = ""


_STEPS = f"an integer from 1 to {STEP_LIMIT} (step counts are int32)"
RULES = {
    "name": Rule("str", f"one of {list(SOLVERS)}", choices=SOLVERS,
                 meaning="the solver (optax; L-BFGS with its zoom line search)"),
    "steps": Rule("int", _STEPS, lambda v: 1 <= v <= STEP_LIMIT,
                  meaning="the step budget"),
    "log_every": Rule("int", _STEPS, lambda v: 1 <= v <= STEP_LIMIT,
                      meaning="steps between logged points (every NC metric)"),
    "tol": Rule("float", "a number >= 0", lambda v: v >= 0, optional=True,
                meaning="stationarity at the loss's own scale that ends a run as converged "
                        "(None: 1e-10 in float64, 1e-6 in float32)"),
    "init_scale": Rule("float", "a number in (0, 1e6]",
                       lambda v: 0 < v <= INIT_SCALE_LIMIT,
                       meaning="the norm scale of a random start"),
    "fast": Rule("bool", "true or false",
                 meaning="the first-order solvers' fast path (closed-form gradients, checks "
                         "every check_every steps) where it applies"),
    "check_every": Rule("int", "an integer >= 1", lambda v: v >= 1,
                        meaning="the fast path's steps between convergence / divergence checks"),
    "kernel": Rule("str", f"one of {list(KERNELS)}", choices=KERNELS,
                   meaning="plain GD's steps through XLA or the one-pass Pallas kernel"),
    "anneal_from": Rule("float", "a temperature > 0 (omit: no annealing)", lambda v: v > 0,
                        optional=True,
                        meaning="continuation in tau: the starting temperature"),
    "anneal_fraction": Rule("float", "a number > 0 and <= 1", lambda v: 0 < v <= 1,
                            meaning="the share of the steps over which tau falls"),
}


class Anneal(NamedTuple):
    """Continuation in the temperature: the run starts at `tau_from` and lowers tau
    geometrically, one value per log interval, to Hyper.tau over its first `steps` steps; each
    change restarts the optimizer's state (an L-BFGS memory belongs to one objective) and
    lets a run that became stationary at the last value go on. tau_from <= tau: no annealing.
    Traced scalars: one compilation for every schedule."""

    tau_from: Any  # shape=(): the starting temperature (0: off)
    steps: Any  # shape=(), int32: steps over which tau falls to Hyper.tau


class FastPath(NamedTuple):
    """How the fast path runs (None where the reference path runs instead): the steps between
    convergence / divergence checks and whether plain steps go through the Pallas kernel
    (`ufm.solvers.kernels`, plain GD on weight decay; interpret mode off GPUs)."""

    check_every: int
    kernel: bool


def _has_type(value, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):
        return False
    if kind == "int":
        return isinstance(value, (int, np.integer))
    if kind == "float":
        return isinstance(value, (int, float, np.integer, np.floating)) and not math.isnan(value)
    return isinstance(value, str)


def check_value(field: str, value: Any, label: str | None = None) -> None:
    """ValueError naming the field, the value and what is allowed, unless `value` obeys the
    field's rule. `label` names the field in the message (default: the field)."""
    rule = RULES[field]
    if value is None and rule.optional:
        return
    ok = _has_type(value, rule.type)
    if ok and rule.choices:
        ok = value in rule.choices
    if ok and rule.test is not None:
        ok = bool(rule.test(value))
    if not ok:
        raise ValueError(f"{label or field}={value!r} is not allowed: {rule.allowed}")


def check_solver_geometry(problem: Problem, solver: str) -> None:
    """The norm balls take projected first-order steps only: L-BFGS's line search and curvature
    pairs assume an unconstrained space."""
    if problem.geometry in BALL_GEOMETRIES and solver not in PROJECTED_SOLVERS:
        raise ValueError(f"solver={solver!r} is not allowed with geometry={problem.geometry!r}: "
                         f"one of {list(PROJECTED_SOLVERS)} (projected steps)")


def default_tol(problem: Problem) -> float:
    """Gradient-norm tolerance that each dtype can reach: 1e-10 (float64), 1e-6 (float32)."""
    return 1e-10 if problem.dtype == "float64" else 1e-6


class SolverSettings(NamedTuple):
    """How a run is solved (`RULES` says what each field allows and means).

    name: the solver, one of SOLVERS. steps: the step budget. log_every: steps between logged
    points. tol: stationarity that ends a run as converged (None: `default_tol`). init_scale:
    the norm scale of a random start. fast, check_every, kernel: the first-order solvers' fast
    path, its steps between checks, and "xla" or plain GD's one-pass "pallas" kernel.
    anneal_from, anneal_fraction: continuation in tau from anneal_from over that share of the
    steps (None: none). Hashable and comparable: equal settings are one value.

    Example:
      >>> settings = ufm.SolverSettings(name="lbfgs", steps=500)
      >>> res = ufm.solve(prob, hyper, settings)            # or ufm.solve(prob, hyper, steps=500)
    """

    name: str = "gd"
    steps: int = 10_000
    log_every: int = 100
    tol: float | None = None
    init_scale: float = 1.0
    fast: bool = True
    check_every: int = CHECK_EVERY
    kernel: str = "xla"
    anneal_from: float | None = None
    anneal_fraction: float = 0.5

    @classmethod
    def of(cls, settings: SolverSettings | None = None, **options) -> SolverSettings:
        """`settings` (default: the defaults) with `options` replacing fields; `solver=` is
        accepted for `name` (the keyword of `solve`). An unknown option is a TypeError naming
        the fields."""
        base = cls() if settings is None else settings
        if not isinstance(base, cls):
            raise TypeError(f"settings must be a ufm.SolverSettings, got {type(base).__name__}")
        if "solver" in options:
            if "name" in options:
                raise TypeError("give the solver as solver= or name=, not both")
            options["name"] = options.pop("solver")
        unknown = sorted(set(options) - set(cls._fields))
        if unknown:
            raise TypeError(f"unknown solver option {unknown[0]!r}: the options are "
                            f"{list(cls._fields)} (`ufm.SolverSettings`)")
        return base._replace(**options)

    def checked(self, problem: Problem) -> SolverSettings:
        """These settings, checked (before anything compiles) against their rules and the
        problem, with `tol` resolved and integers as Python ints (static arguments hash)."""
        if not isinstance(problem, Problem):
            raise TypeError(f"problem must be a ufm.Problem, got {type(problem).__name__}")
        for field in self._fields:
            check_value(field, getattr(self, field), "solver" if field == "name" else None)
        check_solver_geometry(problem, self.name)
        tol = default_tol(problem) if self.tol is None else float(self.tol)
        return self._replace(steps=int(self.steps), log_every=int(self.log_every), tol=tol,
                             check_every=int(self.check_every), fast=bool(self.fast))

    @property
    def num_logs(self) -> int:
        """Log points after the start."""
        return math.ceil(self.steps / self.log_every)

    def anneal(self) -> Anneal | None:
        """The continuation schedule (tau falls over a share of the steps), or None."""
        if self.anneal_from is None:
            return None
        return Anneal(float(self.anneal_from),
                      max(1, int(round(self.anneal_fraction * self.steps))))

    def fast_path(self, problem: Problem) -> FastPath | None:
        """The fast path's settings where it applies (`fast_step.supports`), else None (the
        reference path)."""
        if not (self.fast and fast_step.supports(problem, self.name)):
            return None
        return FastPath(int(self.check_every),
                        self.kernel == "pallas" and kernels.supports(problem, self.name))

    def shared(self) -> SolverSettings:
        """What every configuration of a grid shares (all but the solver's name, a grid axis):
        a grid extends another's results only when these are equal."""
        return self._replace(name=None)
