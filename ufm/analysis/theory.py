"""Closed forms: the simplex ETF and the global optima of the UFM (docs/science.md, section 4).

Everything here is host-side numpy in float64: `optimum` is evaluated once per configuration
before a run, and its value is handed to the jitted solver as a plain number.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ufm.model.frames import etf_gram, helmert_basis, simplex_etf  # noqa: F401  (closed forms use them)
from ufm.model.losses import LOSSES
from ufm.model.problem import Hyper, Params, Problem, logit_gradient, x64_scope


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


def deep_linear_mse(K: int, n: int, depth: int, lam_W: float, lam_H: float,
                    bias: bool) -> tuple[float, float, float, bool]:
    """Global optimum of the balanced deep linear MSE UFM (Dang et al. 2023, "Neural collapse
    in deep linear networks: from balanced to imbalanced data"; Tirer & Bruna 2022):

        f = (1/2N) ||W A_{L-1} ... A_1 H (+ b 1^T) - Y||^2 + lam_W/2 (||W||^2 + sum ||A_l||^2)
            + lam_H/2 ||H||^2,    L = depth, unpenalized bias (lam_b = 0) or none.

    At the optimum features collapse and the L + 1 factors of P = W A ... A_1 H_bar are
    balanced, so their penalty is (L+1)/2 (lam_W^L n lam_H)^(1/(L+1)) sum_i sigma_i(P)^q with
    q = 2/(L+1) (AM-GM), and the loss is (1/2K) sum_i (sigma_i - 1)^2 over the m unit singular
    values of the targets (m = K, or K-1 with the bias absorbing the mean, b = 1/K). Each
    sigma_i minimizes g(s) = (s-1)^2/(2K) + c s^q: a 1-D problem, nonconvex for L >= 2 (s = 0
    competes with the larger stationary point). depth = 1 gives the UFM's closed form.

    Returns (f*, ||w_k||^2, ||h_i||^2, is_zero)."""
    m = K - 1 if bias else K
    L = depth
    prod = lam_W**L * n * lam_H
    c = (L + 1) / 2 * prod ** (1 / (L + 1))
    q = 2 / (L + 1)
    g = lambda x: (x - 1) ** 2 / (2 * K) + c * x**q
    slope = lambda x: (x - 1) / K + c * q * x ** (q - 1)
    candidates = [0.0]
    if L == 1:
        candidates.append(max(1.0 - K * c, 0.0))
    else:
        grid = np.linspace(0.0, 1.0, 20001)[1:]
        signs = np.sign(slope(grid))
        for i in np.flatnonzero((signs[:-1] < 0) & (signs[1:] > 0)):  # local minima of g
            lo, hi = grid[i], grid[i + 1]
            for _ in range(100):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
            candidates.append(0.5 * (lo + hi))
    sigma = min(candidates, key=g)
    scale = prod ** (1 / (L + 1)) * sigma**q  # lam_l t_l^2 of every factor
    return m * g(sigma), (m / K) * scale / lam_W, (m / K) * scale / (n * lam_H), sigma == 0.0


def optimum(problem: Problem, hyper: Hyper) -> Optimum | None:
    """The closed-form global optimum of docs/science.md, section 4, or None where none is known
    (`no_closed_form` says why).

    Known: weight decay, balanced classes, learned classifier, d >= K-1, for CE, label smoothing
    and focal (b* = 0; bias on or off); MSE with an unpenalized bias (lam_b = 0) and MSE without
    bias (d >= K, an orthogonal frame); rescaled MSE with kappa = 1 (a multiple of MSE); and the
    sphere with CE and no bias. Temperature is folded in exactly: dividing logits by tau is the
    same problem with W' = W / tau and lam_W' = lam_W tau^2.
    """
    found = _optimum_or_reason(problem, hyper)
    return None if isinstance(found, str) else found


def no_closed_form(problem: Problem, hyper: Hyper) -> str | None:
    """Why `optimum` knows no closed form here ("the bias is penalized (lam_b > 0)", ...), or
    None where it does: the reason a results table gives for an empty f* and rel_gap."""
    found = _optimum_or_reason(problem, hyper)
    return found if isinstance(found, str) else None


def _optimum_or_reason(problem: Problem, hyper: Hyper) -> Optimum | str:
    if problem.multilabel:  # single labels written as label sets: the same problem
        problem = problem.single_label_equivalent()
        if problem is None:
            return "samples carry several labels"
    K, d = problem.num_classes, problem.feature_dim
    if problem.classifier == "identity":
        return identity_classifier_optimum(problem, hyper) or (
            "W = I has one only on the sphere with CE, balanced classes and no bias")
    if not problem.balanced:
        return "the classes are imbalanced (the convex oracle's columns give the optimum)"
    if problem.classifier != "learned":
        return f"the classifier is {problem.classifier}"
    if d < K - 1:
        return "d < K-1: generalized NC (code_margin gives the softmax code's margin)"
    n = problem.n_per_class
    lam_W, lam_H, lam_b = (_scalar(getattr(hyper, f), f) for f in ("lam_W", "lam_H", "lam_b"))
    tau = _scalar(hyper.tau, "tau")

    if problem.depth > 1:  # deep UFM: the deep linear MSE closed form only
        if (problem.activation != "linear" or problem.loss != "mse" or tau != 1.0
                or min(lam_W, lam_H) <= 0.0 or (problem.bias and lam_b != 0.0)
                or (not problem.bias and d < K)):
            return ("deep UFM: only the deep linear MSE (tau = 1, both penalties, an "
                    "unpenalized bias or d >= K) has one")
        f, w_sq, h_sq, is_zero = deep_linear_mse(K, n, problem.depth, lam_W, lam_H,
                                                 problem.bias)
        b = np.full(K, 1.0 / K) if problem.bias else np.zeros(K)
        return Optimum(f, w_sq, h_sq, b, bool(is_zero))

    if problem.geometry == "sphere":
        if problem.loss != "ce":
            return f"{problem.loss} on the sphere"
        if problem.bias:
            return "a bias on the sphere"
        f_star = math.log1p((K - 1) * math.exp(-K / ((K - 1) * tau)))
        return Optimum(f_star, 1.0, 1.0, np.zeros(K), False)
    if problem.geometry in ("norm_ball", "norm_ball_each"):
        return norm_ball_optimum(problem, hyper) or (
            f"{problem.geometry} has one only for CE without a bias")

    # f(W, H, b) = c * f_canonical(W / t, H, b / t) with canonical lambdas (see docstring).
    loss, c, t = problem.loss, 1.0, tau
    if loss == "mse_rescaled":
        if _scalar(hyper.kappa, "kappa") != 1.0:
            return "rescaled MSE with kappa != 1"
        M = _scalar(hyper.M, "M")
        loss, c, t = "mse", 2.0 * M**2 / K, tau * M
    lam_W_c, lam_H_c, lam_b_c = lam_W * t**2 / c, lam_H / c, lam_b * t**2 / c
    if min(lam_W_c, lam_H_c) <= 0.0:
        return "lam_W or lam_H is 0 (the infimum is not attained)"

    b_c = np.zeros(K)
    if loss == "pick_all_label":  # single labels (multi-label problems are not balanced)
        loss = "ce"
    if loss in ("ce", "ls", "ls_off_target"):
        alpha = _scalar(hyper.alpha, "alpha") if loss != "ce" else 0.0
        if loss == "ls_off_target":  # alpha/(K-1) off target is "ls" with alpha K/(K-1)
            alpha = alpha * K / (K - 1)
            if alpha > 1.0:  # the target below 1/K: no closed form here
                return "label smoothing puts the target below 1/K"
        f_c, w_sq_c, is_zero = _ce_like(K, n, lam_W_c, lam_H_c, alpha)
    elif loss == "focal":
        f_c, w_sq_c, is_zero = _focal(K, n, lam_W_c, lam_H_c, _scalar(hyper.gamma, "gamma"))
    elif loss == "mse":
        s = math.sqrt(n * lam_W_c * lam_H_c)
        sigma = max(1.0 - K * s, 0.0)
        if problem.bias:
            if lam_b_c != 0.0:
                return "the bias is penalized (lam_b > 0)"
            f_c = (K - 1) * (1 - sigma) ** 2 / (2 * K) + (K - 1) * s * sigma
            w_sq_c = math.sqrt(n * lam_H_c / lam_W_c) * sigma * (K - 1) / K
            b_c = np.full(K, 1.0 / K)
        else:
            if d < K:
                return "MSE without a bias needs d >= K"
            f_c = (1 - sigma) ** 2 / 2 + K * s * sigma
            w_sq_c = math.sqrt(n * lam_H_c / lam_W_c) * sigma
        is_zero = sigma == 0.0
    else:
        return f"no closed form is known for loss {loss!r}"
    h_sq = lam_W_c / (n * lam_H_c) * w_sq_c
    return Optimum(c * f_c, t**2 * w_sq_c, h_sq, t * b_c, bool(is_zero))


def identity_classifier_optimum(problem: Problem, hyper: Hyper) -> Optimum | None:
    """Lu & Steinerberger 2022 ("Neural collapse under cross-entropy loss"): unit features h_k
    in R^K whose logits are the features themselves (W = I, d = K), CE at temperature tau,
    balanced, no bias. The minimizer is the simplex ETF h_k = (e_k - 1/K)/||e_k - 1/K||: the
    margin is ||e_k - 1/K||^{-1} = sqrt(K/(K-1)), and

        f* = ln(1 + (K-1) exp(-sqrt(K/(K-1)) / tau)).

    None off the sphere, for other losses or with a bias."""
    K = problem.num_classes
    if (problem.geometry != "sphere" or problem.loss != "ce" or problem.bias
            or not problem.balanced or problem.multilabel):
        return None
    tau = _scalar(hyper.tau, "tau")
    margin = math.sqrt(K / (K - 1)) / tau
    return Optimum(math.log1p((K - 1) * math.exp(-margin)), 1.0, 1.0, np.zeros(K), False)


def norm_ball_optimum(problem: Problem, hyper: Hyper) -> Optimum | None:
    """The norm-constrained UFM with CE, no bias, balanced, d >= K-1 (E & Wojtowytsch 2020;
    Fang et al. 2021, "Exploring deep neural networks via layer-peeled model", Thm. 3): the
    minimizers are simplex ETFs on the boundary, ||w_k||^2 = E_W, h_i = sqrt(E_H/E_W) w_{y_i},
    so every logit margin is (K/(K-1)) sqrt(E_W E_H) / tau and

        f* = ln(1 + (K-1) exp(-(K/(K-1)) sqrt(E_W E_H) / tau)).

    The same for "norm_ball_each" (every ||h_i||^2 <= E_H): the optimum above meets it with
    equality. The tutorial's ||W||_F <= 1, ||h_i|| <= 1 is E_W = 1/K, E_H = 1:
    f* = ln(1 + (K-1) exp(-sqrt(K)/(K-1) / tau)). None for other losses or with a bias."""
    K, d = problem.num_classes, problem.feature_dim
    if (problem.loss != "ce" or problem.bias or not problem.balanced or d < K - 1
            or problem.classifier != "learned" or problem.multilabel):
        return None
    E_W, E_H, tau = (_scalar(getattr(hyper, f), f) for f in ("E_W", "E_H", "tau"))
    margin = K / (K - 1) * math.sqrt(E_W * E_H) / tau
    return Optimum(math.log1p((K - 1) * math.exp(-margin)), E_W, E_H, np.zeros(K), False)


# ---------------------------------------------------------------------------------------------
# Critical points (docs/science.md, section 5). Each returns float64 Params (host numpy arrays).


def _params(W, H, b, layers=None) -> Params:
    as64 = lambda x: None if x is None else np.asarray(x, np.float64)
    return Params(as64(W), as64(H), as64(b), as64(layers))


def optimum_point(problem: Problem, hyper: Hyper) -> Params | None:
    """The global minimizer that `optimum` describes: W = ||w|| x (unit simplex ETF, or the
    orthogonal frame for bias-free MSE), h_i = ||h|| w_{y_i}/||w_{y_i}||, b = b*."""
    opt = optimum(problem, hyper)
    if opt is None:
        return None
    K, d = problem.num_classes, problem.feature_dim
    if problem.classifier == "identity":  # W = I; the features are the centred unit vectors
        centred = np.eye(K) - 1.0 / K
        features = centred / np.linalg.norm(centred, axis=1, keepdims=True)
        return _params(np.eye(K), features[problem.labels].T, opt.b)
    frame = (
        np.eye(K, d) if problem.loss.startswith("mse") and not problem.bias else simplex_etf(K, d)
    )
    return _params(
        math.sqrt(opt.w_norm_sq) * frame, math.sqrt(opt.h_norm_sq) * frame[problem.labels].T, opt.b
    )


def optimal_bias(problem: Problem, hyper: Hyper, Z: ArrayLike | None = None) -> np.ndarray:
    """argmin_b (1/N) sum_i L((z_i + b)/tau, y_i) + lam_b/2 ||b||^2 for fixed logits Z (default
    Z = 0, the origin), by Newton's method in float64 (convex for CE, LS and MSE; from b = 0,
    which is already optimal for balanced CE-type losses). Zero when the problem has no bias."""
    K, N = problem.num_classes, problem.num_samples
    if not problem.bias:
        return np.zeros(K)
    with x64_scope("float64"):
        hyper64 = hyper.astype(jnp.float64)
        Z0 = jnp.zeros((K, N)) if Z is None else jnp.asarray(Z, jnp.float64)
        Y = jax.nn.one_hot(problem.labels, K, dtype=jnp.float64).T
        def g(b):
            loss = jnp.mean(LOSSES[problem.loss]((Z0 + b[:, None]) / hyper64.tau, Y, hyper64))
            return loss + 0.5 * hyper64.lam_b * jnp.sum(b**2)

        grad, hess = jax.jit(jax.grad(g)), jax.jit(jax.hessian(g))
        b = jnp.zeros(K)
        for _ in range(100):
            step = jnp.linalg.lstsq(hess(b), grad(b))[0]  # singular along 1 when lam_b = 0 (CE)
            b = b - step
            if float(jnp.linalg.norm(step)) < 1e-15 * (1.0 + float(jnp.linalg.norm(b))):
                break
        return np.asarray(b)


def origin(problem: Problem, hyper: Hyper) -> Params:
    """W = 0, H = 0 and the optimal bias given Z = b 1^T: always a critical point of the
    weight-decay UFM; a strict saddle iff sqrt(lam_W lam_H) < c_L/(K sqrt(n)) (balanced)."""
    K, d, N = problem.num_classes, problem.feature_dim, problem.num_samples
    return _params(np.zeros((K, d)), np.zeros((d, N)), optimal_bias(problem, hyper))


def mse_saddle(problem: Problem, hyper: Hyper, rank: int) -> Params:
    """Closed-form critical point of rank r of the MSE UFM (bias with lam_b = 0, or no bias),
    balanced: W H keeps r of the (equal) singular directions of the centred targets, shrunk to
    sigma = 1 - K sqrt(n lam_W lam_H): W = a U_r E_r^T, H = c E_r V_r^T with a c = sqrt(n) sigma
    and lam_W a^2 = lam_H c^2; b = 1/K (with bias). r = K-1 (bias) or K (no bias) is the global
    optimum; smaller r are strict saddles."""
    if problem.loss != "mse" or problem.geometry != "wd" or not problem.balanced:
        raise ValueError("mse_saddle needs a balanced weight-decay problem with loss='mse'")
    K, d, n = problem.num_classes, problem.feature_dim, problem.n_per_class
    lam_W, lam_H, tau = (float(getattr(hyper, f)) for f in ("lam_W", "lam_H", "tau"))
    if problem.bias and float(hyper.lam_b) != 0.0:
        raise ValueError("mse_saddle with a bias needs lam_b = 0")
    if tau != 1.0:
        raise ValueError("mse_saddle needs tau = 1")
    max_rank = K - 1 if problem.bias else K
    if not 1 <= rank <= min(max_rank, d):
        raise ValueError(f"rank={rank} is not allowed: an integer in [1, {min(max_rank, d)}]")
    sigma = 1.0 - K * math.sqrt(n * lam_W * lam_H)
    if sigma <= 0:
        raise ValueError("every MSE critical point is the origin when K sqrt(n lam_W lam_H) >= 1")
    U = helmert_basis(K)[:, :rank] if problem.bias else np.eye(K)[:, :rank]  # (K, r)
    Y = np.eye(K)[problem.labels].T  # (K, N)
    target = Y - 1.0 / K if problem.bias else Y
    V = target.T @ U / math.sqrt(n)  # (N, r), orthonormal columns
    a = math.sqrt(math.sqrt(n) * sigma * math.sqrt(lam_H / lam_W))
    c = math.sqrt(math.sqrt(n) * sigma * math.sqrt(lam_W / lam_H))
    E = np.eye(d)[:, :rank]  # (d, r)
    b = np.full(K, 1.0 / K) if problem.bias else np.zeros(K)
    return _params(a * U @ E.T, c * E @ V.T, b)


def sphere_collapsed_point(problem: Problem) -> Params:
    """Every w_k and every h_i equal to the same unit vector e_1: a critical point of the sphere
    UFM (a strict saddle; smallest Riemannian eigenvalue -1/(tau K sqrt(n)) for CE)."""
    K, d, N = problem.num_classes, problem.feature_dim, problem.num_samples
    e1 = np.eye(d)[0]
    return _params(np.tile(e1, (K, 1)), np.tile(e1[:, None], (1, N)), np.zeros(K))


def negative_curvature_direction(problem: Problem, hyper: Hyper,
                                 params: Params) -> tuple[Params, float]:
    """The explicit escape direction at a weight-decay critical point with rank W < d
    (docs/science.md, section 5): a unit a in null(W), (u, v) the top singular pair of
    G = dL/dZ, Delta = (u a^T, c a v^T, 0) / sqrt(1 + c^2) with the c that minimizes the
    curvature; the Rayleigh quotient along Delta is lam_bar - sqrt(dlam^2 + sigma_1(G)^2).

    Returns (direction as Params, predicted curvature)."""
    if problem.geometry != "wd":
        raise ValueError("negative_curvature_direction is for the weight-decay geometry")
    W = np.asarray(params.W, np.float64)
    K, d = W.shape
    with x64_scope("float64"):
        p64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
        G = np.asarray(logit_gradient(problem, hyper.astype(jnp.float64), p64))
    _, s_W, Vt_W = np.linalg.svd(W)
    rank = int(np.sum(s_W > 1e-8 * max(s_W.max(initial=0.0), 1e-300)))
    if rank >= d:
        raise ValueError(f"rank W = {rank} = d: null(W) is empty, no such direction")
    a = Vt_W[rank]  # unit, W a = 0
    U_G, s_G, Vt_G = np.linalg.svd(G, full_matrices=False)
    u, v, sigma = U_G[:, 0], Vt_G[0], s_G[0]
    lam_W, lam_H = float(hyper.lam_W), float(hyper.lam_H)
    lam_bar, dlam = (lam_W + lam_H) / 2, (lam_W - lam_H) / 2
    curvature = lam_bar - math.sqrt(dlam**2 + sigma**2)
    c = (curvature - lam_W) / sigma  # 2x2 eigenvector [[lam_W, sigma], [sigma, lam_H]] (1, c)
    scale = 1.0 / math.sqrt(1.0 + c**2)
    direction = _params(scale * np.outer(u, a), scale * c * np.outer(a, v), np.zeros(K))
    return direction, curvature


def origin_singular_value(problem: Problem, hyper: Hyper) -> float | None:
    """sigma = c_L / (K sqrt(n)), the (K-1)-fold (K-fold for MSE without bias) singular value
    of G = dL/dZ at the origin of a balanced weight-decay UFM with tau = 1 (docs/science.md,
    section 5): c_L = 1 for CE and MSE, 1 - alpha for label smoothing (|1 - alpha K/(K-1)| with
    alpha/(K-1) off target), (1-1/K)^(gamma-1) [(1-1/K) + (gamma/K) ln K] for focal.
    None where no formula is known. The origin is a strict saddle iff sqrt(lam_W lam_H) < sigma."""
    if not problem.balanced or problem.geometry != "wd" or float(hyper.tau) != 1.0:
        return None
    K, n = problem.num_classes, problem.n_per_class
    if problem.loss in ("ce", "mse"):
        c_L = 1.0
    elif problem.loss == "ls":
        c_L = 1.0 - float(hyper.alpha)
    elif problem.loss == "ls_off_target":
        c_L = abs(1.0 - float(hyper.alpha) * K / (K - 1))
    elif problem.loss == "focal":
        g = float(hyper.gamma)
        c_L = (1 - 1 / K) ** (g - 1) * ((1 - 1 / K) + g / K * math.log(K))
    else:
        return None
    return c_L / (K * math.sqrt(n))


def origin_eig_min(problem: Problem, hyper: Hyper) -> float | None:
    """Smallest Hessian eigenvalue at the origin of the (W, H) block, lam_bar -
    sqrt(dlam^2 + sigma^2), with multiplicity d (K-1) (d per singular value sigma of G); for
    MSE without a bias G has no centring and sigma is K-fold, so the multiplicity is d K (20 at
    K = 4, d = 5). None where sigma has no formula. With a bias the Hessian also has the bias
    block (lam_b plus the loss's curvature in b: at tau = 1 and lam_b = 0, 1/K on the centred
    directions for CE and 0 along 1), so the whole Hessian's smallest eigenvalue is the smaller
    of the two once lam_bar - sqrt(...) exceeds it."""
    sigma = origin_singular_value(problem, hyper)
    if sigma is None:
        return None
    lam_W, lam_H = float(hyper.lam_W), float(hyper.lam_H)
    return (lam_W + lam_H) / 2 - math.sqrt(((lam_W - lam_H) / 2) ** 2 + sigma**2)


# ------------------------------------------------------- generalized NC: the softmax code


def known_code_margin(K: int, d: int) -> float | None:
    """The softmax code's margin where it is known exactly (Jiang et al. 2024): K/(K-1) for
    K <= d + 1 (the simplex ETF), 1 - cos(2 pi/K) for d = 2 (the regular K-gon: a vertex's
    distance to the chord of its two neighbours); None otherwise (use `softmax_code`)."""
    if K <= d + 1:
        return K / (K - 1)
    if d == 2:
        return 1.0 - math.cos(2.0 * math.pi / K)
    return None
