"""Closed forms: the simplex ETF and the global optima of the UFM (SCIENCE.md section 4).

Everything here is host-side numpy in float64: `optimum` is evaluated once per configuration
before a run, and its value is handed to the jitted solver as a plain number.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ufm.problem import Hyper, Problem


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


class Optimum(NamedTuple):
    """Global optimum of a UFM: objective value, squared norms of every w_k and h_i, the bias
    and whether the optimum is the collapsed-to-zero solution W = H = 0."""

    objective: float
    w_norm_sq: float
    h_norm_sq: float
    b: np.ndarray  # (K,)
    is_zero: bool


def _scalar(x, name) -> float:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim:
        raise ValueError(f"optimum() takes one configuration; {name} has shape {arr.shape}")
    return float(arr)


def _ce_like(K, n, lam_W, lam_H, alpha):
    """CE (alpha=0) and label smoothing, weight decay, balanced (Zhu 2021; Zhou 2022)."""
    s = math.sqrt(n * lam_W * lam_H)
    if s >= (1.0 - alpha) / K:
        return math.log(K), 0.0, True
    q = (K - 1) * (s + alpha / K)
    if alpha == 0.0:
        margin = math.log((1.0 - q) / s)
    else:
        margin = math.log((K - 1) * (1.0 - q) / q)
    f_star = -math.log1p(-q) + q * margin
    w_norm_sq = (K - 1) / K * math.sqrt(n * lam_H / lam_W) * margin
    return f_star, w_norm_sq, False


def _focal_margin_loss(m, K, gamma):
    """l(m) = -(1-p)^gamma ln p and l'(m), p = 1/(1 + (K-1) e^{-m}) the ETF target probability.

    l'(m) = (1-p)^gamma [gamma p ln p - (1-p)], from dp/dm = p (1-p)."""
    log_p = -np.log1p((K - 1) * np.exp(-m))
    one_minus_p = -np.expm1(log_p)
    value = -(one_minus_p**gamma) * log_p
    slope = one_minus_p**gamma * (gamma * np.exp(log_p) * log_p - one_minus_p)
    return value, slope


def _focal(K, n, lam_W, lam_H, gamma):
    """Focal loss within the ETF family: minimize g(x) = l(a x) + lam_W K x over x = ||w_k||^2,
    a = (K/(K-1)) sqrt(lam_W/(n lam_H)) (Zhou et al. 2022, 'Are all losses created equal?').

    g is one-dimensional but need not be convex: scan a log grid for sign changes of g', refine
    each by bisection and keep the smallest value, x = 0 included."""
    a = K / (K - 1) * math.sqrt(lam_W / (n * lam_H))
    penalty_slope = lam_W * K

    def g(x):
        value, slope = _focal_margin_loss(a * np.asarray(x, dtype=np.float64), K, gamma)
        return value + penalty_slope * x, a * slope + penalty_slope

    x_max = (math.log(K) + 1.0) / penalty_slope  # g(x) >= lam_W K x > l(0) = g(0) beyond it
    grid = np.concatenate([[0.0], np.geomspace(1e-12 * x_max, x_max, 4000)])
    _, derivs = g(grid)
    candidates = [0.0]
    for i in np.nonzero((derivs[:-1] < 0) & (derivs[1:] >= 0))[0]:
        lo, hi = grid[i], grid[i + 1]
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if g(mid)[1] < 0 else (lo, mid)
        candidates.append(0.5 * (lo + hi))
    best = min(candidates, key=lambda x: float(g(x)[0]))
    return float(g(best)[0]), float(best), best == 0.0


def optimum(problem: Problem, hyper: Hyper) -> Optimum | None:
    """The closed-form global optimum of SCIENCE.md section 4, or None where none is known.

    Known: weight decay, balanced classes, learned classifier, d >= K-1, for CE, label smoothing
    and focal (b* = 0; bias on or off); MSE with an unpenalized bias (lam_b = 0) and MSE without
    bias (d >= K, an orthogonal frame); rescaled MSE with kappa = 1 (a multiple of MSE); and the
    sphere with CE and no bias. Temperature is folded in exactly: dividing logits by tau is the
    same problem with W' = W / tau and lam_W' = lam_W tau^2.
    """
    K, d = problem.num_classes, problem.feature_dim
    if not problem.balanced or problem.classifier != "learned" or d < K - 1:
        return None
    n = problem.n_per_class
    lam_W, lam_H, lam_b = (_scalar(getattr(hyper, f), f) for f in ("lam_W", "lam_H", "lam_b"))
    tau = _scalar(hyper.tau, "tau")

    if problem.geometry == "sphere":
        if problem.loss != "ce" or problem.bias:
            return None
        f_star = math.log1p((K - 1) * math.exp(-K / ((K - 1) * tau)))
        return Optimum(f_star, 1.0, 1.0, np.zeros(K), False)

    # f(W, H, b) = c * f_canonical(W / t, H, b / t) with canonical lambdas (see docstring).
    loss, c, t = problem.loss, 1.0, tau
    if loss == "mse_rescaled":
        if _scalar(hyper.kappa, "kappa") != 1.0:
            return None
        M = _scalar(hyper.M, "M")
        loss, c, t = "mse", 2.0 * M**2 / K, tau * M
    lam_W_c, lam_H_c, lam_b_c = lam_W * t**2 / c, lam_H / c, lam_b * t**2 / c
    if min(lam_W_c, lam_H_c) <= 0.0:
        return None  # without both penalties the infimum is not attained

    b_c = np.zeros(K)
    if loss in ("ce", "ls"):
        alpha = _scalar(hyper.alpha, "alpha") if loss == "ls" else 0.0
        f_c, w_sq_c, is_zero = _ce_like(K, n, lam_W_c, lam_H_c, alpha)
    elif loss == "focal":
        f_c, w_sq_c, is_zero = _focal(K, n, lam_W_c, lam_H_c, _scalar(hyper.gamma, "gamma"))
    elif loss == "mse":
        s = math.sqrt(n * lam_W_c * lam_H_c)
        sigma = max(1.0 - K * s, 0.0)
        if problem.bias:
            if lam_b_c != 0.0:
                return None
            f_c = (K - 1) * (1 - sigma) ** 2 / (2 * K) + (K - 1) * s * sigma
            w_sq_c = math.sqrt(n * lam_H_c / lam_W_c) * sigma * (K - 1) / K
            b_c = np.full(K, 1.0 / K)
        else:
            if d < K:
                return None
            f_c = (1 - sigma) ** 2 / 2 + K * s * sigma
            w_sq_c = math.sqrt(n * lam_H_c / lam_W_c) * sigma
        is_zero = sigma == 0.0
    else:
        return None
    h_sq = lam_W_c / (n * lam_H_c) * w_sq_c
    return Optimum(c * f_c, t**2 * w_sq_c, h_sq, t * b_c, bool(is_zero))
