import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import ufm
from ufm.model import losses

K, N = 4, 6
HYPER = ufm.Hyper(alpha=0.2, gamma=1.5, kappa=3.0, M=2.0)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(K, N))
    labels = np.arange(N) % K
    Y = np.eye(K)[labels].T
    return Z, labels, Y


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_gradients_match_finite_differences(x64, name):
    Z, _, Y = _data()
    fn = losses.LOSSES[name]
    hyper = HYPER.astype(jnp.float64)
    for tau in (1.0, 0.3):  # temperature is applied to z as the objective applies it
        check_grads(lambda z: jnp.sum(fn(z / tau, jnp.asarray(Y), hyper)), (jnp.asarray(Z),),
                    order=2, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_values_match_the_definitions(x64):
    Z, labels, Y = _data(1)
    idx = (labels, np.arange(N))
    p = np.exp(Z) / np.exp(Z).sum(0)
    hyper = HYPER.astype(jnp.float64)
    np.testing.assert_allclose(losses.cross_entropy(Z, Y), -np.log(p[idx]), rtol=1e-12)
    q = (1 - 0.2) * Y + 0.2 / K
    np.testing.assert_allclose(losses.label_smoothing(Z, Y, hyper), -(q * np.log(p)).sum(0),
                               rtol=1e-12)
    q_off = (1 - 0.2) * Y + 0.2 / (K - 1) * (1 - Y)  # the target keeps exactly 1 - alpha
    np.testing.assert_allclose(losses.label_smoothing_off_target(Z, Y, hyper),
                               -(q_off * np.log(p)).sum(0), rtol=1e-12)
    np.testing.assert_allclose(  # the same loss as "ls" with alpha' = alpha K / (K - 1)
        losses.label_smoothing_off_target(Z, Y, hyper),
        losses.label_smoothing(Z, Y, hyper._replace(alpha=0.2 * K / (K - 1))), rtol=1e-12)
    np.testing.assert_allclose(losses.focal(Z, Y, hyper),
                               -((1 - p[idx]) ** 1.5) * np.log(p[idx]), rtol=1e-12)
    np.testing.assert_allclose(losses.mse(Z, Y), 0.5 * ((Z - Y) ** 2).sum(0), rtol=1e-12)
    off = ((Z * (1 - Y)) ** 2).sum(0)
    np.testing.assert_allclose(losses.mse_rescaled(Z, Y, hyper),
                               (3.0 * (Z[idx] - 2.0) ** 2 + off) / K, rtol=1e-12)


def test_focal_with_gamma_zero_is_cross_entropy(x64):
    Z, _, Y = _data(2)
    np.testing.assert_allclose(losses.focal(Z, Y, ufm.Hyper(gamma=0.0)),
                               losses.cross_entropy(Z, Y), rtol=1e-12)


def test_pick_all_label_sums_ce_over_the_labels(x64):
    Z, _, _ = _data(3)
    Y = np.zeros((K, N))
    Y[0] = 1
    Y[2] = 1
    expected = losses.cross_entropy(Z, np.eye(K)[[0] * N].T) + losses.cross_entropy(
        Z, np.eye(K)[[2] * N].T)
    np.testing.assert_allclose(losses.pick_all_label(Z, Y), expected, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(losses.LOGIT_GRADIENTS))
@pytest.mark.parametrize("multi_hot", [False, True])
def test_closed_form_logit_gradients_equal_autodiff(x64, name, multi_hot):
    """The fast path's dL/dz (losses.LOGIT_GRADIENTS) against jax.grad of the loss, to
    round-off; multi-hot targets (label sets of one and two classes) where the loss allows."""
    if multi_hot and name not in ("ce", "pick_all_label", "mse"):
        pytest.skip("a single-label loss")
    Z, labels, Y = _data(4)
    if multi_hot:
        Y = Y.copy()
        Y[(labels + 1) % K, np.arange(N)] = np.arange(N) % 2  # every other sample: two labels
    loss, grad = losses.LOSSES[name], losses.LOGIT_GRADIENTS[name]
    for gamma in ((0.0, 0.5, 2.0) if name == "focal" else (HYPER.gamma,)):
        hyper = HYPER._replace(gamma=gamma).astype(jnp.float64)
        expected = jax.grad(lambda z: jnp.sum(loss(z, jnp.asarray(Y), hyper)))(jnp.asarray(Z))
        np.testing.assert_allclose(grad(jnp.asarray(Z), jnp.asarray(Y), hyper), expected,
                                   rtol=1e-13, atol=1e-15)


def test_small_losses_keep_their_relative_precision():
    """At tau = 0.03 and margin 1 (logits ~33) CE is ~3.5e-15: log softmax and p_y - 1 in
    their usual forms round to exactly 0 in float32 (p_y rounds to 1); the log1p forms keep
    it to relative precision, and the accurate gradient equals jax.grad of the loss."""
    Z = jnp.array([[33.3, 0.0], [0.0, 33.3]], jnp.float32)
    Y = jnp.eye(2, dtype=jnp.float32)
    expected = np.exp(-33.3)
    np.testing.assert_allclose(losses.cross_entropy(Z, Y), expected, rtol=1e-5)
    assert float(-jax.nn.log_softmax(Z, axis=0)[0, 0]) == 0.0  # what the usual form gives
    accurate = losses.accurate_cross_entropy_grad(Z, Y)
    np.testing.assert_allclose(accurate, [[-expected, expected], [expected, -expected]],
                               rtol=1e-5)
    assert float(losses.cross_entropy_grad(Z, Y)[0, 0]) == 0.0  # the plain form's cancellation
    Zr = jax.random.normal(jax.random.key(1), (5, 7)) * 3
    Yr = jax.nn.one_hot(jnp.arange(7) % 5, 5, axis=0)
    np.testing.assert_allclose(
        losses.accurate_cross_entropy_grad(Zr, Yr),
        jax.grad(lambda z: jnp.sum(losses.cross_entropy(z, Yr)))(Zr), rtol=1e-5, atol=1e-7)
