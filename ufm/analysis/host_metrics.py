"""Metrics computed on the host in float64 numpy, after a run (not jittable): the generalized-NC
metrics with the exact one-vs-rest margin (a QP per class, Wolfe's method) and the
minority-collapse metrics of imbalanced classes (docs/science.md, section 3).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ufm.analysis.nc import nc1
from ufm.model.problem import x64_scope


def min_norm_point(P: np.ndarray, tol: float = 1e-12, max_iter: int = 10_000):
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


def one_vs_rest_margins(W, *, neighbours: int | None = None, tol: float = 1e-12) -> np.ndarray:
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


# The distortion of the coding rate: eps^2 = 0.5, the value of Yu et al. (2020, MCR^2) for
# unit-norm features.
CODING_EPS2 = 0.5


def coding_rate(Z, eps2: float = CODING_EPS2) -> float:
    """R(Z, eps) = 1/2 log det(I_d + d / (N eps^2) Z Z^T) of features Z (d, N): the nats needed
    to code the columns of Z up to distortion eps (Ma et al. 2007; Yu et al. 2020, "Learning
    diverse and discriminative representations via the principle of maximal coding rate
    reduction"), through the smaller of Z Z^T and Z^T Z (the same nonzero eigenvalues)."""
    Z = np.asarray(Z, np.float64)
    d, N = Z.shape
    gram = Z @ Z.T if d <= N else Z.T @ Z
    return float(0.5 * np.linalg.slogdet(np.eye(len(gram)) + d / (N * eps2) * gram)[1])


def rate_reduction(Z, labels, num_classes: int, eps2: float = CODING_EPS2) -> float:
    """Delta R = R(Z, eps) - sum_k (n_k / N) R(Z_k, eps), Z_k the columns of class k (Yu et al.
    2020): large when the whole is spread and each class compressed. R(Z_k) keeps the ambient
    d: 1/2 log det(I + d / (n_k eps^2) Z_k Z_k^T)."""
    Z, labels = np.asarray(Z, np.float64), np.asarray(labels)
    N = Z.shape[1]
    per_class = sum(np.sum(labels == k) / N * _class_rate(Z, labels == k, eps2)
                    for k in range(num_classes) if np.any(labels == k))
    return coding_rate(Z, eps2) - per_class


def _class_rate(Z, mask, eps2) -> float:
    d, X = Z.shape[0], Z[:, mask]
    gram = X @ X.T if d <= X.shape[1] else X.T @ X
    return float(0.5 * np.linalg.slogdet(np.eye(len(gram)) + d / (X.shape[1] * eps2) * gram)[1])


def effective_rank(Z) -> float:
    """exp of the entropy of the normalized singular values p_i = s_i / sum_j s_j of Z (d, N)
    (Roy & Vetterli 2007): between 1 and min(d, N); K - 1 for centred features collapsed onto
    a simplex ETF. Singular values at round-off count as zeros."""
    Z = np.asarray(Z, np.float64)
    s = np.linalg.svd(Z, compute_uv=False)
    s = s[s > s.max(initial=0.0) * max(Z.shape) * np.finfo(np.float64).eps]
    if not s.size:
        return 0.0
    p = s / s.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def compression_metrics(H, labels, num_classes: int, eps2: float = CODING_EPS2) -> dict:
    """Feature compression of H (d, N) (numpy, float64): effective_rank of the centred features
    H - mean, coding_rate and rate_reduction of the unit-normalized features h_i / ||h_i|| (the
    scale-free convention of MCR^2; a zero feature stays zero).

    On the host, not in the jitted `ufm.analysis.nc.nc_metrics`: jaxlib's CPU LAPACK kernels (LU,
    SVD, eigh) split a batched call over XLA's intra-op thread pool and wait for their pieces,
    and two that one program runs at once can hold every pool thread and wait for each other
    for ever. Measured: the default `ufm run` (2 cores) hung in its metrics program once these
    metrics' LU and eigh ran beside NC1's SVD, optimization barriers between them or not."""
    H = np.asarray(H, np.float64)
    norms = np.linalg.norm(H, axis=0, keepdims=True)
    Z = H / np.where(norms > 0, norms, 1.0)
    return {"effective_rank": effective_rank(H - H.mean(axis=1, keepdims=True)),
            "coding_rate": coding_rate(Z, eps2),
            "rate_reduction": rate_reduction(Z, labels, num_classes, eps2)}


def layer_nc(H, labels, num_classes: int) -> dict:
    """NC1 = (1/K) tr(Sigma_W Sigma_B^+) and NC2 of the class means, || M^T M / ||M^T M||_F - E
    ||_F, of a layer's features H (d, N) on the host (numpy, float64; the definitions of
    `ufm.analysis.nc.nc1` and `nc2_H`, mu_G the mean of the class means, Sigma_B^+ at rank K - 1
    and at round-off). Host-side: a network's layers have as many shapes as layers and splits,
    and a jitted metric would compile once for each. Also returns the centred means M (d, K)."""
    H = np.asarray(H, np.float64)
    labels = np.asarray(labels)
    K = num_classes
    d, N = H.shape
    counts = np.bincount(labels, minlength=K).astype(np.float64)
    means = (H @ np.eye(K)[labels]) / counts[None, :]
    M = means - means.mean(axis=1, keepdims=True)
    within = H - means[:, labels]
    U, S, _ = np.linalg.svd(M, full_matrices=False)
    keep = (np.arange(S.size) < K - 1) & (S > np.finfo(np.float64).eps * max(d, K) * S[0])
    projected = np.sum((U[:, keep].T @ within) ** 2, axis=1)
    nc1 = float(np.sum(projected / S[keep] ** 2) / N) if S[0] > 0 else float("nan")
    gram = M.T @ M
    etf = (np.eye(K) - 1.0 / K) / np.sqrt(K - 1)
    nc2 = float(np.linalg.norm(gram / np.linalg.norm(gram) - etf)) if S[0] > 0 else float("nan")
    return {"nc1": nc1, "nc2": nc2, "M": M}


def ridge_classifier(features, labels, num_classes: int, ridge: float = 1e-3):
    """(W (K, d), b (K,)): least squares from [features, 1] (N, d + 1) to one-hot targets with
    a ridge penalty ridge * mean ||h||^2 per coordinate (float64, closed form): a layer's
    linear probe."""
    X = np.asarray(features, np.float64)
    scale = max(float(np.mean(np.sum(X**2, axis=1))), 1e-300)
    A = np.hstack([X, np.ones((len(X), 1))])
    Y = np.eye(num_classes)[labels]
    penalty = ridge * scale * len(X) / X.shape[1]
    if A.shape[1] <= len(A):
        coefficients = np.linalg.solve(A.T @ A + penalty * np.eye(A.shape[1]), A.T @ Y)
    else:  # more features than samples (a convolutional layer): the same solution, dual form
        coefficients = A.T @ np.linalg.solve(A @ A.T + penalty * np.eye(len(A)), Y)
    return coefficients[:-1].T, coefficients[-1]


def geometric_decay(values) -> dict:
    """Fit log v_l = a + l log(ratio) by least squares over l = 0, 1, ...: the law
    of progressive separation, NC1 shrinking by a constant ratio per layer (He & Su 2023, "A
    law of data separation in deep learning"). Returns ratio (fitted v_{l+1} / v_l), rate
    (-log ratio, decay per layer in nats), intercept a and r2 (of the fit in log space; NaN
    with fewer than 3 layers or non-positive values)."""
    v = np.asarray(values, np.float64)
    nan = float("nan")
    if v.size < 2 or not np.all(np.isfinite(v)) or np.any(v <= 0):
        return {"ratio": nan, "rate": nan, "intercept": nan, "r2": nan}
    layer = np.arange(v.size, dtype=np.float64)
    slope, intercept = np.polyfit(layer, np.log(v), 1)
    residual = np.log(v) - (intercept + slope * layer)
    spread = np.sum((np.log(v) - np.mean(np.log(v))) ** 2)
    r2 = 1.0 - np.sum(residual**2) / spread if v.size >= 3 and spread > 0 else nan
    return {"ratio": float(np.exp(slope)), "rate": float(-slope), "intercept": float(intercept),
            "r2": float(r2)}
