"""Per-sample losses on logits (docs/science.md, section 2).

Every loss has the signature `loss(Z, Y, hyper) -> (N,)` with logits Z (K, N), targets Y (K, N)
(one-hot for single labels; label multiplicities for pick-all-label) and the traced `Hyper` for
alpha, gamma, kappa and M. Temperature is applied by the caller (`ufm.model.problem.mean_loss`
passes
Z / tau), so every loss takes it the same way.

Each loss also has its gradient with respect to the logits in closed form (`LOGIT_GRADIENTS`,
same signature plus an optional `num_classes` for logits padded with rows that are not classes,
returning dL/dZ of shape (K, N)): the fast path of the first-order solvers (`ufm.solvers.fast_step`,
`ufm.solvers.kernels`) uses it instead of autodiff, and the tests hold it to `jax.grad` of the loss.
"""
from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


class LossHyper(Protocol):
    """The hyperparameters a loss reads, by name (`ufm.Hyper` has them all; a protocol, so
    this module stays below `ufm.model.problem`): label smoothing alpha, focal gamma,
    rescaled-MSE kappa and M, and the temperature tau (the streamed losses divide by it)."""

    alpha: ArrayLike
    gamma: ArrayLike
    kappa: ArrayLike
    M: ArrayLike
    tau: ArrayLike


def _top_and_rest(Z):
    """(one-hot of each column's argmax (K, N), s = sum over the other classes of
    exp(z_j - max z) (1, N)): log sum exp(z - max z) = log1p(s) exactly, without the round-off
    of log(1 + s) that makes a small loss exactly 0 (at tau = 0.03 and a margin near 1,
    s ~ 1e-14: below float32's and near float64's resolution of 1 + s)."""
    top = jax.nn.one_hot(jnp.argmax(Z, axis=0), Z.shape[0], axis=0, dtype=Z.dtype)
    shifted = Z - jnp.max(Z, axis=0, keepdims=True)
    rest = jnp.sum(jnp.exp(shifted) * (1 - top), axis=0, keepdims=True)
    return top, shifted, rest


def log_softmax(Z: ArrayLike) -> jax.Array:
    """log softmax over classes (axis 0), accurate to relative precision where log p -> 0
    (`_top_and_rest`); jax.nn.log_softmax gives an exact 0 there once p rounds to 1."""
    top, shifted, rest = _top_and_rest(Z)
    # At the argmax the shift is 0 by definition: say so, rather than trust that the compiler
    # rounds z and max z alike (XLA may compute the two from differently rounded logits).
    return jnp.where(top > 0, 0.0, shifted) - jnp.log1p(rest)


def softmax_minus_target(Z: ArrayLike, Y: ArrayLike) -> jax.Array:
    """m softmax(z) - y with m = sum_k y_k (1 for one label; a label set's size for
    pick-all-label), and for one label p_y - 1 taken as -sum_{j != y} p_j: the form p_y - 1
    cancels to 0 once p_y rounds to 1, dropping the pull towards w_y. No argmax: one more sum
    over the classes than softmax itself (the fast path's hot loop)."""
    P = jax.nn.softmax(Z, axis=0)
    count = jnp.sum(Y, axis=0, keepdims=True)
    others = P * (1 - Y)
    rest = jnp.sum(others, axis=0, keepdims=True)  # 1 - p_y for one label, summed, not cancelled
    return count * others - Y * jnp.where(count == 1, rest, 1 - count * P)


def cross_entropy(Z: ArrayLike, Y: ArrayLike, hyper: LossHyper | None = None) -> jax.Array:
    """CE: -log softmax(z)_y  (for a multi-hot Y: sum over the labels, i.e. pick-all-label)."""
    return -jnp.sum(Y * log_softmax(Z), axis=0)


def label_smoothing(Z: ArrayLike, Y: ArrayLike, hyper: LossHyper) -> jax.Array:
    """Cross entropy against q = (1 - alpha) e_y + (alpha / K) 1 (Szegedy et al. 2016).

    This is the PyTorch convention (loss "ls"); `label_smoothing_off_target` ("ls_off_target")
    puts alpha/(K-1) on every other class instead.
    """
    K = Z.shape[0]
    Q = (1.0 - hyper.alpha) * Y + hyper.alpha / K
    return -jnp.sum(Q * log_softmax(Z), axis=0)


def label_smoothing_off_target(Z: ArrayLike, Y: ArrayLike, hyper: LossHyper,
                               num_classes: int | None = None) -> jax.Array:
    """Cross entropy against q = (1 - alpha) e_y + alpha/(K-1) (1 - e_y): the target keeps
    exactly 1 - alpha and the other classes share alpha (the convention of many lecture slides;
    Mueller et al. 2019 write it either way). It is "ls" with alpha' = alpha K/(K-1)."""
    K = Z.shape[0] if num_classes is None else num_classes
    return -jnp.sum(_off_target(Y, hyper.alpha, K) * log_softmax(Z), axis=0)


def _off_target(Y, alpha, K):
    return (1.0 - alpha) * Y + alpha / (K - 1) * (1.0 - Y)


def focal(Z: ArrayLike, Y: ArrayLike, hyper: LossHyper) -> jax.Array:
    """Focal loss (Lin et al. 2017): -(1 - p_y)^gamma log p_y, p = softmax(z)."""
    return focal_from_log_p(jnp.sum(Y * log_softmax(Z), axis=0), hyper.gamma)


def focal_from_log_p(log_p_y: ArrayLike, gamma: ArrayLike) -> jax.Array:
    """-(1 - p_y)^gamma log p_y from log p_y."""
    one_minus_p = -jnp.expm1(log_p_y)  # 1 - p_y without cancellation when p_y -> 1
    return -(one_minus_p**gamma) * log_p_y


def mse(Z: ArrayLike, Y: ArrayLike, hyper: LossHyper | None = None) -> jax.Array:
    """MSE: (1/2) ||z - e_y||^2."""
    return 0.5 * jnp.sum((Z - Y) ** 2, axis=0)


def mse_rescaled(Z: ArrayLike, Y: ArrayLike, hyper: LossHyper) -> jax.Array:
    """Rescaled MSE (Hui & Belkin 2021; Zhou et al. 2022):
    (1/K) [kappa (z_y - M)^2 + sum_{j != y} z_j^2]."""
    K = Z.shape[0]
    weights = 1.0 + (hyper.kappa - 1.0) * Y
    return jnp.sum(weights * (Z - hyper.M * Y) ** 2, axis=0) / K


def pick_all_label(Z: ArrayLike, Y: ArrayLike, hyper: LossHyper | None = None) -> jax.Array:
    """Pick-all-label loss (Li et al. 2024): sum_{k in S} CE(z, k) for label multiset S (Y
    holds the multiplicities)."""
    return cross_entropy(Z, Y)


def cross_entropy_grad(Z: ArrayLike, Y: ArrayLike, hyper: LossHyper | None = None,
                       num_classes: int | None = None) -> jax.Array:
    """d CE / dz = m softmax(z) - y, m = sum_k y_k (1 for one label; the set size for
    pick-all-label). p_y - 1 cancels to 0 once p_y rounds to 1; where the loss can get that
    small (no penalty on W and H), `accurate_cross_entropy_grad` is used instead."""
    return jnp.sum(Y, axis=0, keepdims=True) * jax.nn.softmax(Z, axis=0) - Y


def accurate_cross_entropy_grad(Z: ArrayLike, Y: ArrayLike, hyper: LossHyper | None = None,
                                num_classes: int | None = None) -> jax.Array:
    """d CE / dz with p_y - 1 = -sum_{j != y} p_j (`softmax_minus_target`): what the fast path
    uses on the sphere and the norm balls, where the loss falls like exp(-margin / tau). It
    costs one more sum over the classes per step (about a quarter of a small problem's step on
    a CPU), so the weight-decay UFM, whose loss the penalties keep away from 0, keeps the
    plain form."""
    return softmax_minus_target(Z, Y)


def label_smoothing_grad(Z: ArrayLike, Y: ArrayLike, hyper: LossHyper,
                         num_classes: int | None = None) -> jax.Array:
    """d LS / dz = softmax(z) - q with q = (1 - alpha) y + alpha / K (q sums to one)."""
    K = Z.shape[0] if num_classes is None else num_classes
    return jax.nn.softmax(Z, axis=0) - ((1.0 - hyper.alpha) * Y + hyper.alpha / K)


def label_smoothing_off_target_grad(Z: ArrayLike, Y: ArrayLike, hyper: LossHyper,
                                    num_classes: int | None = None) -> jax.Array:
    """d LS / dz = softmax(z) - q with q = (1 - alpha) y + alpha/(K-1) (1 - y) (sums to one
    over the K classes; rows padded beyond them are masked by the caller)."""
    K = Z.shape[0] if num_classes is None else num_classes
    return jax.nn.softmax(Z, axis=0) - _off_target(Y, hyper.alpha, K)


def focal_grad(Z: ArrayLike, Y: ArrayLike, hyper: LossHyper,
               num_classes: int | None = None) -> jax.Array:
    """d focal / dz = c (y - softmax(z)) with l = log p_y and
    c = gamma p_y (1 - p_y)^(gamma - 1) l - (1 - p_y)^gamma (the gamma = 0 term is zero, as
    in JAX's derivative of x^gamma)."""
    log_p = log_softmax(Z)
    log_p_y = jnp.sum(Y * log_p, axis=0, keepdims=True)
    one_minus_p = -jnp.expm1(log_p_y)
    slope = jnp.where(hyper.gamma == 0, 0.0,
                      hyper.gamma * one_minus_p ** (hyper.gamma - 1.0)) * jnp.exp(log_p_y)
    coefficient = slope * log_p_y - one_minus_p**hyper.gamma
    return coefficient * (Y - jnp.exp(log_p))


def mse_grad(Z: ArrayLike, Y: ArrayLike, hyper: LossHyper | None = None,
             num_classes: int | None = None) -> jax.Array:
    """d MSE / dz = z - y."""
    return Z - Y


def mse_rescaled_grad(Z: ArrayLike, Y: ArrayLike, hyper: LossHyper,
                      num_classes: int | None = None) -> jax.Array:
    """d rescaled MSE / dz = (2/K) w (z - M y), w = 1 + (kappa - 1) y."""
    K = Z.shape[0] if num_classes is None else num_classes
    return (2.0 / K) * (1.0 + (hyper.kappa - 1.0) * Y) * (Z - hyper.M * Y)


LOSSES = {
    "ce": cross_entropy,
    "ls": label_smoothing,
    "ls_off_target": label_smoothing_off_target,
    "focal": focal,
    "mse": mse,
    "mse_rescaled": mse_rescaled,
    "pick_all_label": pick_all_label,
}


# The logit gradients to use where the loss can vanish (`accurate_cross_entropy_grad`).
ACCURATE_LOGIT_GRADIENTS = {"ce": accurate_cross_entropy_grad,
                            "pick_all_label": accurate_cross_entropy_grad}

LOGIT_GRADIENTS = {
    "ce": cross_entropy_grad,
    "ls": label_smoothing_grad,
    "ls_off_target": label_smoothing_off_target_grad,
    "focal": focal_grad,
    "mse": mse_grad,
    "mse_rescaled": mse_rescaled_grad,
    "pick_all_label": cross_entropy_grad,
}
