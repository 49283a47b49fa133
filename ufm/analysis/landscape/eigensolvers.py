"""Eigensolvers for the Hessian: a symmetric eigensolve that survives LAPACK's failures,
Lanczos with full reorthogonalization, and the extreme eigenvalues of a Hessian operator."""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ufm.analysis.landscape.charts import (
    as_float64,
    choose_method,
)
from ufm.analysis.landscape.hessian import (
    dense_hessian,
    hessian_operator,
)
from ufm.model.problem import (
    Hyper,
    Params,
    Problem,
    x64_scope,
)


def robust_eigh(A: jax.Array,
                vectors: bool = True) -> jax.Array | tuple[jax.Array, jax.Array | None]:
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


def lanczos(matvec: Callable, v0: jax.Array, num_iters: int, *,
            key: jax.Array | int | None = None) -> LanczosResult:
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
                        method: str = "auto", num_iters: int | None = None,
                        key: jax.Array | int | None = 0) -> Extremes:
    """The k most negative and k most positive eigenvalues of the (Riemannian) Hessian, float64:
    dense eigh below DENSE_MAX_DIM coordinates, Lanczos (num_iters HVPs, default 200) above;
    `method` overrides. Lanczos residuals bound each Ritz value's distance to the spectrum."""
    method, num_iters, dim = choose_method(problem, method, num_iters)
    k = min(k, dim)
    with x64_scope("float64"):
        point, hyper64 = as_float64(params), hyper.astype(jnp.float64)
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
