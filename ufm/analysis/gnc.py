"""Generalized neural collapse, measured exactly on the host in float64 (after a run; not
jittable): the one-vs-rest margin of each class by its QP (the minimum-norm point of a convex
hull, Wolfe's method), the minimum pairwise distance of the classifiers, and the GNC metrics
(docs/science.md, section 3)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ufm.analysis.nc import nc1
from ufm.model.problem import x64_scope


def min_norm_point(P: np.ndarray, tol: float = 1e-12,
                   max_iter: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """The point of conv{columns of P} nearest the origin, exactly (Wolfe 1976, "Finding the
    nearest point in a polytope"): a finite active-set method, not projected gradient.
    Returns (x, weights) with x = P @ weights, weights >= 0 summing to 1.

    Works on the Gram matrix P^T P (columns are few, m <= a few hundred here): the major
    cycle's test <x, x> - <p_j, x> and the minor cycle's affine min-norm point (the KKT system
    [[Q^T Q, 1], [1^T, 0]]) never touch P again."""
    P = np.asarray(P, np.float64)
    m = P.shape[1]
    gram = P.T @ P
    sq = np.diag(gram)
    scale = max(1.0, float(np.max(sq)))
    active = [int(np.argmin(sq))]
    weights = np.zeros(m)
    weights[active[0]] = 1.0
    for _ in range(max_iter):
        gx = gram @ weights  # <p_j, x> for every j
        j = int(np.argmin(gx))
        if weights @ gx - gx[j] <= tol * scale or j in active:
            break
        active.append(j)
        while True:  # minor cycle: the affine min-norm point of the active set
            k = len(active)
            A = np.zeros((k + 1, k + 1))
            A[:k, :k] = gram[np.ix_(active, active)]
            A[:k, k] = A[k, :k] = 1.0
            rhs = np.zeros(k + 1)
            rhs[k] = 1.0
            try:
                alpha = np.linalg.solve(A, rhs)[:k]
            except np.linalg.LinAlgError:
                alpha = np.linalg.lstsq(A, rhs, rcond=None)[0][:k]
            if np.all(alpha > tol):
                weights[:] = 0.0
                weights[active] = alpha
                break
            current = weights[active]
            shrink = alpha <= tol
            theta = np.min(current[shrink] / np.maximum(current[shrink] - alpha[shrink], 1e-300))
            new = current + min(theta, 1.0) * (alpha - current)
            keep = new > tol
            weights[:] = 0.0
            active = [a for a, kept in zip(active, keep) if kept]
            weights[active] = new[keep] / np.sum(new[keep])
    return P @ weights, weights


def one_vs_rest_margins(W: ArrayLike, *, neighbours: int | None = None,
                        tol: float = 1e-12) -> np.ndarray:
    """dist(w_k, conv{w_j : j != k}) for every row of W (K, d), each an exact QP
    (`min_norm_point` of {w_j - w_k}); 0 where w_k lies inside the hull of the others. The
    GNC margin is their minimum (Jiang et al. 2024). Host-side numpy (an active-set method).

    Pruned, and still exact: each QP starts on the `neighbours` classifiers nearest w_k
    (default max(2 (d + 1), 32); all of them when K is small), then checks the optimality of its
    point y* = x* - w_k against every class at once, <w_j - w_k, y*> >= ||y*||^2 (Wolfe's own
    stopping test, to `tol` relative). Classes that break it join the candidates and the QP is
    redone until none does, so the answer is the full QP's; the checks run as (chunk, K)
    matrix products over all classes."""
    W = np.asarray(W, np.float64)
    K, d = W.shape
    if K == 1:
        return np.full(1, np.inf)
    m = min(K - 1, max(2 * (d + 1), 32) if neighbours is None else int(neighbours))
    candidates = _nearest_rows(W, m)
    scale = max(1.0, float(np.max(np.sum(W**2, axis=1)))) * 4.0  # >= max ||w_j - w_k||^2
    out = np.empty(K)
    pending = np.arange(K)
    while pending.size:
        points = np.empty((pending.size, d))
        for row, k in enumerate(pending):
            x, _ = min_norm_point((W[candidates[k]] - W[k]).T, tol=tol)
            points[row] = x
            out[k] = np.linalg.norm(x)
        still = []
        for start in range(0, pending.size, _CHECK_CHUNK):
            rows = pending[start:start + _CHECK_CHUNK]
            y = points[start:start + _CHECK_CHUNK]
            # <w_j - w_k, y_k> - ||y_k||^2 for every j: negative beyond tol breaks optimality.
            slack = y @ W.T - np.sum(W[rows] * y, axis=1, keepdims=True) \
                - np.sum(y * y, axis=1, keepdims=True)
            slack[np.arange(rows.size), rows] = np.inf  # w_k itself is not a candidate
            for row, k in enumerate(rows):
                broken = np.setdiff1d(np.flatnonzero(slack[row] < -tol * scale), candidates[k])
                # A class already among the candidates that still breaks the test is Wolfe's
                # own round-off (it stopped there): the QP over them stands.
                if broken.size:
                    worst = broken[np.argsort(slack[row, broken])[:m]]
                    candidates[k] = np.union1d(candidates[k], worst)
                    still.append(k)
        pending = np.asarray(still, dtype=int)
    return out


# Classes per matrix product in the margins' optimality checks and neighbour searches.
_CHECK_CHUNK = 1024


def _nearest_rows(W, m: int) -> list:
    """For each row k of W, the indices of the m other rows nearest it (Euclidean)."""
    K = W.shape[0]
    sq = np.sum(W**2, axis=1)
    nearest = []
    for start in range(0, K, _CHECK_CHUNK):
        rows = np.arange(start, min(start + _CHECK_CHUNK, K))
        dist = sq[rows, None] - 2.0 * W[rows] @ W.T + sq[None, :]
        dist[np.arange(rows.size), rows] = np.inf
        if m < K - 1:
            picked = np.argpartition(dist, m - 1, axis=1)[:, :m]
        else:
            picked = np.argsort(dist, axis=1)[:, :m]
        nearest.extend(np.sort(picked, axis=1))
    return nearest


def min_pairwise_distance(W: ArrayLike) -> float:
    """min_{j != k} ||w_j - w_k|| over the rows of W after normalizing them (the one-vs-one,
    Tammes, value)."""
    W = np.asarray(W, np.float64)
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    gram = W @ W.T
    off = ~np.eye(W.shape[0], dtype=bool)
    return float(np.sqrt(max(2.0 - 2.0 * np.max(gram[off]), 0.0)))


def gnc_metrics(W: ArrayLike, H: ArrayLike, labels: ArrayLike) -> dict:
    """Generalized-NC metrics (docs/science.md, section 3) on row-normalized W and column-normalized
    H: gnc1 (NC1 of the normalized features), gnc2_margin (min one-vs-rest distance, exact QP
    per class), gnc2_tammes (min pairwise distance between classifiers), gnc3 ((1/K) sum_k
    (1 - cos(w_k, mu_k - mu_G)), self-duality)."""
    W = np.asarray(W, np.float64)
    H = np.asarray(H, np.float64)
    labels = np.asarray(labels)
    K = W.shape[0]
    Wn = W / np.linalg.norm(W, axis=1, keepdims=True)
    Hn = H / np.linalg.norm(H, axis=0, keepdims=True)
    means = np.stack([Hn[:, labels == k].mean(1) for k in range(K)])  # (K, d)
    M = means - means.mean(0)
    cos = np.sum(Wn * M, axis=1) / np.maximum(np.linalg.norm(M, axis=1), 1e-300)
    with x64_scope("float64"):
        gnc1 = float(nc1(jnp.asarray(Hn), jnp.asarray(labels), K))
    return {"gnc1": gnc1, "gnc2_margin": float(np.min(one_vs_rest_margins(Wn))),
            "gnc2_tammes": min_pairwise_distance(Wn), "gnc3": float(np.mean(1.0 - cos))}
