"""Frames: the Helmert basis and the simplex equiangular tight frame (host numpy, float64).

A leaf module (it imports nothing from ufm): problems, closed forms, metrics and networks all
build their ETFs here.
"""
from __future__ import annotations

import math

import numpy as np


def helmert_basis(K: int) -> np.ndarray:
    """Orthonormal basis (K, K-1) of the hyperplane orthogonal to the all-ones vector."""
    U = np.zeros((K, K - 1))
    for j in range(1, K):
        U[:j, j - 1] = 1.0
        U[j, j - 1] = -j
        U[:, j - 1] /= math.sqrt(j * (j + 1))
    return U


def simplex_etf(K: int, d: int) -> np.ndarray:
    """Unit-norm simplex ETF (K, d): W W^T = (K/(K-1)) (I - 11^T/K), needs d >= K-1.

    Rows are the centred standard basis, rescaled, written in the Helmert basis and padded with
    zeros to d coordinates (Papyan et al. 2020, Definition 1).
    """
    if d < K - 1:
        raise ValueError(f"feature_dim={d} is not allowed for a simplex ETF: need d >= K-1={K - 1}")
    centred = np.eye(K) - 1.0 / K
    rows = centred @ helmert_basis(K) / math.sqrt((K - 1) / K)  # (K, K-1), unit rows
    return np.pad(rows, ((0, 0), (0, d - (K - 1))))


def etf_gram(K: int) -> np.ndarray:
    """Normalized simplex-ETF Gram E = (I - 11^T/K) / sqrt(K-1), ||E||_F = 1."""
    return (np.eye(K) - 1.0 / K) / math.sqrt(K - 1)
