"""`ufm.nets.models`: every model and head takes a step; the class-mean head holds the class means;
parameter counts of the heads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ufm.analysis import theory
from ufm.nets import data as nets_data
from ufm.nets import models
from ufm.nets.training import TrainSettings, make_train_step


def _tiny_gaussian(shape=(12,), K=4, n=8):
    return nets_data.gaussian(num_classes=K, n_train=n, n_test=4, shape=shape, seed=1)


def optax_sgd():
    import optax

    return optax.sgd(0.01)


@pytest.mark.parametrize("name,shape,options", [
    ("mlp", (12,), dict(width=16, depth=2)),
    ("mlp", (12,), dict(width=16, depth=2, batchnorm=True, normalize=True)),
    ("resnet", (32, 32, 3), dict(width=4, blocks=1)),
])
@pytest.mark.parametrize("head", models.HEADS)
def test_one_step_runs_for_every_model_and_head(name, shape, options, head):
    data = _tiny_gaussian(shape)
    model = models.build(name, input_shape=shape, num_classes=4, head=head, **options)
    settings = TrainSettings(epochs=1, batch_size=16, lr=0.01)
    optimizer = nnx.Optimizer(model, optax_sgd(), wrt=nnx.Param)
    step = make_train_step(settings, len(data.y_train), 4)
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    W_before = np.asarray(model.head.weight())
    loss, correct = step(model, optimizer, jnp.asarray(data.x_train[:16]),
                         jnp.asarray(data.y_train[:16]))
    assert np.isfinite(float(loss)) and 0 <= int(correct) <= 16
    after = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),
                                                        jax.tree.leaves(after)))
    if head == "etf":  # the fixed ETF head stays fixed, and is a simplex ETF
        W = np.asarray(model.head.weight())
        np.testing.assert_array_equal(W, W_before)
        np.testing.assert_allclose(W @ W.T, np.asarray(theory.simplex_etf(4, W.shape[1]))
                                   @ np.asarray(theory.simplex_etf(4, W.shape[1])).T, atol=1e-6)


def test_cmf_head_equals_the_class_means():
    data = _tiny_gaussian()
    model = models.build("mlp", input_shape=(12,), num_classes=4, width=16, depth=2, head="cmf")
    settings = TrainSettings(epochs=1, batch_size=32, cmf_momentum=0.0)
    step = make_train_step(settings, len(data.y_train), 4)
    optimizer = nnx.Optimizer(model, optax_sgd(), wrt=nnx.Param)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    for _ in range(3):
        model.eval()
        H = np.asarray(model.features(x))  # the features this step sees (no BatchNorm here)
        model.train()
        step(model, optimizer, x, y)
        means = np.stack([H[data.y_train == k].mean(0) for k in range(4)])
        np.testing.assert_allclose(np.asarray(model.head.weight()),
                                   means - means.mean(0), rtol=1e-5, atol=1e-6)


def test_parameter_counts_of_the_heads():
    K, width, d = 10, 32, 10
    for head, classifier in (("learned", K * d + K), ("etf", K), ("cmf", K)):
        model = models.build("mlp", input_shape=(64,), num_classes=K, width=width, depth=2,
                             feature_dim=d, head=head)
        counts = models.parameter_counts(model)
        body = 64 * width + width + width * width + width + width * d + d
        assert counts == {"params_total": body + classifier, "params_classifier": classifier}
