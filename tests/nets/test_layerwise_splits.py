"""Networks measured on every split (train, test, out-of-distribution), the geometric decay of
the layer-wise NC1, and parameter counts of the heads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.analysis import compression
from ufm.analysis import nc as metrics
from ufm.nets import data as nets_data
from ufm.nets import models
from ufm.nets.training import TrainSettings, evaluate, features, representations, train


@pytest.fixture(scope="module")
def trained():
    data = nets_data.load("gaussian", num_classes=4, n_train=30, n_test=10, shape=(16,),
                          separation=4.0)
    data = nets_data.shift(data, "noise", 0.8)
    model = models.build("mlp", input_shape=data.input_shape, num_classes=4, width=24, depth=3)
    result = train(model, data, TrainSettings(epochs=8, eval_every=4, batch_size=40),
                   progress=False)
    return data, model, result


def test_nc_metrics_on_every_split_equal_nc_metrics_of_its_features(trained):
    data, model, result = trained
    final = result.final
    W, b = np.asarray(model.head.weight()), np.asarray(model.head.bias())
    for split, x, y in data.splits():
        H = features(model, x).T
        expected = {**ufm.nc_metrics(W, H, y, b),
                    **compression.compression_metrics(H, y, 4)}
        for key in ("nc1", "nc2_W", "nc2_H", "nc3", "nc4", "effective_rank", "coding_rate",
                    "rate_reduction"):
            assert final[f"{split}_{key}"] == pytest.approx(float(expected[key]), rel=1e-5), (
                split, key)
        layers = representations(model, x)
        assert final[f"{split}_nc1_layers"][-1] == pytest.approx(
            float(metrics.nc1(jnp.asarray(layers[-1].T), jnp.asarray(y), 4)), rel=1e-5)
        assert final[f"{split}_nc2_layers"][-1] == pytest.approx(final[f"{split}_nc2_H"],
                                                                 rel=1e-4)
    assert final["nc1"] == final["train_nc1"]
    np.testing.assert_array_equal(final["nc1_layers"], final["train_nc1_layers"])
    assert final["ood_nc1"] > final["test_nc1"]  # noise blurs the classes apart from training
    assert result.history["ood_nc1"].shape == result.history["test_nc1"].shape == (3,)


def test_shifts_move_the_test_split_as_documented():
    base = nets_data.load("digits")
    same = nets_data.shift(base, "rotation", 0.0)
    np.testing.assert_allclose(same.x_ood, base.x_test, atol=1e-6)
    turned = nets_data.shift(base, "rotation", 90.0)
    square = base.x_test.reshape(-1, 8, 8)
    np.testing.assert_allclose(turned.x_ood.reshape(-1, 8, 8), np.rot90(square, 1, axes=(1, 2)),
                               atol=1e-5)
    dim = nets_data.shift(base, "contrast", 0.25)
    np.testing.assert_allclose(dim.x_ood, 0.25 * base.x_test, rtol=1e-6)
    noisy = nets_data.shift(base, "noise", 2.0)
    assert np.std(noisy.x_ood - base.x_test) == pytest.approx(2.0, rel=0.02)
    np.testing.assert_array_equal(noisy.y_ood, base.y_test)
    assert noisy.ood == "noise(2)" and base.ood == "" and len(base.splits()) == 2
    with pytest.raises(ValueError, match="data.ood='cifar10.1' is not allowed with "
                                         "data.name='digits'"):
        nets_data.load("digits", ood="cifar10.1")
    with pytest.raises(ValueError, match="data.ood='blur' is not allowed: one of"):
        nets_data.load("digits", ood="blur")


def test_cifar10_shifted_test_sets_are_read_or_named(tmp_path):
    with pytest.raises(nets_data.DatasetFilesMissing, match=r"cifar10\.1_v6_data\.npy"):
        nets_data.cifar10_shifted(tmp_path, "cifar10.1", 0.0, 1.0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "cifar10.1_v6_data.npy", images)
    np.save(tmp_path / "cifar10.1_v6_labels.npy", np.arange(5))
    x, y = nets_data.cifar10_shifted(tmp_path, "cifar10.1", 0.5, 0.25)
    np.testing.assert_allclose(x, (images / 255.0 - 0.5) / 0.25, atol=1e-5)
    np.testing.assert_array_equal(y, np.arange(5))
    np.savez(tmp_path / "cifar102_test.npz", images=images, labels=np.arange(5))
    x2, _ = nets_data.cifar10_shifted(tmp_path, "cifar10.2", 0.5, 0.25)
    np.testing.assert_array_equal(x, x2)


def test_evaluate_needs_every_class_in_a_split():
    data = nets_data.load("gaussian", num_classes=3, n_train=6, n_test=2, shape=(8,))
    model = models.build("mlp", input_shape=(8,), num_classes=3, width=8, depth=1)
    broken = data._replace(y_test=np.zeros_like(data.y_test))
    with pytest.raises(ValueError, match="classes 1, 2 have no samples"):
        evaluate(model, broken)
    jax.clear_caches()


