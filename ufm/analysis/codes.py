"""Codes of generalized neural collapse, found numerically (docs/science.md, section 4): the
softmax code (the tau -> 0 limit of the sphere UFM with one feature per class) and the Tammes
code (the best spherical packing). Both need solvers, so they sit above them; their exactly
known margins are closed forms (`ufm.analysis.theory.known_code_margin`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from ufm.analysis import constructions, gnc, polish
from ufm.model.problem import normalize_columns, normalize_rows


class Code(NamedTuple):
    """A configuration of K unit vectors in R^d: W (K, d), its minimum one-vs-rest distance
    (the GNC margin) and its minimum pairwise distance (the Tammes value); for a polished
    code, the certificate of its KKT point (`ufm.analysis.polish.Certificate` for a Tammes
    code, `ufm.analysis.polish.SoftmaxCertificate` for a softmax code)."""

    W: np.ndarray
    margin: float
    tammes: float
    certificate: polish.Certificate | polish.SoftmaxCertificate | None = None


# How far below d_min^2 / 2 a computed margin may fall (round-off of the per-class QPs).
MARGIN_BOUND_SLACK = 1e-10


def margin_bound_gap(W: ArrayLike) -> float:
    """min_k margin_k - d_min^2 / 2 for unit rows W: never negative in exact arithmetic. The
    plane {x : <x, w_k> = max_{j != k} <w_j, w_k>} separates w_k from every other w_j, at
    distance 1 - max_j <w_j, w_k> >= 1 - max_{i != j} <w_i, w_j> = d_min^2 / 2 from w_k, so
    dist(w_k, conv{w_j : j != k}) >= d_min^2 / 2 for every k."""
    W = np.asarray(W, np.float64)
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    return float(np.min(gnc.one_vs_rest_margins(W)) - gnc.min_pairwise_distance(W) ** 2 / 2)


def _code(W) -> Code:
    """The Code of W, its margin checked against the bound margin >= d_min^2 / 2
    (`margin_bound_gap`): a margin below it is a failed QP, never returned."""
    W = np.asarray(W, np.float64)
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    code = Code(W, float(np.min(gnc.one_vs_rest_margins(W))), gnc.min_pairwise_distance(W))
    if code.margin < code.tammes ** 2 / 2 - MARGIN_BOUND_SLACK:
        raise RuntimeError(f"the margin {code.margin!r} of a code of K={len(W)} points is below "
                           f"d_min^2 / 2 = {code.tammes ** 2 / 2!r}: the one-vs-rest QP failed")
    return code


OBJECTIVES = ("softmax", "tammes")


def polished_code(W: ArrayLike, objective: str) -> Code:
    """The code W polished to a KKT point of its max-min problem, with its certificate:
    objective "softmax" (the margin, `ufm.analysis.polish.polish_softmax`) or "tammes" (the
    minimum distance, `ufm.analysis.polish.polish_tammes`). Raises ValueError when no KKT
    point to 1e-12 is reached near W."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r} is not allowed: one of {list(OBJECTIVES)}")
    cert = (polish.polish_softmax if objective == "softmax" else polish.polish_tammes)(W)
    return _code(cert.W)._replace(certificate=cert)


def _best_polished(ends: Sequence[np.ndarray], best: Code, objective: str) -> Code:
    """The best of the end points `ends` polished (`polished_code`), unless it loses to the
    search's best code `best` (then `best`, uncertified): polishing must not lose."""
    certified = []
    for W in ends:
        try:
            certified.append(polished_code(W, objective))
        except ValueError:  # no KKT point near this end point
            pass
    value = (lambda c: c.margin) if objective == "softmax" else (lambda c: c.tammes)
    top = max(certified, key=value, default=None)
    if top is None or value(top) < value(best) - 1e-12:
        return best
    return top


def _soft_margin(V, tau):
    """tau log sum_{k, j != k} exp(-(w_k - w_j).h_k / tau) at W = normalize rows of V[0],
    h_k = normalize columns of V[1] (d, K): a smooth maximum of minus the margins, which tends
    to -min_k min_{j != k} (w_k - w_j).h_k as tau -> 0."""
    Z = normalize_rows(V[0]) @ normalize_columns(V[1])  # Z[j, k] = w_j . h_k
    gaps = jnp.diag(Z)[None, :] - Z  # (w_k - w_j) . h_k
    K = Z.shape[0]
    return tau * jax.nn.logsumexp(jnp.where(jnp.eye(K, dtype=bool), -jnp.inf, -gaps / tau))


LINESEARCHES = ("zoom", "backtracking")


def _lbfgs(fun, V, steps: int, tol, linesearch: str = "zoom"):
    """L-BFGS (optax) on `fun` from V until the gradient norm is below `tol` or `steps`
    iterations. linesearch "zoom" (strong Wolfe; fast) or "backtracking" (Armijo): at (13, 3)
    from the same 32 starts the Tammes search reaches 0.956409 with backtracking against
    0.9514-0.9526 with zoom, whose long curvature-fitted steps settle in the nearest basin of
    these many-basin landscapes, at about ten times the iterations."""
    if linesearch == "zoom":
        opt = optax.lbfgs()
    else:
        opt = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(
            max_backtracking_steps=40, store_grad=True))
    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
        V, state = carry
        value, grad = value_and_grad(V, state=state)
        updates, state = opt.update(grad, state, V, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(V, updates), state

    def going(carry):
        count = optax.tree.get(carry[1], "count")
        grad = optax.tree.get(carry[1], "grad")
        return (count == 0) | ((count < steps) & (optax.tree.norm(grad) >= tol))

    return jax.lax.while_loop(going, step, (V, opt.init(V)))[0]


def _sharpen(V, tau, steps: int, tol, linesearch: str):
    """`_soft_margin` at temperature tau minimized over unconstrained V (the pullback through
    normalization); returns the normalized (W, H)."""
    W, H = _lbfgs(lambda V: _soft_margin(V, tau), V, steps, tol, linesearch)
    return normalize_rows(W), normalize_columns(H)


def _soft_max_cos(W, tau):
    """tau log sum_{j < k} exp(cos(w_j, w_k) / tau): a smooth maximum of the pairwise cosines."""
    Wn = normalize_rows(W)
    K = W.shape[0]
    cos = Wn @ Wn.T
    return tau * jax.nn.logsumexp(jnp.where(jnp.triu(jnp.ones((K, K), bool), 1), cos / tau,
                                            -jnp.inf))


def _sharpen_tammes(W, tau, steps: int, tol, linesearch: str):
    return normalize_rows(_lbfgs(lambda W: _soft_max_cos(W, tau), W, steps, tol, linesearch))


# Every start at once, one temperature (traced) per call: one compilation per (K, d, starts,
# steps), reused across temperatures and across calls.
_sharpen_starts = jax.jit(jax.vmap(_sharpen, in_axes=(0, None, None, None, None)),
                          static_argnums=(2, 4))
_sharpen_tammes_starts = jax.jit(jax.vmap(_sharpen_tammes, in_axes=(0, None, None, None, None)),
                                 static_argnums=(2, 4))


def _check_linesearch(linesearch):
    if linesearch not in LINESEARCHES:
        raise ValueError(f"linesearch={linesearch!r} is not allowed: one of {list(LINESEARCHES)}")


def _starting_points(K, d, starts, seed, starts_from):
    W = jax.random.normal(jax.random.key(seed), (starts, K, d), jnp.float64)
    if starts_from is not None:  # given configurations first, then random ones
        W = jnp.concatenate([jnp.asarray(starts_from, jnp.float64).reshape(-1, K, d), W])
    return W


# The smooth objectives' gradients are of order one; below 1e-8 a step changes the margins by
# ~1e-16 and the line search works at float64's resolution (at 1e-12 optax's zoom line search
# never returned for one start at (K, d) = (10, 3), tau = 0.03, and a vmapped batch waits for
# its slowest start).
GRAD_TOL = 1e-8

# Starts whose certified margin bound is among the best this many get their exact QPs.
_EXACT_CONTENDERS = 8

# End points whose search values are among the best this many are polished to KKT points.
POLISHED_STARTS = 4

SOFTMAX_TAUS = (0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5)


def softmax_code(K: int, d: int, *, starts: int = 16, seed: int = 0,
                 taus: Sequence[float] = SOFTMAX_TAUS, steps: int = 1000,
                 starts_from: Sequence[ArrayLike] | None = None, linesearch: str = "zoom",
                 polished: bool = True, known: bool = True) -> Code:
    """The softmax code (Jiang et al. 2024): K unit vectors in R^d maximizing the minimum
    one-vs-rest distance min_k dist(w_k, conv{w_j : j != k}).

    It is the tau -> 0 limit of the sphere-constrained CE UFM with one free feature per class:
    max over unit h of min_j (w_k - w_j).h is exactly dist(w_k, conv{w_j}). The UFM's mean CE
    at temperature tau is about (1/K) sum_k sum_{j != k} exp(-(w_k - w_j).h_k / tau) near the
    limit, so its gradient vanishes like exp(-margin/tau): a solver with an absolute tolerance
    stops at once at small tau (what an earlier version did, stuck at the tau = 0.1 point).
    Minimized here instead: tau log of that sum (`_soft_margin`), the same minimizers, with a
    gradient that stays of order one (a convex combination of the active margins' gradients).
    `starts` random starts, vmapped, each temperature of `taus` starting where the previous
    ended (L-BFGS, at most `steps` iterations each); every end point certified by its exact
    margin (the per-class QP, `gnc.one_vs_rest_margins`) and the best kept.
    `starts_from`: configurations (m, K, d) to start from as well (e.g. a Tammes code).
    `linesearch`: "zoom" or "backtracking" (slower, finds better optima at larger K; `_lbfgs`).
    `known`: start from the known constructions as well (`ufm.analysis.constructions`).
    `polished`: the POLISHED_STARTS best end points are polished to KKT points of the max-min
    margin problem to round-off (`ufm.analysis.polish.polish_softmax`; the smoothing alone
    stops about 1e-5 short) and the best certified one is returned with its certificate,
    unless it loses to the search's best.
    For K <= d + 1 it is the simplex ETF (margin K/(K-1))."""
    _check_linesearch(linesearch)
    with jax.enable_x64(True):
        W = _starting_points(K, d, starts, seed, starts_from)
        if known:
            W = jnp.concatenate([jnp.asarray(constructions.starts(K, d, seed=seed)), W])
        V = (W, jnp.swapaxes(W, 1, 2))  # each feature starts at its classifier
        for tau in taus:
            V = _sharpen_starts(V, jnp.asarray(tau, jnp.float64), int(steps),
                                jnp.asarray(GRAD_TOL), linesearch)
        W, H = np.asarray(V[0]), np.asarray(V[1])
    # Each start's features certify a lower bound on its margin: for unit h_k,
    # dist(w_k, conv{w_j}) >= min_j (w_k - w_j).h_k (a separating direction), tight at the
    # optimum. The exact QPs run only for the _EXACT_CONTENDERS starts with the best bounds.
    Z = np.einsum("skd,sdj->skj", W, H)  # Z[s, j, k] = w_j . h_k
    gaps = np.einsum("skk->sk", Z)[:, None, :] - Z
    gaps[:, np.arange(K), np.arange(K)] = np.inf
    bounds = gaps.min(axis=(1, 2))
    finite = np.isfinite(W).all(axis=(1, 2)) & np.isfinite(H).all(axis=(1, 2))
    bounds = np.where(finite & np.isfinite(bounds), bounds, -np.inf)  # a start that broke
    contenders = np.argsort(-bounds)[:_EXACT_CONTENDERS]
    found = sorted((_code(W[s]) for s in contenders), key=lambda c: -c.margin)
    if not polished:
        return found[0]
    return _best_polished([c.W for c in found[:POLISHED_STARTS]], found[0], "softmax")


TAMMES_TAUS = (0.05, 0.01, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5)

# A restart round starts from perturbations of the best code so far, RESTART_EACH at each of
# these scales (relative to the unit rows), and from `starts // 4` fresh random points.
RESTART_SCALES = (0.05, 0.1, 0.2, 0.3)
RESTART_EACH = 4


def _tammes_search(W, temperatures, steps, linesearch, polished) -> Code:
    """One vmapped search from the starts W (m, K, d) down the temperatures, and the best end
    point, polished (see `tammes_code`)."""
    with jax.enable_x64(True):
        W = jnp.asarray(W, jnp.float64)
        for t in temperatures:
            W = _sharpen_tammes_starts(W, jnp.asarray(t, jnp.float64), int(steps),
                                       jnp.asarray(GRAD_TOL), linesearch)
        W = np.asarray(W)
    # A start whose iterate broke (non-finite, or a row shrunk to zero) is left out.
    whole = [bool(np.isfinite(w).all() and (np.linalg.norm(w, axis=1) > 0).all()) for w in W]
    distances = np.nan_to_num([gnc.min_pairwise_distance(w) if ok else -np.inf
                               for w, ok in zip(W, whole)], nan=-np.inf)
    best = _code(W[int(np.argmax(distances))])
    if not polished:
        return best
    ends = [W[s] for s in np.argsort(-distances)[:POLISHED_STARTS] if np.isfinite(distances[s])]
    return _best_polished(ends, best, "tammes")


def _perturbations(W, rng, starts) -> np.ndarray:
    """A restart round's starts: the code W perturbed at each of RESTART_SCALES, and random
    points."""
    K, d = W.shape
    near = [W + scale * rng.normal(size=W.shape) for scale in RESTART_SCALES
            for _ in range(RESTART_EACH)]
    return np.concatenate([np.stack(near), rng.normal(size=(max(starts // 4, 1), K, d))])


def tammes_code(K: int, d: int, *, starts: int = 32, seed: int = 0,
                temperatures: Sequence[float] = TAMMES_TAUS, steps: int = 1000,
                starts_from: Sequence[ArrayLike] | None = None, linesearch: str = "zoom",
                polished: bool = True, restarts: int = 0, known: bool = True) -> Code:
    """The Tammes code: K unit vectors in R^d maximizing the minimum pairwise distance.
    Minimizes the smooth maximum t log sum_{j<k} exp(cos(w_j, w_k)/t) over the sphere (the
    pullback through normalization) by L-BFGS from `starts` random starts (vmapped; and from
    `starts_from`, configurations (m, K, d), if given), lowering t to 3e-5 (its gradient is a
    convex combination of the closest pairs' and stays of order one). `polished`: the
    POLISHED_STARTS best end points are polished to KKT points of the max-min problem to
    round-off (`ufm.analysis.polish.polish_tammes`) and the best certified one is returned
    with its certificate (the smoothing alone stops about 1e-5 short); the search's best end
    point when none certifies, or with `polished=False`. `linesearch`: as in
    `softmax_code`. The `starts_from` configurations are also polished as they are (candidates
    of their own). `known`: start from the known constructions of K points and the subsets
    of larger ones as well (`ufm.analysis.constructions.starts`). `restarts`: rounds of
    restarts from perturbations of the best code so far (basin hopping), each kept only if it
    improves. `best_tammes_code` is the search that reaches the best-known values."""
    _check_linesearch(linesearch)
    if restarts < 0:
        raise ValueError(f"restarts={restarts!r} is not allowed: an integer >= 0")
    with jax.enable_x64(True):
        W = np.asarray(_starting_points(K, d, starts, seed, starts_from))
    if known:
        W = np.concatenate([constructions.starts(K, d, seed=seed), W])
    best = _tammes_search(W, temperatures, steps, linesearch, polished)
    if polished and starts_from is not None:
        # A given configuration is a candidate as it is, polished: the temperature schedule
        # starts hot and can carry a start out of its basin (an earlier best code of K = 26 in
        # R^3, 0.7010304, came back as 0.7009827).
        given = np.asarray(starts_from, np.float64).reshape(-1, K, d)
        best = _best_polished(list(given), best, "tammes")
    rng = np.random.default_rng(seed)
    for _ in range(restarts):
        again = _tammes_search(_perturbations(best.W, rng, starts), temperatures, steps,
                               linesearch, polished)
        if again.tammes > best.tammes + 1e-13:
            best = again
    return best


def best_tammes_code(K: int, d: int, *, seed: int = 0,
                     starts_from: Sequence[ArrayLike] | None = None) -> Code:
    """The search that reaches the best-known Tammes codes (`ufm.analysis.best_known`): 64
    random starts and the known constructions, the backtracking line search, two rounds of
    restarts from perturbations of the best, polished and certified. In R^3 it reached the
    best-known values of K = 5..30 (docs/softmax_vs_tammes.md) except K = 29 (0.6627975
    against 0.6629006, which three restart rounds from the K = 28 code plus a point found), at
    15 s (K = 5) to 16 minutes (K = 30) on two cores."""
    return tammes_code(K, d, starts=64, seed=seed, starts_from=starts_from,
                       linesearch="backtracking", restarts=2)
