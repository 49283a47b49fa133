"""Curvature of the UFM objective: Hessian-vector products, dense Hessians, Lanczos, and
`probe`, which classifies a point as a strict saddle, a local or a certified global minimum
(docs/science.md, section 5).

Coordinates. The Hessian acts on the trained variables only: W (unless the classifier is a fixed
ETF), H, and b (when the problem has a bias). On the sphere it is the Riemannian Hessian of the
oblique manifold written in an orthonormal tangent basis (a Householder basis of w_k^perp and of
h_i^perp), with the curvature (Weingarten) term of Absil, Mahony & Trumpf (2013):

    Hess f(X)[V] = P_X(ehess f(X)[V]) - V ddiag(X^T egrad f(X)).

Probes run in float64 and symmetrize, whatever the problem's dtype.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ufm import manifolds, theory
from ufm.oracle import CONVEX_LOSSES  # one list: the losses whose UFM has a convex lift
from ufm.points import rank_r_critical_point
from ufm.problem import (
    BALL_GEOMETRIES,
    Hyper,
    Params,
    Problem,
    init_traced,
    logit_gradient,
    objective,
    streams,
    x64_scope,
)
from ufm.solvers import CHECK_EVERY, solve_batch

VERDICTS = ("not critical", "strict saddle", "second-order stationary (local min)",
            "global min (certified)")
NOT_CRITICAL, STRICT_SADDLE, LOCAL_MIN, GLOBAL_MIN = range(4)
DENSE_MAX_DIM = 1500  # dense eigh below this many coordinates, Lanczos above


# ----------------------------------------------------------------------------- coordinates


def _householder_bases(X):
    """Orthonormal bases of x^perp for each row x of X (m, d): returns (m, d, d-1).

    The reflector P = I - 2 u u^T / (u^T u) with u = x + sign(x_1) e_1 maps e_1 to -sign(x_1) x,
    so its columns 2..d span x^perp (the stable choice of Householder's sign)."""
    d = X.shape[1]
    sign = jnp.where(X[:, 0] >= 0, 1.0, -1.0)
    u = X.at[:, 0].add(sign)
    P = jnp.eye(d, dtype=X.dtype)[None] - 2.0 * u[:, :, None] * u[:, None, :] / jnp.sum(
        u * u, axis=1)[:, None, None]
    return P[:, :, 1:]


class Coordinates(NamedTuple):
    """A linear chart of the tangent space at a point: `embed` maps coordinates (dim,) to a
    tangent Params, `extract` maps a Params (ambient) to coordinates; extract(embed(x)) = x."""

    dim: int
    embed: Callable
    extract: Callable


class _Block(NamedTuple):
    """One variable's chart: dim coordinates, embed (dim,) -> array, extract array -> (dim,)."""

    dim: int
    embed: Callable
    extract: Callable


def _flat_block(X) -> _Block:
    return _Block(X.size, lambda x: x.reshape(X.shape), lambda p: p.ravel())


def _sphere_block(X) -> _Block:
    """The tangent space of the sphere through X (all of X one vector, any radius): an implicit
    Householder basis of X^perp (the reflector of `_householder_bases`, never formed)."""
    x = X.ravel() / jnp.linalg.norm(X)
    u = x.at[0].add(jnp.where(x[0] >= 0, 1.0, -1.0))
    reflect = lambda v: v - 2.0 * u * (jnp.dot(u, v) / jnp.dot(u, u))
    embed = lambda c: reflect(jnp.concatenate([jnp.zeros((1,), c.dtype), c])).reshape(X.shape)
    return _Block(X.size - 1, embed, lambda p: reflect(p.ravel())[1:])


def _rows_block(X) -> _Block:
    """The tangent spaces of the spheres through the rows of X (m, d), each row its own
    sphere (any radius): Householder bases of x^perp, (m, d, d-1)."""
    m, d = X.shape
    basis = _householder_bases(X / jnp.linalg.norm(X, axis=1, keepdims=True))
    embed = lambda c: jnp.einsum("kij,kj->ki", basis, c.reshape(m, d - 1))
    return _Block(m * (d - 1), embed, lambda p: jnp.einsum("kij,ki->kj", basis, p).ravel())


def _transposed(block: _Block) -> _Block:
    return _Block(block.dim, lambda c: block.embed(c).T, lambda p: block.extract(p.T))


def coordinates(problem: Problem, params: Params, active=None) -> Coordinates:
    """Coordinates of the trained variables: flat (W, H, b) for weight decay; a tangent basis of
    the oblique manifold on the sphere; on the norm balls, a tangent basis of the boundary
    sphere for a block whose constraint is `active` ((W, H) booleans from
    `active_constraints`, decided on the host), flat coordinates for one inside its ball.
    Non-trained blocks embed as zeros."""
    if problem.depth > 1:
        # The symmetry counts, certificates and constructed saddles here are the UFM's.
        raise ValueError(f"depth={problem.depth} is not allowed for the Hessian probes: 1 "
                         "(they check the UFM's landscape facts, docs/science.md, section 5)")
    learn_W, learn_b = problem.classifier == "learned", problem.bias
    if problem.geometry == "sphere":
        block_W, block_H = _rows_block(params.W), _transposed(_rows_block(params.H.T))
    elif problem.geometry in BALL_GEOMETRIES:
        active_W, active_H = active
        block_W = _sphere_block(params.W) if active_W else _flat_block(params.W)
        if not active_H:
            block_H = _flat_block(params.H)
        elif problem.geometry == "norm_ball":
            block_H = _sphere_block(params.H)
        else:
            block_H = _transposed(_rows_block(params.H.T))
    else:
        block_W, block_H = _flat_block(params.W), _flat_block(params.H)
    sizes = [block_W.dim if learn_W else 0, block_H.dim, params.b.size if learn_b else 0]
    zero_W, zero_b = jnp.zeros_like(params.W), jnp.zeros_like(params.b)

    def embed(x):
        xW, xH, xb = jnp.split(x, np.cumsum(sizes)[:2])
        return Params(block_W.embed(xW) if learn_W else zero_W, block_H.embed(xH),
                      xb if learn_b else zero_b)

    def extract(p):
        parts = ([block_W.extract(p.W)] if learn_W else []) + [block_H.extract(p.H)]
        return jnp.concatenate(parts + ([p.b] if learn_b else []))

    return Coordinates(sum(sizes), embed, extract)


# ----------------------------------------------------------------------------- operators


def gradient(problem: Problem, hyper: Hyper, params: Params) -> Params:
    """Euclidean gradient of the objective (Riemannian on the sphere, the KKT residual on the
    norm balls)."""
    egrad = jax.grad(lambda p: objective(problem, hyper, p))(params)
    return manifolds.riemannian_grad(problem, params, egrad, hyper)


def hvp(problem: Problem, hyper: Hyper, params: Params, tangent: Params) -> Params:
    """Euclidean Hessian-vector product, forward-over-reverse: d/dt grad f(params + t tangent);
    reverse-over-reverse, grad <grad f, tangent>, where the logits are streamed over class
    blocks (`ufm.problem.streams`: a custom VJP, which forward mode cannot enter)."""
    grad_fn = jax.grad(lambda p: objective(problem, hyper, p))
    if streams(problem):
        return jax.grad(lambda p: sum(jnp.vdot(g, t) for g, t in zip(
            jax.tree.leaves(grad_fn(p)), jax.tree.leaves(tangent))))(params)
    return jax.jvp(grad_fn, (params,), (tangent,))[1]


def _on_sphere(X, egrad, ehess, V, axis):
    """Riemannian Hessian of the spheres through X (one sphere over `axis`: None all of X, 1 the
    rows, 0 the columns; any radius): P_X(ehess[V]) - V <X, egrad>/||X||^2 with
    P_X(U) = U - X <X, U>/||X||^2."""
    inner = lambda A, B: jnp.sum(A * B, axis=axis, keepdims=axis is not None)
    norm_sq = inner(X, X)
    term = ehess - V * (inner(X, egrad) / norm_sq)
    return term - X * (inner(X, term) / norm_sq)


def riemannian_hvp(problem: Problem, hyper: Hyper, params: Params, tangent: Params,
                   active=None) -> Params:
    """Riemannian Hessian-vector product (tangent in, tangent out): on the oblique manifold
    P_X(ehess[V]) - V ddiag(X^T egrad) for W (rows) and H (columns); on the norm balls the same
    on the boundary sphere of each `active` block (the Hessian of the Lagrangian on the
    tangent space of the active constraints), Euclidean inside; Euclidean for b."""
    egrad = jax.grad(lambda p: objective(problem, hyper, p))(params)
    ehess = hvp(problem, hyper, params, tangent)
    if problem.geometry == "sphere":
        axes_W, axes_H = 1, 0
    else:
        axes_W = None if active[0] else False
        axes_H = (None if problem.geometry == "norm_ball" else 0) if active[1] else False
    W_term = ehess.W if axes_W is False else _on_sphere(params.W, egrad.W, ehess.W, tangent.W,
                                                         axes_W)
    H_term = ehess.H if axes_H is False else _on_sphere(params.H, egrad.H, ehess.H, tangent.H,
                                                         axes_H)
    return Params(W_term, H_term, ehess.b)


def hessian_operator(
    problem: Problem, hyper: Hyper, params: Params, active=None
) -> tuple[Coordinates, Callable]:
    """(coordinates, matvec): the Hessian (Riemannian on the sphere and on the active norm
    balls' boundaries) as a map on coordinates. `active`: as in `coordinates`, computed from
    the point when omitted (outside jit)."""
    if problem.geometry in BALL_GEOMETRIES and active is None:
        active = constraint_activity(problem, hyper, params)
    chart = coordinates(problem, params, active)
    curved = problem.geometry == "sphere" or (active is not None and any(active))

    def matvec(x):
        tangent = chart.embed(x)
        if curved:
            return chart.extract(riemannian_hvp(problem, hyper, params, tangent, active))
        return chart.extract(hvp(problem, hyper, params, tangent))

    return chart, matvec


def constraint_activity(problem: Problem, hyper: Hyper, params: Params):
    """(W active, H active) on the host, for the charts of the norm balls (None for the other
    geometries). For "norm_ball_each" the features must be all on their spheres or all inside;
    a point with some of each is refused (the chart is one static shape)."""
    if problem.geometry not in BALL_GEOMETRIES:
        return None
    with x64_scope("float64"):
        active_W, active_H = manifolds.active_constraints(
            problem, hyper.astype(jnp.float64), _as64(params))
        active_W, active_H = bool(active_W), np.asarray(active_H)
    if active_H.all() != active_H.any():
        raise ValueError(f"params.H is not allowed with some features on their sphere and some "
                         f"inside ({int(active_H.sum())} of {active_H.size} on it): the probes "
                         "take all or none")
    return (active_W or problem.classifier != "learned", bool(active_H.all()))


def dense_hessian(problem: Problem, hyper: Hyper, params: Params, active=None) -> jax.Array:
    """The (Riemannian) Hessian in coordinates, (dim, dim), symmetrized; one HVP per column.
    `active`: as in `hessian_operator`."""
    chart, matvec = hessian_operator(problem, hyper, params, active)
    eye = jnp.eye(chart.dim, dtype=params.H.dtype)
    Hess = jax.vmap(matvec)(eye)
    return 0.5 * (Hess + Hess.T)


# ----------------------------------------------------------------------------- eigensolvers


def robust_eigh(A, vectors: bool = True):
    """jnp.linalg.eigh (eigvalsh when vectors=False) that survives LAPACK's failures on CPU.

    XLA reports a failed symmetric eigensolve as all-NaN output (jax-ml/jax#1628); we met it on
    well-conditioned float64 Hessians with clustered eigenvalues. A shift A + c I has the same
    eigenvectors and eigenvalues moved by exactly c, but takes another path through the QR
    iterations, so on NaN we retry with two shifts of about 1e-3 ||A||. A non-finite A (a
    diverged point) is never handed to LAPACK, which can hang on it; its eigenvalues are NaN."""
    finite = jnp.all(jnp.isfinite(A))
    A = jnp.where(finite, A, 0.0)
    eye = jnp.eye(A.shape[0], dtype=A.dtype)
    scale = jnp.linalg.norm(A) + jnp.finfo(A.dtype).tiny

    def solve(M):
        return jnp.linalg.eigh(M) if vectors else (jnp.linalg.eigvalsh(M), None)

    values, vecs = solve(A)
    if not vectors:
        vecs = jnp.zeros((), A.dtype)
    shifts = jnp.asarray([1.37e-3, -3.1e-3], A.dtype) * scale

    # A while_loop, not two unconditional retries: under vmap it iterates only while some
    # matrix of the batch still has NaN eigenvalues (usually never).
    def failed(state):
        attempt, values, _ = state
        return (attempt < 2) & jnp.any(jnp.isnan(values))

    def retry(state):
        attempt, _, _ = state
        shift = shifts[attempt]
        new_values, new_vecs = solve(A + shift * eye)
        return attempt + 1, new_values - shift, new_vecs if vectors else jnp.zeros((), A.dtype)

    _, values, vecs = jax.lax.while_loop(failed, retry, (0, values, vecs))
    values = jnp.where(finite, values, jnp.nan)
    return (values, vecs) if vectors else values


# ----------------------------------------------------------------------------- Lanczos


class LanczosResult(NamedTuple):
    """Ritz values (ascending), Ritz vectors (columns), residual bounds ||A y - theta y||, and
    the tridiagonal T (its leading j x j block is the Lanczos estimate after j steps)."""

    ritz_values: jax.Array  # (m,)
    ritz_vectors: jax.Array  # (n, m)
    residuals: jax.Array  # (m,)
    alphas: jax.Array  # (m,) diagonal of T
    betas: jax.Array  # (m,) off-diagonal of T (betas[-1] couples to the next, unused vector)


def lanczos(matvec: Callable, v0: jax.Array, num_iters: int, *, key=None) -> LanczosResult:
    """Lanczos with full reorthogonalization (classical Gram-Schmidt, twice) for a symmetric
    operator; jittable and vmappable (fixed shapes, `lax.fori_loop`).

    On breakdown (an invariant subspace found, beta ~ 0) it restarts with a random vector
    orthogonal to the basis so far; T then splits into blocks and the Ritz values of every block
    are eigenvalues. Converges at both ends of the spectrum (Paige 1972; Golub & Van Loan 10.1).
    The residual of Ritz pair j is |beta_m s_{m,j}|, exact in exact arithmetic.
    """
    n = v0.shape[0]
    m = min(num_iters, n)
    dtype = v0.dtype
    key = jax.random.key(0) if key is None else key
    Q = jnp.zeros((m + 1, n), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    eps = jnp.finfo(dtype).eps

    def orthogonalize(Q, w):
        w = w - Q.T @ (Q @ w)
        return w - Q.T @ (Q @ w)

    def body(j, carry):
        Q, alphas, betas, scale, key = carry
        w = matvec(Q[j])
        alpha = Q[j] @ w
        w = orthogonalize(Q, w)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(alpha) + beta)
        key, sub = jax.random.split(key)
        fresh = orthogonalize(Q, jax.random.normal(sub, (n,), dtype))
        fresh_norm = jnp.linalg.norm(fresh)
        fresh = jnp.where(fresh_norm > 0, fresh / jnp.where(fresh_norm > 0, fresh_norm, 1.0), 0.0)
        breakdown = beta <= 100 * n * eps * scale
        q_next = jnp.where(breakdown, fresh, w / jnp.where(breakdown, 1.0, beta))
        Q = Q.at[j + 1].set(q_next)
        return (
            Q,
            alphas.at[j].set(alpha),
            betas.at[j].set(jnp.where(breakdown, 0.0, beta)),
            scale,
            key,
        )

    init = (Q, jnp.zeros(m, dtype), jnp.zeros(m, dtype), jnp.zeros((), dtype), key)
    Q, alphas, betas, _, _ = jax.lax.fori_loop(0, m, body, init)
    T = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    theta, S = robust_eigh(T)
    return LanczosResult(theta, Q[:m].T @ S, jnp.abs(betas[-1] * S[-1, :]), alphas, betas)


class Extremes(NamedTuple):
    """The k smallest and k largest Hessian eigenvalues with residual bounds (0 when dense)."""

    smallest: np.ndarray  # (k,) ascending
    smallest_residuals: np.ndarray  # (k,)
    largest: np.ndarray  # (k,) descending
    largest_residuals: np.ndarray  # (k,)
    method: str


def extreme_eigenvalues(problem: Problem, hyper: Hyper, params: Params, k: int = 6, *,
                        method: str = "auto", num_iters: int | None = None, key=0) -> Extremes:
    """The k most negative and k most positive eigenvalues of the (Riemannian) Hessian, float64:
    dense eigh below DENSE_MAX_DIM coordinates, Lanczos (num_iters HVPs, default 200) above;
    `method` overrides. Lanczos residuals bound each Ritz value's distance to the spectrum."""
    method, num_iters, dim = _choose_method(problem, method, num_iters)
    k = min(k, dim)
    with x64_scope("float64"):
        point, hyper64 = _as64(params), hyper.astype(jnp.float64)
        if method == "dense":
            eigs = np.asarray(robust_eigh(dense_hessian(problem, hyper64, point), vectors=False))
            zeros = np.zeros(k)
            return Extremes(eigs[:k], zeros, eigs[::-1][:k], zeros, method)
        chart, matvec = hessian_operator(problem, hyper64, point)
        key = jax.random.key(key) if isinstance(key, int) else key
        v0 = jax.random.normal(key, (chart.dim,), jnp.float64)
        result = jax.jit(lambda v: lanczos(matvec, v, num_iters, key=key))(v0)
        theta, res = np.asarray(result.ritz_values), np.asarray(result.residuals)
    return Extremes(theta[:k], res[:k], theta[::-1][:k], res[::-1][:k], method)


# ----------------------------------------------------------------------------- probe


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


def symmetry_dimension(problem: Problem, hyper: Hyper, params: Params, rank_rtol=1e-6):
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


def _dim(problem: Problem, active=None) -> int:
    """Coordinates of the probes' chart (`coordinates`)."""
    K, d, N = problem.num_classes, problem.feature_dim, problem.num_samples
    k = d - 1 if problem.geometry == "sphere" else d
    dim_W, dim_H = K * k, N * k
    if problem.geometry in BALL_GEOMETRIES:
        dim_W -= bool(active[0])
        dim_H -= (1 if problem.geometry == "norm_ball" else N) * bool(active[1])
    return (dim_W if problem.classifier == "learned" else 0) + dim_H + (
        K if problem.bias else 0)


def _choose_method(problem, method, num_iters, active=None):
    dim = _dim(problem, active)
    if method == "auto":
        method = "dense" if dim <= DENSE_MAX_DIM else "lanczos"
    if method not in ("dense", "lanczos"):
        raise ValueError(f"method={method!r} is not allowed: 'auto', 'dense' or 'lanczos'")
    num_iters = min(dim, 200 if num_iters is None else num_iters)
    return method, num_iters, dim


@functools.lru_cache(maxsize=32)
def _compiled_probe(problem, method, num_iters, grad_rtol, eig_rtol, f_star, batched,
                    active=None):
    fn = functools.partial(_probe_arrays, problem, method=method, num_iters=num_iters,
                           grad_rtol=grad_rtol, eig_rtol=eig_rtol, f_star=f_star, active=active)
    return jax.jit(jax.vmap(fn) if batched else fn)


def _as64(tree):
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x), jnp.float64), tree)


def _closed_form_f_star(problem, hyper):
    if problem.geometry == "wd" or any(np.ndim(v) for v in hyper):
        return None
    opt = theory.optimum(problem, hyper)
    return None if opt is None else opt.objective


def probe(problem: Problem, hyper: Hyper, params: Params, *, method: str = "auto",
          num_iters: int | None = None, key=0, grad_rtol: float = 1e-5,
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
    method, num_iters, dim = _choose_method(problem, method, num_iters, active)
    with x64_scope("float64"):
        fn = _compiled_probe(problem, method, num_iters, grad_rtol, eig_rtol,
                             _closed_form_f_star(problem, hyper), False, active)
        key = jax.random.key(key) if isinstance(key, int) else key
        out = fn(hyper.astype(jnp.float64), _as64(params), key)
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
    method, num_iters, dim = _choose_method(problem, method, num_iters, active)
    f_star = None
    if problem.geometry != "wd":
        f_star = _closed_form_f_star(problem, Hyper(*(float(np.ravel(v)[0]) for v in hypers)))
        if f_star is not None and any(np.ndim(v) and len(set(np.ravel(v))) > 1 for v in hypers):
            f_star = None  # one closed form per compiled probe; mixed batches skip it
    with x64_scope("float64"):
        fn = _compiled_probe(problem, method, num_iters, grad_rtol, eig_rtol, f_star, True,
                             active)
        keys = jax.random.split(jax.random.key(seed), batch)
        out = fn(hypers.broadcast(batch, jnp.float64), _as64(params), keys)
        out = jax.tree.map(np.asarray, out)
    verdicts = [VERDICTS[int(v)] for v in out.pop("verdict")]
    return Probe(**out, verdict=verdicts, dim=dim, method=method)


# ----------------------------------------------------------------------------- experiments
#
# Each experiment takes one (Problem, Hyper) and returns (rows, arrays): rows for results.csv,
# arrays (spectra, trajectories) for the results folder. `ufm.grid` runs them over a grid.


def constructed_saddles(problem: Problem, hyper: Hyper, ranks=None) -> list[tuple[str, Params]]:
    """The critical points `ufm.theory` builds for this problem that are candidate saddles:
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


def perturb(problem: Problem, point: Params, epsilon: float, key) -> Params:
    """point + epsilon * (a random unit tangent direction of the trained variables), retracted
    onto the sphere in that geometry: a start at distance ~epsilon from `point`."""
    point = jax.tree.map(jnp.asarray, point)
    chart = coordinates(problem, point)
    direction = jax.random.normal(key, (chart.dim,), point.H.dtype)
    step = chart.embed(epsilon * direction / jnp.linalg.norm(direction))
    return manifolds.retract(problem, jax.tree.map(jnp.add, point, step))


def _stack(points):
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x, np.float64) for x in xs]), *points)


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
        point = _as64(point)
        hyper64 = hyper.astype(jnp.float64)
        if method == "dense" or (method == "auto" and _dim(problem, active) <= DENSE_MAX_DIM):
            return np.linalg.eigvalsh(np.asarray(dense_hessian(problem, hyper64, point, active)))
        chart, matvec = hessian_operator(problem, hyper64, point, active)
        v0 = jax.random.normal(jax.random.key(0), (chart.dim,), jnp.float64)
        return np.asarray(lanczos(matvec, v0, min(200, chart.dim)).ritz_values)


def _probe_row(prefix, probe_result, i=None):
    pick = (lambda v: v[i]) if i is not None else (lambda v: v)
    fields = ("verdict", "grad_norm", "eig_min", "eig_max", "n_negative", "n_zero",
              "n_symmetry", "eig_min_off_symmetry", "certified_global")
    return {f"{prefix}{f}": _python(pick(getattr(probe_result, f))) for f in fields}


def _python(value):
    if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
        return value.item()
    return value


def benign_landscape(problem: Problem, hyper: Hyper, *, random_starts: int, saddle_starts: int,
                     epsilon: float, ranks=None, solver: str = "lbfgs", steps: int = 3000,
                     log_every: int = 100, tol: float | None = None, reach_rtol: float = 1e-6,
                     seed: int = 0, method: str = "auto", progress=None, fast: bool = True,
                     check_every: int = CHECK_EVERY, kernel: str = "xla"):
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
    batch = solve_batch(problem, hyper, seeds, start=_stack(starts), steps=steps,
                        log_every=log_every, tol=tol, solver=solver, progress=progress,
                        desc=f"benign {problem.loss} {problem.geometry}", fast=fast,
                        check_every=check_every, kernel=kernel)
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
        spectra[name] = _spectrum(problem, hyper, point, method)
    best = int(np.nanargmin(final))
    spectra["optimum" if opt is not None else "best end point"] = _spectrum(
        problem, hyper, jax.tree.map(lambda x: x[best], batch.params), method)
    saddle_probes = {name: probe(problem, hyper, point, method=method) for name, point in saddles}
    return rows, spectra, saddle_probes


def origin_phase(problem: Problem, hyper: Hyper, *, ratios, seeds, solver="lbfgs", steps=3000,
                 log_every=100, tol=None, method="auto", progress=None, fast=True,
                 check_every=CHECK_EVERY, kernel="xla"):
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
    batch = solve_batch(problem, runs_hypers, run_seeds, steps=steps, log_every=log_every,
                        tol=tol, solver=solver, progress=progress, desc="origin phase",
                        fast=fast, check_every=check_every, kernel=kernel)
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


def saddle_escape(problem: Problem, hyper: Hyper, *, saddle: str, epsilons, seeds, steps,
                  log_every, drop: float = 1e-2, progress=None, fast=True,
                  check_every=CHECK_EVERY, kernel="xla"):
    """Gradient descent started at distance epsilon from a strict saddle ("origin", "rank r" or
    "collapsed"): the plateau length, i.e. the first logged iteration with
    f < f(saddle) - drop |f(saddle)|, against epsilon and against the measured negative
    eigenvalue. Near a saddle with eigenvalue -mu, gradient descent multiplies the escaping
    component by (1 + lr mu) per step: linear escape predicts a plateau of
    ln(drop |f(saddle)| / epsilon) / ln(1 + lr mu) steps, up to an offset for the nonlinear
    phase; its slope against ln(1/epsilon) is the check."""
    points = dict(constructed_saddles(problem, hyper, ranks=[int(saddle.split()[-1])]
                                      if saddle.startswith("rank") else []))
    if saddle not in points:
        raise ValueError(f"saddle={saddle!r} is not available for this problem: one of "
                         f"{sorted(points)}")
    point = points[saddle]
    at_saddle = probe(problem, hyper, point)
    with x64_scope("float64"):
        f_saddle = float(objective(problem, hyper.astype(jnp.float64), _as64(point)))
    keys = jax.random.split(jax.random.key(0), len(seeds))
    starts, meta = [], []
    for eps in epsilons:
        for s, key in zip(seeds, keys):
            with x64_scope("float64"):
                starts.append(perturb(problem, point, float(eps), key))
            meta.append((float(eps), s))
    batch = solve_batch(problem, hyper, [s for _, s in meta], start=_stack(starts), steps=steps,
                        log_every=log_every, tol=0.0, solver="gd", progress=progress,
                        desc=f"escape {saddle}", fast=fast, check_every=check_every,
                        kernel=kernel)
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
