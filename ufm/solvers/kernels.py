"""A Pallas kernel for the one-pass gradient-descent step of the weight-decay UFM.

One sweep over H in blocks of columns. For each block B (held on chip):

    Z_B = W H_B + b 1^T,   G_B = (1/(N tau)) dL/dS at S = Z_B / tau   (`ufm.model.losses`),
    H_B <- H_B - lr (W^T G_B + lam_H H_B),   dW_B = G_B H_B^T,   db_B = G_B 1,

so H is read once and written once per step: 2 d N x itemsize bytes, the bandwidth floor of a
GD step. The partial dW_B, db_B (one K x d block per column block, K / block of H's size) are
summed afterwards and W, b updated by XLA, from the same old point as the reference step.

Written for Pallas' Triton backend (GPU), where every block is a power of two: d must be one
(>= 16), K is padded (W and b are small and padded per step; padded classes are kept out of the
softmax and of G), blocks of columns are a power of two and the last one is shifted back to end
at column N, its columns that the block before it already updated masked out of G and of the
store. H is updated in place. Matmuls run at full float32 precision (IEEE, never TF32; see
`ufm.model.problem.x64_scope`). On a CPU the kernel runs in Pallas' interpret mode: slow, and how
the
tests hold it to the XLA fast path (`ufm.solvers.fast_step`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from ufm.model import losses as _losses
from ufm.model.problem import Hyper, Params, Problem

KERNELS = ("xla", "pallas")
# Elements of an H block (d x block): 32 KB of float32, so a block stays on chip beside W
# (a starting point, not yet tuned on a GPU).
BLOCK_ELEMENTS = 8192
# Hyper fields the kernel reads, in the order they are packed into its scalar input (padded
# to 8: Triton loads power-of-two blocks).
_SCALARS = ("lam_H", "lr", "tau", "alpha", "gamma", "kappa", "M")


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def supports(problem: Problem, solver: str) -> bool:
    """The kernel covers plain GD on the weight-decay UFM with one label per sample (every
    loss, bias on or off, learned or fixed-ETF classifier, any class counts), with d a power
    of two >= 16 and N >= 16."""
    return (solver == "gd" and problem.geometry == "wd" and problem.depth == 1
            and not problem.multilabel and problem.feature_dim >= 16
            and _is_power_of_two(problem.feature_dim) and problem.num_samples >= 16)


def _layout(problem: Problem) -> tuple[int, int, int]:
    """(padded K, columns per block, number of blocks)."""
    K_pad = max(16, 1 << (problem.num_classes - 1).bit_length())
    block = min(128, max(16, BLOCK_ELEMENTS // problem.feature_dim))
    block = min(block, 1 << (problem.num_samples.bit_length() - 1))  # at most N
    return K_pad, block, pl.cdiv(problem.num_samples, block)


def _dot(a, b, contract):
    """Full-precision matmul (IEEE float32 on the Triton backend, not TF32)."""
    return jax.lax.dot_general(a, b, (contract, ((), ())), precision=jax.lax.Precision.HIGHEST)


def _step_kernel(W_ref, b_ref, scalars_ref, labels_ref, H_ref, H_out_ref, dW_ref, db_ref, *,
                 problem: Problem, block: int):
    K, N = problem.num_classes, problem.num_samples
    K_pad = W_ref.shape[0]
    j = pl.program_id(0)
    lam_H, lr, tau, alpha, gamma, kappa, M = (scalars_ref[i] for i in range(len(_SCALARS)))
    hyper = Hyper(lam_H=lam_H, lr=lr, tau=tau, alpha=alpha, gamma=gamma, kappa=kappa, M=M)
    # The last block ends at column N; columns before j * block are the previous block's.
    start = jnp.minimum(j * block, N - block)
    new = start + jax.lax.broadcasted_iota(jnp.int32, (1, block), 1) >= j * block
    columns = pl.ds(start, block)
    rows = pl.ds(jnp.int32(0), H_ref.shape[0])  # int32 like `start`, also under x64
    H = pl_triton.load(H_ref.at[rows, columns])  # (d, block)
    W = W_ref[...]  # (K_pad, d), zero rows below K
    Z = _dot(W, H, ((1,), (0,)))  # (K_pad, block)
    if problem.bias:
        Z = Z + b_ref[...][:, None]
    classes = jax.lax.broadcasted_iota(jnp.int32, (K_pad, 1), 0)
    is_class = classes < K
    # Padded classes get a finite, very negative logit: exp -> 0 in the softmax, and no
    # 0 x inf in the losses that take log-probabilities.
    S = jnp.where(is_class, Z / tau, jnp.finfo(Z.dtype).min / 4)
    labels = pl_triton.load(labels_ref.at[columns])
    Y = (classes == labels[None, :]).astype(Z.dtype)
    dS = _losses.LOGIT_GRADIENTS[problem.loss](S, Y, hyper, num_classes=K)
    G = jnp.where(is_class & new, dS, 0.0) * (1.0 / N) / tau
    H_new = H - lr * (_dot(W, G, ((0,), (0,))) + lam_H * H)
    pl_triton.store(H_out_ref.at[rows, columns], H_new, mask=jnp.broadcast_to(new, H.shape))
    dW_ref[...] = _dot(G, H, ((1,), (1,)))  # (K_pad, d): this block's share of G H^T
    db_ref[...] = jnp.sum(G, axis=1)


def gd_step(problem: Problem, hyper: Hyper, params: Params, *, interpret: bool | None = None
            ) -> Params:
    """One plain gradient-descent step of the weight-decay UFM through the kernel; equal to
    `fast_step.plain_step` with optax.sgd to round-off. `interpret` defaults to True off GPUs."""
    K, d, N = problem.num_classes, problem.feature_dim, problem.num_samples
    K_pad, block, blocks = _layout(problem)
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    W, H, b = params.W, params.H, params.b
    dtype = H.dtype
    W_pad = jnp.zeros((K_pad, d), dtype).at[:K].set(W)
    b_pad = jnp.zeros((K_pad,), dtype).at[:K].set(b)
    scalars = jnp.zeros((8,), dtype).at[:len(_SCALARS)].set(
        jnp.stack([jnp.asarray(getattr(hyper, f), dtype) for f in _SCALARS]))
    labels = jnp.asarray(problem.labels)
    full = lambda shape: pl.BlockSpec(shape, lambda j: (0,) * len(shape))
    anywhere = pl.BlockSpec(memory_space=pl.ANY)
    H_new, dW, db = pl.pallas_call(
        functools.partial(_step_kernel, problem=problem, block=block),
        out_shape=(jax.ShapeDtypeStruct((d, N), dtype),
                   jax.ShapeDtypeStruct((blocks, K_pad, d), dtype),
                   jax.ShapeDtypeStruct((blocks, K_pad), dtype)),
        grid=(blocks,),
        in_specs=[full((K_pad, d)), full((K_pad,)), full((8,)), anywhere, anywhere],
        out_specs=(anywhere, pl.BlockSpec((None, K_pad, d), lambda j: (j, 0, 0)),
                   pl.BlockSpec((None, K_pad), lambda j: (j, 0))),
        input_output_aliases={4: 0},  # H is updated in place
        interpret=interpret,
        compiler_params=None if interpret else pl_triton.CompilerParams(num_warps=4,
                                                                        num_stages=1),
        name="ufm_gd_step",
    )(W_pad, b_pad, scalars, labels, H)
    lr = hyper.lr
    if problem.classifier == "learned":
        grad_W = jnp.sum(dW, axis=0)[:K, :d] + hyper.lam_W * W
        W = W + (-lr) * grad_W
    if problem.bias:
        b = b + (-lr) * (jnp.sum(db, axis=0)[:K] + hyper.lam_b * b)
    return params._replace(W=W, H=H_new, b=b)
