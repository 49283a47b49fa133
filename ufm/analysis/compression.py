"""Feature compression, measured on the host in float64: the coding rate and the rate
reduction of Yu et al. (2020, MCR^2), and the effective rank of the features."""
from __future__ import annotations

import numpy as np
from jax.typing import ArrayLike

# The distortion of the coding rate: eps^2 = 0.5, the value of Yu et al. (2020, MCR^2) for
# unit-norm features.
CODING_EPS2 = 0.5


def coding_rate(Z: ArrayLike, eps2: float = CODING_EPS2) -> float:
    """R(Z, eps) = 1/2 log det(I_d + d / (N eps^2) Z Z^T) of features Z (d, N): the nats needed
    to code the columns of Z up to distortion eps (Ma et al. 2007; Yu et al. 2020, "Learning
    diverse and discriminative representations via the principle of maximal coding rate
    reduction"), through the smaller of Z Z^T and Z^T Z (the same nonzero eigenvalues)."""
    Z = np.asarray(Z, np.float64)
    d, N = Z.shape
    gram = Z @ Z.T if d <= N else Z.T @ Z
    return float(0.5 * np.linalg.slogdet(np.eye(len(gram)) + d / (N * eps2) * gram)[1])


def rate_reduction(Z: ArrayLike, labels: ArrayLike, num_classes: int,
                   eps2: float = CODING_EPS2) -> float:
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


def effective_rank(Z: ArrayLike) -> float:
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


def compression_metrics(H: ArrayLike, labels: ArrayLike, num_classes: int,
                        eps2: float = CODING_EPS2) -> dict:
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
