"""Charts of the tangent space: the coordinates the Hessian acts in.

The trained variables only: W (unless the classifier is a fixed ETF), H, and b (when the
problem has a bias); on the sphere an orthonormal tangent basis of the oblique manifold (a
Householder basis of w_k^perp and of h_i^perp); on the norm balls the active constraints'
tangent spaces."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ufm.model.problem import (
    BALL_GEOMETRIES,
    Params,
    Problem,
)


def _householder_bases(X):
    """Orthonormal bases of x^perp for each row x of X (m, d): returns (m, d, d-1).

    The reflector P = I - 2 u u^T / (u^T u) with u = x + sign(x_1) e_1 maps e_1 to -sign(x_1) x,
    so its columns 2..d span x^perp (the stable choice of Householder's sign)."""
    d = X.shape[1]
    sign = jnp.where(X[:, 0] >= 0, 1.0, -1.0)
    u = X.at[:, 0].add(sign)
    P = jnp.eye(d, dtype=X.dtype)[None] - 2.0 * u[:, :, None] * u[:, None, :] / jnp.sum(
        u * u, axis=1)[:, None, None]
    return P[:, :, 1:]


class Coordinates(NamedTuple):
    """A linear chart of the tangent space at a point: `embed` maps coordinates (dim,) to a
    tangent Params, `extract` maps a Params (ambient) to coordinates; extract(embed(x)) = x."""

    dim: int
    embed: Callable
    extract: Callable


class _Block(NamedTuple):
    """One variable's chart: dim coordinates, embed (dim,) -> array, extract array -> (dim,)."""

    dim: int
    embed: Callable
    extract: Callable


def _flat_block(X) -> _Block:
    return _Block(X.size, lambda x: x.reshape(X.shape), lambda p: p.ravel())


def _sphere_block(X) -> _Block:
    """The tangent space of the sphere through X (all of X one vector, any radius): an implicit
    Householder basis of X^perp (the reflector of `_householder_bases`, never formed)."""
    x = X.ravel() / jnp.linalg.norm(X)
    u = x.at[0].add(jnp.where(x[0] >= 0, 1.0, -1.0))
    reflect = lambda v: v - 2.0 * u * (jnp.dot(u, v) / jnp.dot(u, u))
    embed = lambda c: reflect(jnp.concatenate([jnp.zeros((1,), c.dtype), c])).reshape(X.shape)
    return _Block(X.size - 1, embed, lambda p: reflect(p.ravel())[1:])


def _rows_block(X) -> _Block:
    """The tangent spaces of the spheres through the rows of X (m, d), each row its own
    sphere (any radius): Householder bases of x^perp, (m, d, d-1)."""
    m, d = X.shape
    basis = _householder_bases(X / jnp.linalg.norm(X, axis=1, keepdims=True))
    embed = lambda c: jnp.einsum("kij,kj->ki", basis, c.reshape(m, d - 1))
    return _Block(m * (d - 1), embed, lambda p: jnp.einsum("kij,ki->kj", basis, p).ravel())


def _transposed(block: _Block) -> _Block:
    return _Block(block.dim, lambda c: block.embed(c).T, lambda p: block.extract(p.T))


def coordinates(problem: Problem, params: Params,
                active: tuple[bool, bool] | None = None) -> Coordinates:
    """Coordinates of the trained variables: flat (W, H, b) for weight decay; a tangent basis of
    the oblique manifold on the sphere; on the norm balls, a tangent basis of the boundary
    sphere for a block whose constraint is `active` ((W, H) booleans from
    `active_constraints`, decided on the host), flat coordinates for one inside its ball.
    Non-trained blocks embed as zeros."""
    if problem.depth > 1:
        # The symmetry counts, certificates and constructed saddles here are the UFM's.
        raise ValueError(f"depth={problem.depth} is not allowed for the Hessian probes: 1 "
                         "(they check the UFM's landscape facts, docs/science.md, section 5)")
    learn_W, learn_b = problem.classifier == "learned", problem.bias
    if problem.geometry == "sphere":
        block_W, block_H = _rows_block(params.W), _transposed(_rows_block(params.H.T))
    elif problem.geometry in BALL_GEOMETRIES:
        active_W, active_H = active
        block_W = _sphere_block(params.W) if active_W else _flat_block(params.W)
        if not active_H:
            block_H = _flat_block(params.H)
        elif problem.geometry == "norm_ball":
            block_H = _sphere_block(params.H)
        else:
            block_H = _transposed(_rows_block(params.H.T))
    else:
        block_W, block_H = _flat_block(params.W), _flat_block(params.H)
    sizes = [block_W.dim if learn_W else 0, block_H.dim, params.b.size if learn_b else 0]
    zero_W, zero_b = jnp.zeros_like(params.W), jnp.zeros_like(params.b)

    def embed(x):
        xW, xH, xb = jnp.split(x, np.cumsum(sizes)[:2])
        return Params(block_W.embed(xW) if learn_W else zero_W, block_H.embed(xH),
                      xb if learn_b else zero_b)

    def extract(p):
        parts = ([block_W.extract(p.W)] if learn_W else []) + [block_H.extract(p.H)]
        return jnp.concatenate(parts + ([p.b] if learn_b else []))

    return Coordinates(sum(sizes), embed, extract)


# Dense eigh below this many coordinates, Lanczos above.
DENSE_MAX_DIM = 1500


def chart_dim(problem: Problem, active: tuple[bool, bool] | None = None) -> int:
    """Coordinates of the probes' chart (`coordinates`)."""
    K, d, N = problem.num_classes, problem.feature_dim, problem.num_samples
    k = d - 1 if problem.geometry == "sphere" else d
    dim_W, dim_H = K * k, N * k
    if problem.geometry in BALL_GEOMETRIES:
        dim_W -= bool(active[0])
        dim_H -= (1 if problem.geometry == "norm_ball" else N) * bool(active[1])
    return (dim_W if problem.classifier == "learned" else 0) + dim_H + (
        K if problem.bias else 0)


def choose_method(problem: Problem, method: str, num_iters: int | None,
                  active: tuple[bool, bool] | None = None) -> tuple[str, int | None, int]:
    dim = chart_dim(problem, active)
    if method == "auto":
        method = "dense" if dim <= DENSE_MAX_DIM else "lanczos"
    if method not in ("dense", "lanczos"):
        raise ValueError(f"method={method!r} is not allowed: 'auto', 'dense' or 'lanczos'")
    num_iters = min(dim, 200 if num_iters is None else num_iters)
    return method, num_iters, dim


def as_float64(tree: Any) -> Any:
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x), jnp.float64), tree)
