"""Transfer learning through neural collapse: class splits, frozen layers, linear probes,
fine-tuning that trains exactly what it says, and the transfer experiment kind."""
import numpy as np
import pytest
from flax import nnx

from ufm.nets import data as nets_data
from ufm.nets import models, transfer
from ufm.nets.training import TrainSettings, train


@pytest.fixture(scope="module")
def pretrained():
    data = nets_data.load("gaussian", num_classes=6, n_train=20, n_test=6, shape=(10,),
                          separation=4.0)
    data = nets_data.shift(data, "noise", 0.5)
    source, target = transfer.split_classes(data, [0, 1, 2], [5, 3, 4])
    model = models.build("mlp", input_shape=(10,), num_classes=3, width=16, depth=3)
    train(model, source, TrainSettings(epochs=6, eval_every=6, batch_size=30), progress=False)
    return data, source, target, model


def _state(model):
    return {"/".join(map(str, path)): np.array(value) for path, value in
            nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_split_classes_relabels_every_split(pretrained):
    data, source, target, _ = pretrained
    assert source.num_classes == target.num_classes == 3
    for split in ("train", "test", "ood"):
        y = getattr(data, f"y_{split}")
        x = getattr(data, f"x_{split}")
        mask = np.isin(y, [5, 3, 4])
        np.testing.assert_array_equal(getattr(target, f"x_{split}"), x[mask])
        np.testing.assert_array_equal(getattr(target, f"y_{split}"),
                                      np.array([1, 2, 0])[y[mask] - 3])  # 3->1, 4->2, 5->0
    with pytest.raises(ValueError, match="disjoint"):
        transfer.split_classes(data, [0, 1], [1, 2])


@pytest.mark.parametrize("mode", transfer.MODES)
def test_fine_tuning_trains_exactly_what_it_says(pretrained, mode):
    _, _, target, model = pretrained
    before = _state(model)
    layer = 1
    tuned, info = transfer.fine_tune(model, target, mode,
                                     TrainSettings(epochs=2, eval_every=2, batch_size=30),
                                     layer=layer)
    for name, value in before.items():  # the pretrained model is untouched
        np.testing.assert_array_equal(_state(model)[name], value)
    after = _state(tuned.model)
    trained_prefixes = {"probe": ("head",), "layer": ("head", "layers/1/"),
                        "full": ("",)}[mode]
    changed = {name for name in before if name in after and not name.startswith("head")
               and not np.array_equal(after[name], before[name])}
    expected = {name for name in before if not name.startswith("head")
                and any(name.startswith(p) for p in trained_prefixes if p != "head")}
    assert changed == expected  # frozen layers bit for bit, the chosen ones moved
    sizes = {name: value.size for name, value in after.items()}
    assert info["params_trained"] == sum(size for name, size in sizes.items()
                                         if name.startswith("head")
                                         or name in expected or mode == "full")
    assert info["params_total"] == sum(sizes.values())


def test_ridge_probe_is_the_least_squares_classifier():
    rng = np.random.default_rng(0)
    means = 3.0 * rng.standard_normal((4, 6))
    y = np.repeat(np.arange(4), 25)
    X = means[y] + 0.3 * rng.standard_normal((100, 6))
    accuracy, = transfer.ridge_probe(X, y, [(X, y)], 4, ridge=0.0)
    A = np.hstack([X, np.ones((100, 1))])
    coefficients = np.linalg.lstsq(A, np.eye(4)[y], rcond=None)[0]
    assert accuracy == np.mean(np.argmax(A @ coefficients, 1) == y) == 1.0


def test_frozen_curves_and_probes_have_one_entry_per_layer(pretrained):
    _, _, target, model = pretrained
    curves = transfer.frozen_layer_nc(model, target)
    probes = transfer.probe_layers(model, target)
    for split in ("train", "test", "ood"):
        assert curves[f"{split}_nc1_layers"].shape == (3,)
        assert np.all((probes[f"{split}_probe_acc_layers"] >= 0)
                      & (probes[f"{split}_probe_acc_layers"] <= 1))
    assert transfer.choose_layer([0.5, 0.2, 0.4, 0.9]) == 2
    assert transfer.choose_layer([0.9, 0.5, 0.2]) == 2
    with pytest.raises(ValueError, match="layer=7 is not allowed"):
        transfer.trainable_filter(model, "layer", 7)


