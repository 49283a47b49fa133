"""The landscape experiments (docs/science.md, section 5): critical points built for them
(closed forms from `ufm.analysis.theory`, numerically found ones of rank r by a solver run),
perturbed, run from with `solve_batch` and probed (`ufm.analysis.landscape.probe`); each returns
the rows of its results table. They live in the running room because they call solvers."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ufm.analysis import theory
from ufm.analysis.landscape.charts import (
    as_float64,
    coordinates,
)
from ufm.analysis.landscape.probes import (
    probe,
    probe_batch,
    spectrum,
)
from ufm.model import manifolds
from ufm.model.problem import Hyper, Params, Problem, init_traced, objective, x64_scope
from ufm.solvers import solve, solve_batch
from ufm.solvers.settings import SolverSettings


def rank_r_critical_point(problem: Problem, hyper: Hyper, rank: int, *, key: jax.Array | int = 0,
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


#
# Each experiment takes one (Problem, Hyper) and returns (rows, arrays): rows for results.csv,
# arrays (spectra, trajectories) for the results folder. `ufm.running.kinds.grid` runs them over a
# grid.


def constructed_saddles(problem: Problem, hyper: Hyper,
                        ranks: Sequence[int] | None = None) -> list[tuple[str, Params]]:
    """The critical points `ufm.analysis.theory` builds for this problem that are candidate saddles:
    the origin (weight decay), the rank-r points for r < min(K-1, d) (closed form for balanced
    MSE, solved and zero-padded otherwise; r >= 2 on the sphere, where r = 1 is discrete) and
    the fully collapsed point (sphere)."""
    K, d = problem.num_classes, problem.feature_dim
    points = []
    if problem.geometry == "wd":
        points.append(("origin", theory.origin(problem, hyper)))
    else:
        points.append(("collapsed", theory.sphere_collapsed_point(problem)))
    lowest = 1 if problem.geometry == "wd" else 2
    if ranks is None:
        ranks = range(lowest, min(K - 1, d))
    closed_mse = (problem.loss == "mse" and problem.geometry == "wd" and problem.balanced
                  and float(hyper.tau) == 1.0 and (not problem.bias or float(hyper.lam_b) == 0))
    for r in ranks:
        if not lowest <= r < min(K - 1, d):
            continue
        if closed_mse:
            try:
                points.append((f"rank {r}", theory.mse_saddle(problem, hyper, r)))
            except ValueError:  # every critical point is the origin in the collapsed regime
                continue
        else:
            points.append((f"rank {r}", rank_r_critical_point(problem, hyper, r)))
    return points


def perturb(problem: Problem, point: Params, epsilon: float, key: jax.Array | int) -> Params:
    """point + epsilon * (a random unit tangent direction of the trained variables), retracted
    onto the sphere in that geometry: a start at distance ~epsilon from `point`."""
    point = jax.tree.map(jnp.asarray, point)
    chart = coordinates(problem, point)
    direction = jax.random.normal(key, (chart.dim,), point.H.dtype)
    step = chart.embed(epsilon * direction / jnp.linalg.norm(direction))
    return manifolds.retract(problem, jax.tree.map(jnp.add, point, step))


def _stack(points):
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x, np.float64) for x in xs]), *points)


def _probe_row(prefix, probe_result, i=None):
    pick = (lambda v: v[i]) if i is not None else (lambda v: v)
    fields = ("verdict", "grad_norm", "eig_min", "eig_max", "n_negative", "n_zero",
              "n_symmetry", "eig_min_off_symmetry", "certified_global")
    return {f"{prefix}{f}": _python(pick(getattr(probe_result, f))) for f in fields}


def _python(value):
    if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
        return value.item()
    return value


# The landscape experiments' default solver: L-BFGS reaches round-off from every start.
LANDSCAPE_SOLVER = SolverSettings(name="lbfgs", steps=3000)


def benign_landscape(problem: Problem, hyper: Hyper, settings: SolverSettings = LANDSCAPE_SOLVER, *,
                     random_starts: int, saddle_starts: int, epsilon: float,
                     ranks: Sequence[int] | None = None, reach_rtol: float = 1e-6, seed: int = 0,
                     method: str = "auto", progress: bool | None = None) -> tuple:
    """Many random starts plus starts at distance epsilon from every constructed saddle, all
    solved in ONE vmapped batch, every end point probed (vmapped). A start "reached" the optimum
    when |f - f*| <= reach_rtol |f*| + 1e-10 (f* the closed form, or the best value found when
    none is known). Returns rows (one per start) and the Hessian spectra at each saddle and at
    the best end point."""
    saddles = constructed_saddles(problem, hyper, ranks)
    keys = jax.random.split(jax.random.key(seed), 2 + len(saddles))
    with x64_scope(problem.dtype):
        randoms = [init_traced(problem, k) for k in jax.random.split(keys[0], random_starts)]
    starts, kinds = list(randoms), ["random"] * random_starts
    for (name, point), key in zip(saddles, keys[2:]):
        with x64_scope("float64"):
            near = [
                perturb(problem, point, epsilon, k) for k in jax.random.split(key, saddle_starts)
            ]
        starts += near
        kinds += [f"near {name}"] * saddle_starts
    seeds = list(range(seed, seed + len(starts)))
    batch = solve_batch(problem, hyper, seeds, settings, start=_stack(starts), progress=progress,
                        desc=f"benign {problem.loss} {problem.geometry}")
    probes = probe_batch(problem, hyper, batch.params, method=method, seed=seed)
    final = batch.history["objective"][:, -1]
    opt = theory.optimum(problem, hyper)
    f_ref = opt.objective if opt is not None else float(np.nanmin(final))
    # An absolute floor of 1e-10 covers f* = 0 (e.g. MSE on the sphere with d >= K).
    reached = np.abs(final - f_ref) <= reach_rtol * abs(f_ref) + 1e-10
    rows = []
    for i, kind in enumerate(kinds):
        rows.append({"start": kind, "start_index": i, "status": batch.status[i],
                     "steps": int(batch.steps[i]), "objective": float(final[i]),
                     "f_ref": f_ref, "f_ref_is_closed_form": opt is not None,
                     "gap": float(final[i] - f_ref),
                     "reached": bool(reached[i]), "nc1": float(batch.history["nc1"][i, -1]),
                     "nc2_W": float(batch.history["nc2_W"][i, -1]),
                     **_probe_row("end_", probes, i)})
    spectra = {}
    for name, point in saddles:
        spectra[name] = spectrum(problem, hyper, point, method)
    best = int(np.nanargmin(final))
    spectra["optimum" if opt is not None else "best end point"] = spectrum(
        problem, hyper, jax.tree.map(lambda x: x[best], batch.params), method)
    saddle_probes = {name: probe(problem, hyper, point, method=method) for name, point in saddles}
    return rows, spectra, saddle_probes


def origin_phase(problem: Problem, hyper: Hyper, settings: SolverSettings = LANDSCAPE_SOLVER, *,
                 ratios: Sequence[float], seeds: Sequence[int], method: str = "auto",
                 progress: bool | None = None) -> list[dict]:
    """Sweep sqrt(lam_W lam_H) = ratio * sigma across the origin's threshold sigma =
    c_L/(K sqrt(n)) (keeping lam_W/lam_H as in `hyper`): the smallest eigenvalue at the origin,
    measured and by formula, its verdict, and where random starts end (zero or collapse)."""
    sigma = theory.origin_singular_value(problem, hyper)
    if sigma is None:
        raise ValueError(f"origin_phase needs a balanced weight-decay problem with tau = 1 and a "
                         f"loss with a known c_L (ce, ls, focal, mse); got loss={problem.loss!r}")
    skew = math.sqrt(float(hyper.lam_W) / float(hyper.lam_H))
    configs = []
    for ratio in ratios:
        t = ratio * sigma
        configs.append(hyper._replace(lam_W=t * skew, lam_H=t / skew))
    origins = [theory.origin(problem, h) for h in configs]
    stacked_hypers = Hyper(*(np.array([getattr(h, f) for h in configs], np.float64)
                             for f in Hyper._fields))
    # At the origin the bias block decouples from (W, H); probing with b held at its optimum
    # leaves the (W, H) block whose eigenvalues the formula gives (and drops the exact zero of
    # the softmax shift z -> z + c 1 when lam_b = 0).
    probes = probe_batch(dataclasses.replace(problem, bias=False), stacked_hypers,
                         _stack(origins), method=method)
    runs_hypers = Hyper(*(np.repeat(np.asarray(v), len(seeds)) for v in stacked_hypers))
    run_seeds = [s for _ in configs for s in seeds]
    batch = solve_batch(problem, runs_hypers, run_seeds, settings, progress=progress,
                        desc="origin phase")
    rows = []
    for i, (ratio, h) in enumerate(zip(ratios, configs)):
        formula = theory.origin_eig_min(problem, h)
        for j, s in enumerate(seeds):
            k = i * len(seeds) + j
            opt = batch.optimum[k]
            rows.append(
                {
                    "ratio": float(ratio),
                    "swept_lam_W": float(h.lam_W),
                    "swept_lam_H": float(h.lam_H),
                    "sqrt_lam": float(math.sqrt(h.lam_W * h.lam_H)),
                    "sigma": sigma,
                    "seed": s,
                    "origin_eig_min": float(probes.eig_min[i]),
                    "origin_eig_min_formula": formula,
                    "origin_verdict": probes.verdict[i],
                    "status": batch.status[k],
                    "objective": float(batch.history["objective"][k, -1]),
                    "f_star": None if opt is None else opt.objective,
                    "optimum_is_zero": None if opt is None else opt.is_zero,
                    "w_norm": float(np.linalg.norm(np.asarray(batch.params.W[k]))),
                }
            )
    return rows


def saddle_escape(problem: Problem, hyper: Hyper, settings: SolverSettings, *, saddle: str,
                  epsilons: Sequence[float], seeds: Sequence[int], drop: float = 1e-2,
                  progress: bool | None = None) -> tuple:
    """Gradient descent started at distance epsilon from a strict saddle ("origin", "rank r" or
    "collapsed"): the plateau length, i.e. the first logged iteration with
    f < f(saddle) - drop |f(saddle)|, against epsilon and against the measured negative
    eigenvalue. Near a saddle with eigenvalue -mu, gradient descent multiplies the escaping
    component by (1 + lr mu) per step: linear escape predicts a plateau of
    ln(drop |f(saddle)| / epsilon) / ln(1 + lr mu) steps, up to an offset for the nonlinear
    phase; its slope against ln(1/epsilon) is the check. The run is plain gradient descent to
    the end of its budget whatever `settings` name (tol 0); its steps, log points and fast-path
    options are the settings'."""
    points = dict(constructed_saddles(problem, hyper, ranks=[int(saddle.split()[-1])]
                                      if saddle.startswith("rank") else []))
    if saddle not in points:
        raise ValueError(f"saddle={saddle!r} is not available for this problem: one of "
                         f"{sorted(points)}")
    point = points[saddle]
    at_saddle = probe(problem, hyper, point)
    with x64_scope("float64"):
        f_saddle = float(objective(problem, hyper.astype(jnp.float64), as_float64(point)))
    keys = jax.random.split(jax.random.key(0), len(seeds))
    starts, meta = [], []
    for eps in epsilons:
        for s, key in zip(seeds, keys):
            with x64_scope("float64"):
                starts.append(perturb(problem, point, float(eps), key))
            meta.append((float(eps), s))
    batch = solve_batch(problem, hyper, [s for _, s in meta], settings._replace(name="gd", tol=0.0),
                        start=_stack(starts), progress=progress, desc=f"escape {saddle}")
    below = batch.history["objective"] < f_saddle - drop * abs(f_saddle)
    iteration = batch.history["iteration"]
    rows = []
    for k, (eps, s) in enumerate(meta):
        escaped = bool(below[k].any())
        rows.append(
            {
                "saddle": saddle,
                "epsilon": eps,
                "seed": s,
                "f_saddle": f_saddle,
                "saddle_eig_min": float(at_saddle.eig_min),
                "saddle_verdict": at_saddle.verdict,
                "escaped": escaped,
                "plateau": int(iteration[np.argmax(below[k])]) if escaped else None,
                "predicted_plateau": float(
                    math.log(drop * abs(f_saddle) / eps)
                    / math.log1p(float(hyper.lr) * abs(at_saddle.eig_min))
                )
                if at_saddle.eig_min < 0
                else None,
                "objective": float(batch.history["objective"][k, -1]),
                "status": batch.status[k],
            }
        )
    return rows, batch.history
