"""Codes of generalized neural collapse, found numerically (docs/science.md, section 4): the
softmax code (the tau -> 0 limit of the sphere UFM with one feature per class) and the Tammes
code (the best spherical packing). Both need solvers, so they sit above them; their exactly
known margins are closed forms (`ufm.theory.known_code_margin`).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ufm import host_metrics
from ufm.problem import Hyper, Problem
from ufm.solvers import solve_batch


class Code(NamedTuple):
    """A configuration of K unit vectors in R^d: W (K, d), its minimum one-vs-rest distance
    (the GNC margin) and its minimum pairwise distance (the Tammes value)."""

    W: np.ndarray
    margin: float
    tammes: float


def _code(W) -> Code:
    W = np.asarray(W, np.float64)
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    return Code(W, float(np.min(host_metrics.one_vs_rest_margins(W))),
                host_metrics.min_pairwise_distance(W))


def softmax_code(K: int, d: int, *, starts: int = 16, seed: int = 0,
                 taus=(0.1, 0.03, 0.01, 0.003), steps: int = 1500) -> Code:
    """The softmax code (Jiang et al. 2024): K unit vectors in R^d maximizing the minimum
    one-vs-rest distance min_k dist(w_k, conv{w_j : j != k}).

    It is the tau -> 0 limit of the sphere-constrained CE UFM with one free feature per class:
    max over unit h of min_j (w_k - w_j).h is exactly dist(w_k, conv{w_j}). So: `starts` random
    starts of that UFM solved together (one vmapped L-BFGS call per temperature, each
    temperature starting where the previous ended), the exact margin of every end point by QP,
    the best kept. For K <= d + 1 it is the simplex ETF (margin K/(K-1))."""
    problem = Problem(num_classes=K, feature_dim=d, n_per_class=1, geometry="sphere",
                       bias=False, dtype="float64")
    seeds = [seed * 100_003 + i for i in range(starts)]
    start = None
    for tau in taus:
        hypers = Hyper(tau=np.full(starts, float(tau)))
        result = solve_batch(problem, hypers, seeds, solver="lbfgs", steps=steps,
                             log_every=steps, tol=1e-12, start=start, progress=False)
        start = result.params
    codes = [_code(np.asarray(start.W)[i]) for i in range(starts)]
    return max(codes, key=lambda c: c.margin)


def tammes_code(K: int, d: int, *, starts: int = 32, seed: int = 0,
                temperatures=(0.05, 0.01, 0.002), steps: int = 2000) -> Code:
    """The Tammes code: K unit vectors in R^d maximizing the minimum pairwise distance.
    Minimizes the soft maximum t log sum_{j<k} exp(cos(w_j, w_k)/t) over the sphere by
    Riemannian Adam from `starts` random starts (vmapped), lowering t; the best kept."""
    with jax.enable_x64(True):
        mask = jnp.asarray(np.triu(np.ones((K, K), bool), 1))

        def soft_max_cos(W, t):
            Wn = W / jnp.linalg.norm(W, axis=1, keepdims=True)
            cos = Wn @ Wn.T
            return t * jax.nn.logsumexp(jnp.where(mask, cos / t, -jnp.inf))

        def run(W, t):
            tx = optax.adam(1e-2)

            def step(carry, _):
                W, state = carry
                g = jax.grad(soft_max_cos)(W, t)
                g = g - W * jnp.sum(W * g, axis=1, keepdims=True)  # tangent part
                updates, state = tx.update(g, state)
                W = W + updates
                return (W / jnp.linalg.norm(W, axis=1, keepdims=True), state), None

            (W, _), _ = jax.lax.scan(step, (W, tx.init(W)), None, length=steps)
            return W

        run = jax.jit(jax.vmap(run, in_axes=(0, None)))
        W = jax.random.normal(jax.random.key(seed), (starts, K, d), jnp.float64)
        W = W / jnp.linalg.norm(W, axis=2, keepdims=True)
        for t in temperatures:
            W = run(W, t)
        W = np.asarray(W)
    codes = [_code(W[i]) for i in range(starts)]
    return max(codes, key=lambda c: c.tammes)
