"""Minority collapse of imbalanced classes, measured on the host in float64 (after a run):
the spread of the minority classifiers and the angles among them (Fang et al. 2021;
docs/science.md, section 3)."""
from __future__ import annotations

import numpy as np
from jax.typing import ArrayLike

# Minority classifiers closer than this (relative to the largest ||w_k||) have collapsed.
COLLAPSED_SPREAD = 1e-6


def minority_spread(W: ArrayLike, minority: ArrayLike) -> float:
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


def imbalance_metrics(W: ArrayLike, H: ArrayLike, labels: ArrayLike,
                      class_counts: ArrayLike) -> dict:
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
