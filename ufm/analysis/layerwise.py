"""Collapse through the layers of a network, measured on the host in float64: NC1 and NC2 of
one layer's features, a ridge-probe classifier of them, and the geometric decay of NC1 over
the layers (a line in log NC1 against depth; He & Su 2023)."""
from __future__ import annotations

import numpy as np
from jax.typing import ArrayLike


def layer_nc(H: ArrayLike, labels: ArrayLike, num_classes: int) -> dict:
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


def ridge_classifier(features: ArrayLike, labels: ArrayLike, num_classes: int,
                     ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
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


def geometric_decay(values: ArrayLike) -> dict:
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
