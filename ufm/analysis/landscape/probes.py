"""`probe`: a point classified as not critical, a strict saddle, a second-order stationary
point or a certified global minimum (docs/science.md, section 5), from its gradient and the
extremes of its Hessian's spectrum off the symmetry directions. Probes run in float64 and
symmetrize, whatever the problem's dtype."""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ufm.analysis import theory
from ufm.analysis.landscape.charts import (
    DENSE_MAX_DIM,
    as_float64,
    chart_dim,
    choose_method,
)
from ufm.analysis.landscape.eigensolvers import (
    lanczos,
    robust_eigh,
)
from ufm.analysis.landscape.hessian import (
    constraint_activity,
    dense_hessian,
    gradient,
    hessian_operator,
)
from ufm.analysis.oracle import CONVEX_LOSSES  # one list: the losses whose UFM has a convex lift
from ufm.model.problem import (
    BALL_GEOMETRIES,
    Hyper,
    Params,
    Problem,
    logit_gradient,
    objective,
    x64_scope,
)

VERDICTS = ("not critical", "strict saddle", "second-order stationary (local min)",
            "global min (certified)")
NOT_CRITICAL, STRICT_SADDLE, LOCAL_MIN, GLOBAL_MIN = range(4)


class Probe(NamedTuple):
    """What `probe` finds at a point (fields gain a batch axis in `probe_batch`).

    grad_norm: (Riemannian) gradient norm.  eig_min, eig_max: extreme Hessian eigenvalues;
    eig_min_residual: their residual bound (0 on the dense path).  n_negative, n_zero,
    n_positive: eigenvalue counts below -zero_tol, within zero_tol, above (dense path; -1 with
    Lanczos, and -1 at a point that is not critical, where they would mean nothing).
    n_symmetry: zeros predicted by the orthogonal symmetry (and the extra MSE and
    bias-shift directions).  eig_min_off_symmetry: smallest eigenvalue once the n_symmetry
    eigenvalues nearest zero are set aside (dense path; NaN with Lanczos or off a critical
    point).  sigma_G: top singular
    value of G = dL/dZ.  certified_global: sigma_G <= sqrt(lam_W lam_H) at a critical point of a
    convex loss (or, on the sphere, f equal to the closed-form f*).  verdict: one of VERDICTS.
    zero_tol, scale: the thresholds used.  dim: number of coordinates.  method: dense|lanczos.
    """

    grad_norm: jax.Array
    eig_min: jax.Array
    eig_max: jax.Array
    eig_min_residual: jax.Array
    n_negative: jax.Array
    n_zero: jax.Array
    n_positive: jax.Array
    n_symmetry: jax.Array
    eig_min_off_symmetry: jax.Array
    sigma_G: jax.Array
    certified_global: jax.Array
    verdict: object  # str (list of str from probe_batch)
    zero_tol: jax.Array
    scale: jax.Array
    dim: int
    method: str


def symmetry_dimension(problem: Problem, hyper: Hyper, params: Params,
                       rank_rtol: float = 1e-6) -> int:
    """Exact zero eigenvalues forced by symmetry at a critical point (docs/science.md, section 5):
    r(2d-r-1)/2 from f(W Q^T, Q H, b) = f(W, H, b), r = rank of the span of the w_k and h_i;
    balanced MSE adds r(m-r), the Grassmannian of r-planes among the m equal singular
    directions of the targets (m = K without bias, as docs/science.md states; m = K-1 with a bias,
    whose targets are centred); an unpenalized bias adds 1 for softmax losses (z -> z + c 1)."""
    K, d = params.W.shape
    joint = jnp.concatenate([params.W.T, params.H], axis=1)  # (d, K+N)
    s = jnp.linalg.svd(joint, compute_uv=False)
    r = jnp.sum(s > rank_rtol * jnp.maximum(s[0], jnp.finfo(s.dtype).tiny)).astype(jnp.int32)
    r = jnp.where(s[0] > 0, r, 0)
    count = r * (2 * d - r - 1) // 2
    if problem.loss.startswith("mse") and problem.geometry == "wd" and problem.balanced:
        m = K - 1 if problem.bias else K
        count = count + r * jnp.maximum(m - r, 0)
    if problem.bias and problem.loss not in ("mse", "mse_rescaled"):
        count = count + (hyper.lam_b == 0).astype(jnp.int32)
    return count


def _certificate(problem: Problem, hyper: Hyper, params: Params, grad_norm, sigma_G, f_star):
    """certified_global: the convex-loss certificate sigma_1(G) <= sqrt(lam_W lam_H) (to 1e-9
    relative); on the sphere and the norm balls, f = f* (the closed form, where known).

    A point that is only nearly critical gets an allowance of grad_norm / max(||W||_2, ||H||_2)
    (a perturbation of G by delta moves the gradient by delta ||H||), used only while it is
    below 1e-3 sqrt(lam_W lam_H): near the origin the spread vanishes and the allowance would
    grow without bound, certifying any sigma_1(G) (the origin at small weight decay, a strict
    saddle, was "certified" that way). There the plain inequality decides."""
    if problem.geometry != "wd":
        if f_star is None:
            return jnp.asarray(False)
        value = objective(problem, hyper, params)
        return jnp.abs(value - f_star) <= 1e-8 * jnp.abs(f_star) + grad_norm
    if problem.loss not in CONVEX_LOSSES or problem.classifier != "learned":
        return jnp.asarray(False)
    bound = jnp.sqrt(hyper.lam_W * hyper.lam_H)
    spread = jnp.maximum(jnp.linalg.norm(params.W, 2), jnp.linalg.norm(params.H, 2))
    tiny = jnp.finfo(sigma_G.dtype).tiny
    allowance = grad_norm / jnp.maximum(spread, tiny)
    allowance = jnp.where(allowance <= 1e-3 * bound, allowance, 0.0)
    return (bound > 0) & (sigma_G <= bound * (1.0 + 1e-9) + allowance)


def _probe_arrays(problem, hyper, params, key, *, method, num_iters, grad_rtol, eig_rtol, f_star,
                  active=None):
    """Every numeric field of `Probe` (traceable; verdict as an int code)."""
    chart, matvec = hessian_operator(problem, hyper, params, active)
    grad_norm = jnp.linalg.norm(chart.extract(gradient(problem, hyper, params)))
    sigma_G = jnp.linalg.norm(logit_gradient(problem, hyper, params), 2)
    n_symmetry = symmetry_dimension(problem, hyper, params)
    if method == "dense":
        Hess = jax.vmap(matvec)(jnp.eye(chart.dim, dtype=params.H.dtype))
        eigs = robust_eigh(0.5 * (Hess + Hess.T), vectors=False)
        eig_min, eig_max, residual = eigs[0], eigs[-1], jnp.zeros((), eigs.dtype)
    else:
        v0 = jax.random.normal(key, (chart.dim,), params.H.dtype)
        result = lanczos(matvec, v0, num_iters, key=key)
        eig_min, eig_max = result.ritz_values[0], result.ritz_values[-1]
        residual = result.residuals[0]
    scale = jnp.maximum(
        jnp.maximum(jnp.abs(eig_min), jnp.abs(eig_max)), jnp.finfo(eig_min.dtype).tiny
    )
    # Zero eigenvalues of a point that is only nearly critical are off by about ||grad||.
    zero_tol = eig_rtol * scale + 10.0 * grad_norm
    if method == "dense":
        n_negative = jnp.sum(eigs < -zero_tol).astype(jnp.int32)
        n_zero = jnp.sum(jnp.abs(eigs) <= zero_tol).astype(jnp.int32)
        n_positive = jnp.sum(eigs > zero_tol).astype(jnp.int32)
        by_magnitude = jnp.sort(jnp.where(jnp.argsort(jnp.argsort(jnp.abs(eigs))) < n_symmetry,
                                          jnp.inf, eigs))
        off_symmetry = by_magnitude[0]
        negative = n_negative > 0
    else:
        n_negative = n_zero = n_positive = jnp.full((), -1, jnp.int32)
        off_symmetry = jnp.full((), jnp.nan, eig_min.dtype)
        # Lanczos certifies negativity only by a Ritz value whose residual bound is small.
        negative = (eig_min < -zero_tol) & (residual < 0.5 * jnp.abs(eig_min))
    certified = _certificate(problem, hyper, params, grad_norm, sigma_G, f_star)
    critical = grad_norm <= grad_rtol * scale
    # Counts of zero, negative and positive eigenvalues mean something only at a critical
    # point (elsewhere the zero band, widened by 10 ||grad||, swallows the spectrum): -1 and
    # NaN there, as on the Lanczos path.
    unknown = jnp.full((), -1, jnp.int32)
    n_negative, n_zero, n_positive = (jnp.where(critical, n, unknown)
                                      for n in (n_negative, n_zero, n_positive))
    off_symmetry = jnp.where(critical, off_symmetry, jnp.nan)
    verdict = jnp.where(~critical, NOT_CRITICAL,
                        jnp.where(negative, STRICT_SADDLE,
                                  jnp.where(certified, GLOBAL_MIN, LOCAL_MIN)))
    return dict(grad_norm=grad_norm, eig_min=eig_min, eig_max=eig_max, eig_min_residual=residual,
                n_negative=n_negative, n_zero=n_zero, n_positive=n_positive,
                n_symmetry=n_symmetry, eig_min_off_symmetry=off_symmetry, sigma_G=sigma_G,
                certified_global=certified & critical, verdict=verdict, zero_tol=zero_tol,
                scale=scale)


@functools.lru_cache(maxsize=32)
def _compiled_probe(problem, method, num_iters, grad_rtol, eig_rtol, f_star, batched,
                    active=None):
    fn = functools.partial(_probe_arrays, problem, method=method, num_iters=num_iters,
                           grad_rtol=grad_rtol, eig_rtol=eig_rtol, f_star=f_star, active=active)
    return jax.jit(jax.vmap(fn) if batched else fn)


def _closed_form_f_star(problem, hyper):
    if problem.geometry == "wd" or any(np.ndim(v) for v in hyper):
        return None
    opt = theory.optimum(problem, hyper)
    return None if opt is None else opt.objective


def probe(problem: Problem, hyper: Hyper, params: Params, *, method: str = "auto",
          num_iters: int | None = None, key: jax.Array | int = 0, grad_rtol: float = 1e-5,
          eig_rtol: float = 1e-8) -> Probe:
    """Second-order analysis of `params` (float64, symmetrized).

    Thresholds (relative to scale = max |eigenvalue|): the point is critical when
    ||grad|| <= grad_rtol * scale (a Newton step shorter than grad_rtol); an eigenvalue counts
    as zero within zero_tol = eig_rtol * scale + 10 ||grad||. With lam ~ 1e-4 and scale ~ 10
    this keeps symmetry zeros (~1e-15 in float64, ~1e-6 at a float32 optimum) apart from the
    smallest genuine eigenvalue min(lam_W, lam_H).

    method: "dense" (every eigenvalue; counts), "lanczos" (extremes, `num_iters` HVPs, default
    200) or "auto" (dense up to DENSE_MAX_DIM coordinates).

    On the norm balls the Hessian is the Riemannian one of the boundary spheres whose
    constraint is active at `params` (the second-order condition on the tangent space of the
    active constraints), the Euclidean one inside (`constraint_activity`).
    """
    active = constraint_activity(problem, hyper, params)
    method, num_iters, dim = choose_method(problem, method, num_iters, active)
    with x64_scope("float64"):
        fn = _compiled_probe(problem, method, num_iters, grad_rtol, eig_rtol,
                             _closed_form_f_star(problem, hyper), False, active)
        key = jax.random.key(key) if isinstance(key, int) else key
        out = fn(hyper.astype(jnp.float64), as_float64(params), key)
        out = jax.tree.map(np.asarray, out)
    return Probe(**{k: (VERDICTS[int(v)] if k == "verdict" else v[()]) for k, v in out.items()},
                 dim=dim, method=method)


def probe_batch(problem: Problem, hypers: Hyper, params: Params, *, method: str = "auto",
                num_iters: int | None = None, seed: int = 0, grad_rtol: float = 1e-5,
                eig_rtol: float = 1e-8) -> Probe:
    """`probe` vmapped over a batch of points (leaves with a leading axis B) and Hyper fields
    (scalars or (B,) arrays), in one compiled call. On the norm balls every point must have
    the same constraints active (one chart)."""
    batch = params.H.shape[0]
    active = None
    if problem.geometry in BALL_GEOMETRIES:
        each = [constraint_activity(problem, Hyper(*(np.ravel(v)[i if np.size(v) > 1 else 0]
                                                      for v in hypers)),
                                    jax.tree.map(lambda x: np.asarray(x)[i], params))
                for i in range(batch)]
        if len(set(each)) > 1:
            raise ValueError("params are not allowed with different constraints active "
                             f"across the batch ({sorted(set(each))}): probe them apart")
        active = each[0]
    method, num_iters, dim = choose_method(problem, method, num_iters, active)
    f_star = None
    if problem.geometry != "wd":
        f_star = _closed_form_f_star(problem, Hyper(*(float(np.ravel(v)[0]) for v in hypers)))
        if f_star is not None and any(np.ndim(v) and len(set(np.ravel(v))) > 1 for v in hypers):
            f_star = None  # one closed form per compiled probe; mixed batches skip it
    with x64_scope("float64"):
        fn = _compiled_probe(problem, method, num_iters, grad_rtol, eig_rtol, f_star, True,
                             active)
        keys = jax.random.split(jax.random.key(seed), batch)
        out = fn(hypers.broadcast(batch, jnp.float64), as_float64(params), keys)
        out = jax.tree.map(np.asarray, out)
    verdicts = [VERDICTS[int(v)] for v in out.pop("verdict")]
    return Probe(**out, verdict=verdicts, dim=dim, method=method)


def spectrum(problem: Problem, hyper: Hyper, params: Params, method: str = "auto") -> np.ndarray:
    """The Hessian's eigenvalues at `params` in float64 (numpy, ascending), as `probe` sees them
    (Riemannian on the sphere and on active norm-ball constraints): all of them with the dense
    Hessian ("dense"; "auto" up to DENSE_MAX_DIM coordinates), else the Ritz values of 200
    Lanczos steps (the extremes converge first)."""
    return _spectrum(problem, hyper, params, method)


def _spectrum(problem, hyper, point, method):
    """All eigenvalues (dense) or the Lanczos extremes of the Hessian at a point."""
    active = constraint_activity(problem, hyper, point)
    with x64_scope("float64"):
        point = as_float64(point)
        hyper64 = hyper.astype(jnp.float64)
        if method == "dense" or (method == "auto" and chart_dim(problem, active) <= DENSE_MAX_DIM):
            return np.linalg.eigvalsh(np.asarray(dense_hessian(problem, hyper64, point, active)))
        chart, matvec = hessian_operator(problem, hyper64, point, active)
        v0 = jax.random.normal(jax.random.key(0), (chart.dim,), jnp.float64)
        return np.asarray(lanczos(matvec, v0, min(200, chart.dim)).ritz_values)
