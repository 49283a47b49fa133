"""Metrics computed on the host in float64 numpy, after a run (not jittable): the generalized-NC
metrics with the exact one-vs-rest margin (a QP per class, Wolfe's method) and the
minority-collapse metrics of imbalanced classes (docs/science.md, section 3).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ufm.metrics import nc1
from ufm.problem import x64_scope


def min_norm_point(P: np.ndarray, tol: float = 1e-12, max_iter: int = 10_000):
    """The point of conv{columns of P} nearest the origin, exactly (Wolfe 1976, "Finding the
    nearest point in a polytope"): a finite active-set method, not projected gradient.
    Returns (x, weights) with x = P @ weights, weights >= 0 summing to 1."""
    P = np.asarray(P, np.float64)
    m = P.shape[1]
    scale = max(1.0, float(np.max(np.sum(P**2, axis=0))))
    active = [int(np.argmin(np.sum(P**2, axis=0)))]
    weights = np.zeros(m)
    weights[active[0]] = 1.0
    x = P[:, active[0]].copy()
    for _ in range(max_iter):
        j = int(np.argmin(P.T @ x))
        if x @ x - P[:, j] @ x <= tol * scale or j in active:
            break
        active.append(j)
        while True:  # minor cycle: the affine min-norm point of the active set
            Q = P[:, active]
            k = len(active)
            A = np.block([[Q.T @ Q, np.ones((k, 1))], [np.ones((1, k)), np.zeros((1, 1))]])
            rhs = np.concatenate([np.zeros(k), [1.0]])
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
        x = P @ weights
    return x, weights


def one_vs_rest_margins(W) -> np.ndarray:
    """dist(w_k, conv{w_j : j != k}) for every row of W (K, d), each an exact small QP
    (`min_norm_point` of {w_j - w_k}); 0 where w_k lies inside the hull of the others. The
    GNC margin is their minimum (Jiang et al. 2024). Host-side numpy (an active-set method)."""
    W = np.asarray(W, np.float64)
    K = W.shape[0]
    out = np.empty(K)
    for k in range(K):
        others = np.delete(W, k, axis=0)
        x, _ = min_norm_point((others - W[k]).T)
        out[k] = np.linalg.norm(x)
    return out


def min_pairwise_distance(W) -> float:
    """min_{j != k} ||w_j - w_k|| over the rows of W after normalizing them (the one-vs-one,
    Tammes, value)."""
    W = np.asarray(W, np.float64)
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    gram = W @ W.T
    off = ~np.eye(W.shape[0], dtype=bool)
    return float(np.sqrt(max(2.0 - 2.0 * np.max(gram[off]), 0.0)))


def gnc_metrics(W, H, labels) -> dict:
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


# ------------------------------------------------------------------ imbalanced classes (minority)


# Minority classifiers closer than this (relative to the largest ||w_k||) have collapsed.
COLLAPSED_SPREAD = 1e-6


def minority_spread(W, minority) -> float:
    """max ||w_j - w_k|| over pairs of minority classifiers, relative to max ||w_k||: 0 when
    the minority classifiers have collapsed onto one vector (Fang et al. 2021)."""
    W = np.asarray(W, np.float64)
    rows = W[np.asarray(minority)]
    spread = np.max(np.linalg.norm(rows[:, None, :] - rows[None, :, :], axis=-1))
    return float(spread / max(np.max(np.linalg.norm(W, axis=1)), 1e-300))


def _mean_pair_cosine(X) -> float:
    if X.shape[0] < 2:
        return float("nan")
    norms = np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-300)
    cos = (X / norms) @ (X / norms).T
    return float(np.mean(cos[~np.eye(X.shape[0], dtype=bool)]))


def imbalance_metrics(W, H, labels, class_counts) -> dict:
    """Minority-collapse metrics for imbalanced classes (host numpy, float64). Majority classes
    are those with the largest count, minority all others.

    minority_cos / majority_cos: mean cosine between distinct minority (majority) classifiers
    (-1/(K-1) on a simplex ETF; 1 at minority collapse, also when they collapse to zero, which
    the weight-decay UFM does past a second, larger ratio); minority_spread: max distance between
    minority classifiers relative to the largest ||w_k||; w_norm_ratio / h_norm_ratio: mean
    minority over mean majority ||w_k|| and ||mu_k - mu_G|| (mu_G the mean of class means)."""
    W = np.asarray(W, np.float64)
    H = np.asarray(H, np.float64)
    labels = np.asarray(labels)
    counts = np.asarray(class_counts)
    K = W.shape[0]
    minority = np.flatnonzero(counts < counts.max())
    majority = np.flatnonzero(counts == counts.max())
    means = np.stack([H[:, labels == k].mean(1) for k in range(K)])
    centred = np.linalg.norm(means - means.mean(0), axis=1)
    w_norms = np.linalg.norm(W, axis=1)
    nan = float("nan")
    ratio = lambda x: (float(np.mean(x[minority]) / max(np.mean(x[majority]), 1e-300))
                       if minority.size else nan)
    spread = minority_spread(W, minority) if minority.size >= 2 else nan
    # Coincident minority classifiers (also all zero, the extreme imbalance) count as cos = 1.
    minority_cos = 1.0 if spread < COLLAPSED_SPREAD else _mean_pair_cosine(W[minority])
    return {"minority_cos": minority_cos,
            "majority_cos": _mean_pair_cosine(W[majority]),
            "minority_spread": spread,
            "w_norm_ratio": ratio(w_norms), "h_norm_ratio": ratio(centred)}
