"""`ufm.model.streaming`: the softmax losses streamed over class blocks equal the dense logits' to
round-off (value, gradient, Hessian-vector products)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.model import losses, streaming

K, D, N_PER = 37, 6, 2  # 37 classes in blocks of 8: five blocks, the last one padded


@pytest.mark.parametrize("loss", streaming.STREAMED_LOSSES)
def test_streamed_loss_gradient_and_hvp_equal_the_dense_path(x64, loss):
    rng = np.random.default_rng(0)
    W, H, b = (jnp.asarray(rng.normal(size=s)) for s in ((K, D), (D, K * N_PER), (K,)))
    labels = jnp.asarray(np.repeat(np.arange(K), N_PER))
    Y = jax.nn.one_hot(labels, K).T
    hyper = ufm.Hyper(tau=0.3, alpha=0.2, gamma=1.5).astype(jnp.float64)
    dense = lambda W, H, b: jnp.mean(losses.LOSSES[loss]((W @ H + b[:, None]) / hyper.tau, Y,
                                                         hyper))
    stream = lambda W, H, b: jnp.mean(streaming.per_sample_loss(loss, W, H, b, labels, hyper, 8))
    value, grad = jax.value_and_grad(dense, argnums=(0, 1, 2))(W, H, b)
    value_s, grad_s = jax.value_and_grad(stream, argnums=(0, 1, 2))(W, H, b)
    assert float(value_s) == pytest.approx(float(value), rel=1e-14)
    tangent = tuple(jnp.asarray(rng.normal(size=x.shape)) for x in (W, H, b))
    hvp = jax.jvp(jax.grad(dense, argnums=(0, 1, 2)), (W, H, b), tangent)[1]
    hvp_s = jax.grad(lambda *a: sum(jnp.vdot(g, t) for g, t in zip(
        jax.grad(stream, argnums=(0, 1, 2))(*a), tangent)), argnums=(0, 1, 2))(W, H, b)
    for exact, got in list(zip(grad, grad_s)) + list(zip(hvp, hvp_s)):
        assert float(jnp.max(jnp.abs(got - exact)) / jnp.max(jnp.abs(exact))) < 1e-12
