"""The softmax losses streamed over blocks of classes: the K x N logits are never held at once.

For K classes and N samples the logits Z = W H + b 1^T take K N numbers: 40 GB at K = 10^5
with one sample per class in float32. The softmax losses need only, per sample, the
log-sum-exp over classes, the target logit z_y and (label smoothing) the sum of the logits:

    lse_i = m_i + log sum_c sum_{k in block c} exp(z_ki - m_i)    (m_i: a running max)
    CE   = lse - z_y
    LS   = lse - (1 - alpha) z_y - (alpha/K) sum_k z_k                       ("ls")
    LS'  = lse - (1 - alpha - alpha/(K-1)) z_y - (alpha/(K-1)) sum_k z_k     ("ls_off_target")
    focal = -(1 - p_y)^gamma log p_y,  log p_y = z_y - lse

z_y = <w_{y_i}, h_i> + b_{y_i} is a gather, sum_k z_k = <sum_k w_k, h_i> + sum_k b_k a matvec;
the log-sum-exp is a `lax.scan` over class blocks of the online (running-max) accumulation.
Its gradient is a custom VJP, a second scan over the blocks (softmax block = exp(S_c - lse)):
three matmuls a block, O(block N) memory, not O(K N), equal to the dense path's to round-off.
Both scans rematerialize their blocks (`jax.checkpoint`), so reverse-over-reverse
Hessian-vector products stay O(block N) too. `ufm.model.problem.mean_loss` switches to this path
when K N exceeds `STREAM_ABOVE` (`ufm.model.problem.streams`).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ufm.model import losses as _losses

# The losses this module streams (single labels; pick-all-label and MSE stay dense).
STREAMED_LOSSES = ("ce", "ls", "ls_off_target", "focal")
# Stream when the logits would hold more than this many numbers (64 MB of float32).
STREAM_ABOVE = 1 << 24
# Aim for blocks of about this many logits (8 MB of float32): small enough for a cache-sized
# working set, large enough that each block is a good matmul.
BLOCK_LOGITS = 1 << 21


def block_size(num_classes: int, num_samples: int) -> int:
    """Classes per block: about BLOCK_LOGITS / N, at least 8, a multiple of 8, at most K."""
    rows = max(8, (BLOCK_LOGITS // max(num_samples, 1)) // 8 * 8)
    return min(num_classes, rows)


def _blocks(W, b, size):
    """W (K, d) and b (K,) as (num_blocks, size, ...) with the last block padded; padded rows
    get a bias of -inf-like value so they add nothing to the log-sum-exp."""
    K = W.shape[0]
    num_blocks = math.ceil(K / size)
    pad = num_blocks * size - K
    low = jnp.finfo(W.dtype).min / 4  # finite: no inf - inf in the running max
    W_pad = jnp.pad(W, ((0, pad), (0, 0)))
    b_pad = jnp.concatenate([b, jnp.full((pad,), low, b.dtype)])
    return W_pad.reshape(num_blocks, size, -1), b_pad.reshape(num_blocks, size)


def _running_logsumexp(W_blocks, b_blocks, H):
    """lse_i over every block's logits W_c H + b_c 1^T, by a running max and sum (N,)."""
    N = H.shape[1]

    @jax.checkpoint  # differentiated (Hessian-vector products): recompute, never store, a block
    def body(carry, block):
        running_max, running_sum = carry
        W_c, b_c = block
        S = W_c @ H + b_c[:, None]  # (size, N): the only logits alive
        new_max = jnp.maximum(running_max, jax.lax.stop_gradient(jnp.max(S, axis=0)))
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(
            jnp.exp(S - new_max[None, :]), axis=0)
        return (new_max, running_sum), None

    start = (jnp.full((N,), jnp.finfo(H.dtype).min / 4, H.dtype), jnp.zeros((N,), H.dtype))
    (running_max, running_sum), _ = jax.lax.scan(body, start, (W_blocks, b_blocks))
    return running_max + jnp.log(running_sum)


@jax.custom_vjp
def _blocked_logsumexp(W_blocks, b_blocks, H):
    return _running_logsumexp(W_blocks, b_blocks, H)


def _blocked_logsumexp_fwd(W_blocks, b_blocks, H):
    lse = _running_logsumexp(W_blocks, b_blocks, H)
    return lse, (W_blocks, b_blocks, H, lse)


def _blocked_logsumexp_bwd(residuals, cotangent):
    """d lse_i / d S_ki = softmax_ki: per block P = exp(S_c - lse) g, then dW_c = P H^T,
    db_c = P 1 and dH += W_c^T P: three matmuls a block and one exp, nothing of the forward
    pass redone but the block's logits (autodiff through the running max does more)."""
    W_blocks, b_blocks, H, lse = residuals

    @jax.checkpoint  # itself differentiated by reverse-over-reverse Hessian-vector products
    def body(grad_H, block):
        W_c, b_c = block
        P = jnp.exp(W_c @ H + b_c[:, None] - lse[None, :]) * cotangent[None, :]
        return grad_H + W_c.T @ P, (P @ H.T, jnp.sum(P, axis=1))

    grad_H, (grad_W, grad_b) = jax.lax.scan(body, jnp.zeros_like(H), (W_blocks, b_blocks))
    return grad_W, grad_b, grad_H


_blocked_logsumexp.defvjp(_blocked_logsumexp_fwd, _blocked_logsumexp_bwd)


def logsumexp_over_classes(W: ArrayLike, H: ArrayLike, b: ArrayLike, tau: ArrayLike,
                           size: int) -> jax.Array:
    """lse_i of S = (W H + b 1^T) / tau over the K classes, (N,), in blocks of `size` classes.
    Reverse-mode differentiable (a custom VJP, itself differentiable in reverse mode); not in
    forward mode, so Hessian-vector products of streamed problems are reverse-over-reverse
    (`ufm.analysis.landscape.hvp`)."""
    # Dividing W and b rather than the logits: one pass less over each (size, N) block.
    W_blocks, b_blocks = _blocks(W / tau, b / tau, size)
    return _blocked_logsumexp(W_blocks, b_blocks, H)


def per_sample_loss(loss: str, W: ArrayLike, H: ArrayLike, b: ArrayLike, labels: ArrayLike,
                    hyper: _losses.LossHyper, size: int) -> jax.Array:
    """The per-sample loss (N,) of `ufm.model.losses` on S = (W H + b 1^T) / tau, streamed over
    blocks of `size` classes."""
    if loss not in STREAMED_LOSSES:
        raise ValueError(f"loss={loss!r} is not allowed for streamed logits: one of "
                         f"{list(STREAMED_LOSSES)}")
    K = W.shape[0]
    tau = hyper.tau
    lse = logsumexp_over_classes(W, H, b, tau, size)
    target = (jnp.sum(W[labels].T * H, axis=0) + b[labels]) / tau  # s_y, (N,)
    if loss == "ce":
        return lse - target
    if loss == "focal":
        return _losses.focal_from_log_p(target - lse, hyper.gamma)
    total = (jnp.sum(W, axis=0) @ H + jnp.sum(b)) / tau  # sum_k s_k, (N,)
    alpha = hyper.alpha
    if loss == "ls":
        return lse - (1.0 - alpha) * target - alpha / K * total
    off = alpha / (K - 1)  # ls_off_target
    return lse - (1.0 - alpha - off) * target - off * total
