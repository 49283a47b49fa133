"""A certified polish of spherical codes: from a search's end point to a KKT point of the
max-min problem, to round-off, with the certificate (active set, multipliers, residual).

The Tammes problem on K unit vectors w_i in R^d: maximize the minimum pairwise distance, i.e.
minimize s = max_{i<j} <w_i, w_j> (the distance is sqrt(2 - 2 s)). A point is a KKT point of
min s subject to <w_i, w_j> <= s and ||w_i||^2 = 1 when, with A the pairs at <w_i, w_j> = s,
there are multipliers mu_ij >= 0 on A summing to 1 and nu_i with

    sum_{j : ij in A} mu_ij w_j + 2 nu_i w_i = 0        for every i,

which is: 0 lies in the convex hull of the active pairs' Riemannian gradients (the gradient of
<w_i, w_j> projected to the tangent spaces of the spheres). `polish_tammes`:

1. descent on the max over the near-active pairs (those within `window` of the maximum): the
   min-norm point of the convex hull of their Riemannian gradients (Wolfe's algorithm,
   `gnc.min_norm_point`) is a common descent direction; a step along it, retracted by
   normalization, with a backtracking line search on the true maximum, the window narrowed as
   the max falls;
2. Newton on the KKT system of the active set found (the equalities <w_i, w_j> = s on A,
   ||w_i||^2 = 1, stationarity and sum mu = 1, unknowns W, s, mu, nu; least-norm steps, since
   rotations and rattlers leave it singular), a pair with a negative multiplier dropped and a
   pair that rises above s added, until the residual is at round-off;
3. the certificate: the residual of every KKT condition, the multipliers and their signs.

Host numpy, float64.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from jax.typing import ArrayLike

from ufm.analysis import gnc


class Certificate(NamedTuple):
    """A polished code and why it is a KKT point of the max-min problem: W (K, d) unit rows, the
    minimum pairwise distance, s the maximum inner product (distance^2 = 2 - 2 s), the active
    pairs (m, 2) with their multipliers mu (m,) (>= 0, summing to 1) and nu (K,), the KKT
    residual (the largest violation of stationarity, the active equalities, the unit norms,
    sum mu = 1, mu >= 0 and feasibility of the other pairs) and the next largest inner product
    of an inactive pair (its gap to s is how clearly the active set is identified)."""

    W: np.ndarray
    distance: float
    s: float
    active: np.ndarray
    mu: np.ndarray
    nu: np.ndarray
    kkt_residual: float
    inactive_max: float
    newton_steps: int


def _normalize(W):
    return W / np.linalg.norm(W, axis=1, keepdims=True)


def _pairs(K):
    i, j = np.triu_indices(K, 1)
    return np.stack([i, j], axis=1)


def _riemannian_gradients(W, pairs):
    """The Riemannian gradient of <w_i, w_j> at W for each pair, flattened (K d, m)."""
    K, d = W.shape
    G = np.zeros((len(pairs), K, d))
    for n, (i, j) in enumerate(pairs):
        G[n, i] = W[j] - (W[i] @ W[j]) * W[i]
        G[n, j] = W[i] - (W[i] @ W[j]) * W[j]
    return G.reshape(len(pairs), -1).T


def _descend(W, window, iters):
    """Steepest descent of max <w_i, w_j> over the pairs within `window` of it (step 1)."""
    K, _ = W.shape
    pairs = _pairs(K)
    for _ in range(iters):
        cos = np.einsum("pd,pd->p", W[pairs[:, 0]], W[pairs[:, 1]])
        top = cos.max()
        near = pairs[cos >= top - window]
        direction, _ = gnc.min_norm_point(_riemannian_gradients(W, near))
        norm = np.linalg.norm(direction)
        if norm < 1e-13:
            window /= 4
            if window < 1e-13:
                break
            continue
        step = direction.reshape(W.shape)
        t = window / norm  # a step of the window's size, halved until the max falls
        for _ in range(60):
            trial = _normalize(W - t * step)
            if np.einsum("pd,pd->p", trial[pairs[:, 0]], trial[pairs[:, 1]]).max() < top:
                W = trial
                break
            t /= 2
        else:  # no step of the window's size helps: look closer to the maximum
            window /= 4
            if window < 1e-13:
                break
    return W


def _kkt(W, s, mu, nu, active):
    """The KKT system's residual F (stationarity K d, active equalities m, norms K,
    sum mu - 1) and its Jacobian in (W, s, mu, nu)."""
    K, d = W.shape
    m = len(active)
    n = K * d + 1 + m + K
    F = np.zeros(K * d + m + K + 1)
    J = np.zeros((len(F), n))
    stat = 2 * nu[:, None] * W
    for a, (i, j) in enumerate(active):
        stat[i] += mu[a] * W[j]
        stat[j] += mu[a] * W[i]
    F[:K * d] = stat.ravel()
    eye = np.eye(d)
    for i in range(K):  # d stat_i / d w_i = 2 nu_i I ; d / d nu_i = 2 w_i
        J[i * d:(i + 1) * d, i * d:(i + 1) * d] += 2 * nu[i] * eye
        J[i * d:(i + 1) * d, K * d + 1 + m + i] = 2 * W[i]
    for a, (i, j) in enumerate(active):
        J[i * d:(i + 1) * d, j * d:(j + 1) * d] += mu[a] * eye
        J[j * d:(j + 1) * d, i * d:(i + 1) * d] += mu[a] * eye
        J[i * d:(i + 1) * d, K * d + 1 + a] = W[j]
        J[j * d:(j + 1) * d, K * d + 1 + a] = W[i]
        row = K * d + a  # <w_i, w_j> - s = 0
        F[row] = W[i] @ W[j] - s
        J[row, i * d:(i + 1) * d] = W[j]
        J[row, j * d:(j + 1) * d] = W[i]
        J[row, K * d] = -1.0
    for i in range(K):  # ||w_i||^2 - 1 = 0
        row = K * d + m + i
        F[row] = W[i] @ W[i] - 1.0
        J[row, i * d:(i + 1) * d] = 2 * W[i]
    F[-1] = mu.sum() - 1.0
    J[-1, K * d + 1:K * d + 1 + m] = 1.0
    return F, J


def _multipliers(W, active):
    """mu on the active pairs from the min-norm point of their Riemannian gradients, and the nu
    that make the stationarity exact in the normal directions."""
    _, weights = gnc.min_norm_point(_riemannian_gradients(W, active))
    nu = np.zeros(len(W))
    for a, (i, j) in enumerate(active):
        c = W[i] @ W[j]
        nu[i] -= weights[a] * c / 2
        nu[j] -= weights[a] * c / 2
    return weights, nu


def _residual(W, s, mu, nu, active, pairs):
    F, _ = _kkt(W, s, mu, nu, active)
    cos = np.einsum("pd,pd->p", W[pairs[:, 0]], W[pairs[:, 1]])
    return float(max(np.abs(F).max(), max(0.0, -mu.min(initial=0.0)),
                     max(0.0, cos.max() - s)))


def polish_tammes(W: ArrayLike, *, window: float = 1e-3, descent_iters: int = 2000,
                  newton_iters: int = 50, tol: float = 1e-12,
                  active_tol: float = 1e-9) -> Certificate:
    """A KKT point of the Tammes problem near W (K, d), certified (see the module docstring).
    `window`: how far below the maximum a pair counts as near-active in the descent;
    `active_tol`: the pairs within it of the maximum after the descent form the first active
    set. Raises ValueError when no KKT point to `tol` is reached."""
    W = _normalize(np.asarray(W, np.float64))
    K, d = W.shape
    if K < 2:
        raise ValueError(f"a code of K={K} points is not allowed: K >= 2")
    pairs = _pairs(K)
    W = _descend(W, window, descent_iters)
    cos = np.einsum("pd,pd->p", W[pairs[:, 0]], W[pairs[:, 1]])
    s = cos.max()
    active = pairs[cos >= s - active_tol]
    mu, nu = _multipliers(W, active)
    steps = 0
    best = None
    for _ in range(4 * newton_iters):
        for _ in range(newton_iters):
            F, J = _kkt(W, s, mu, nu, active)
            if np.abs(F).max() < tol / 10:
                break
            delta = np.linalg.lstsq(J, -F, rcond=1e-12)[0]
            W = W + delta[:K * d].reshape(K, d)
            s += delta[K * d]
            mu = mu + delta[K * d + 1:K * d + 1 + len(active)]
            nu = nu + delta[K * d + 1 + len(active):]
            steps += 1
        W = _normalize(W)
        cos = np.einsum("pd,pd->p", W[pairs[:, 0]], W[pairs[:, 1]])
        s = float(np.mean([W[i] @ W[j] for i, j in active]))
        in_active = np.zeros(len(pairs), bool)
        index = {(int(i), int(j)): n for n, (i, j) in enumerate(pairs)}
        for i, j in active:
            in_active[index[(int(i), int(j))]] = True
        rising = ~in_active & (cos > s + tol)
        if mu.min() < -tol and len(active) > 1:  # a pair that pulls the wrong way leaves
            keep = np.ones(len(active), bool)
            keep[np.argmin(mu)] = False
            active = active[keep]
            mu, nu = _multipliers(W, active)
            continue
        if rising.any():  # a pair that rose above s joins
            active = np.concatenate([active, pairs[rising]])
            mu, nu = _multipliers(W, active)
            continue
        residual = _residual(W, s, mu, nu, active, pairs)
        best = (W, s, mu, nu, active, residual)
        if residual <= tol:
            break
        mu, nu = _multipliers(W, active)  # refresh the dual from the primal and go on
    if best is None or best[5] > tol:
        got = "no active set" if best is None else f"{best[5]:.2e}"
        raise ValueError(f"no KKT point of the Tammes problem to tol={tol:g} near the given "
                         f"code (K={K}, d={d}; residual {got}): search more first")
    W, s, mu, nu, active, residual = best
    cos = np.einsum("pd,pd->p", W[pairs[:, 0]], W[pairs[:, 1]])
    in_active = np.isin(pairs[:, 0] * K + pairs[:, 1], active[:, 0] * K + active[:, 1])
    inactive = float(cos[~in_active].max()) if (~in_active).any() else -1.0
    return Certificate(W, float(np.sqrt(2 - 2 * s)), float(s), active, mu, nu, residual,
                       inactive, steps)
