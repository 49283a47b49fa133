"""The flax path: models, heads, losses, data readers, training, checkpoints, experiments."""
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ufm
from ufm.analysis import nc as metrics
from ufm.model import losses
from ufm.nets import data as nets_data
from ufm.nets import models
from ufm.nets.training import TrainSettings, make_train_step, train
from ufm.running import results


@pytest.fixture(scope="module")
def digits():
    return nets_data.load("digits")


def _tiny_gaussian(shape=(12,), K=4, n=8):
    return nets_data.gaussian(num_classes=K, n_train=n, n_test=4, shape=shape, seed=1)


def optax_sgd():
    import optax

    return optax.sgd(0.01)


@pytest.mark.parametrize("loss", list(losses.LOSSES))
def test_one_step_runs_for_every_loss(loss):
    data = _tiny_gaussian()
    model = models.build("mlp", input_shape=(12,), num_classes=4, width=16, depth=2)
    settings = TrainSettings(loss=loss, epochs=1, batch_size=32,
                             hyper=ufm.Hyper(tau=0.5, lam_W=1e-3, lam_H=1e-4, lam_b=1e-3))
    step = make_train_step(settings, len(data.y_train), 4)
    optimizer = nnx.Optimizer(model, optax_sgd(), wrt=nnx.Param)
    loss_value, _ = step(model, optimizer, jnp.asarray(data.x_train), jnp.asarray(data.y_train))
    assert np.isfinite(float(loss_value))


def test_mlp_on_digits_collapses(digits):
    """To zero training error, then NC1 < 1e-2 and NC2 < 0.1; layer-wise NC1 decreases."""
    model = models.build("mlp", input_shape=digits.input_shape, num_classes=10)
    result = train(model, digits, TrainSettings(epochs=300, eval_every=100), progress=False)
    final = result.final
    assert final["train_acc"] == 1.0 and final["test_acc"] > 0.95
    assert final["nc1"] < 1e-2
    assert final["nc2_W"] < 0.1 and final["nc2_H"] < 0.1
    assert final["nc3"] < 0.1
    layer_nc1 = final["nc1_layers"]
    assert np.all(np.diff(layer_nc1) < 0), layer_nc1
    # The penultimate layer's NC1 from metrics.nc1 is the nc_metrics NC1.
    assert layer_nc1[-1] == pytest.approx(final["nc1"], rel=0.3)  # a stratified subset
    assert result.history["nc1"][0] > 1.0  # it started uncollapsed


def _resumable_run():
    """(data, a fresh small MLP's maker, settings checkpointing every 2 of 6 epochs, the
    uninterrupted run's result)."""
    data = _tiny_gaussian()

    def fresh():
        return models.build("mlp", input_shape=(12,), num_classes=4, width=16, depth=2)

    settings = TrainSettings(epochs=6, eval_every=2, checkpoint_every=2, batch_size=8)
    return data, fresh, settings, train(fresh(), data, settings, progress=False)


def test_training_resumes_from_its_checkpoint(tmp_path):
    data, fresh, settings, whole = _resumable_run()
    # An interrupted run (killed right after epoch 4's checkpoint), then the same call again.
    _interrupt_after(fresh(), data, settings, tmp_path, epochs=4)
    resumed = train(fresh(), data, settings, out=tmp_path, progress=False)
    for key in ("nc1", "train_loss", "train_acc"):
        np.testing.assert_allclose(resumed.history[key], whole.history[key], rtol=1e-5, err_msg=key)
    np.testing.assert_array_equal(resumed.history["iteration"], [0, 2, 4, 6])
    other = TrainSettings(epochs=6, eval_every=2, checkpoint_every=2, batch_size=8, lr=0.5)
    with pytest.raises(ValueError, match="checkpoint of other settings"):
        train(fresh(), data, other, out=tmp_path, progress=False)
    # A results folder's scratch: the foreign checkpoint is named and trained over, from epoch 0.
    with pytest.warns(UserWarning, match="checkpoint of other settings; training starts over"):
        restarted = train(fresh(), data, other, out=tmp_path, progress=False,
                          foreign_checkpoint="restart")
    straight = train(fresh(), data, other, progress=False)
    np.testing.assert_allclose(restarted.history["train_loss"], straight.history["train_loss"],
                               rtol=1e-5)
    # Metadata of the wrong shape is damage: named, and training starts over.
    results.write_arrays(tmp_path / "checkpoint.npz", {
        "meta": np.frombuffer(json.dumps({"epoch": "4"}).encode(), np.uint8)})
    with pytest.warns(UserWarning, match="damaged training checkpoint"):
        again = train(fresh(), data, other, out=tmp_path, progress=False)
    np.testing.assert_array_equal(again.history["iteration"], [0, 2, 4, 6])


def test_training_checkpoints_are_keyed_by_state_path_and_old_ones_still_read(tmp_path):
    """Arrays are named by their nnx state paths; a checkpoint of the earlier leaf-order format
    ("model_0", "opt_0", ...) resumes to the same run; one missing an array is damage."""
    from ufm.nets import training as train_module

    data, fresh, settings, whole = _resumable_run()
    _interrupt_after(fresh(), data, settings, tmp_path, epochs=4)
    path = tmp_path / "checkpoint.npz"
    with np.load(path) as saved:
        files = {k: saved[k] for k in saved.files}
    assert {"model/head/W", "model/layers/0/kernel", "opt/step"} <= set(files)
    # The same state in the old leaf order: resumed, equal to the uninterrupted run.
    model = fresh()
    optimizer = nnx.Optimizer(model, train_module._optimizer(settings, len(data.y_train) // 8),
                              wrt=nnx.Param)
    old = {"meta": files["meta"]}
    for prefix, obj in (("model", model), ("opt", optimizer)):
        for i, (name, _) in enumerate(train_module._state_paths(obj)):
            old[f"{prefix}_{i}"] = files[f"{prefix}/{name}"]
    results.write_arrays(path, old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read as it is: no "damaged", no start over
        resumed = train(fresh(), data, settings, out=tmp_path, progress=False)
    np.testing.assert_array_equal(resumed.history["iteration"], [0, 2, 4, 6])
    np.testing.assert_allclose(resumed.history["train_loss"], whole.history["train_loss"],
                               rtol=1e-5)
    # A missing array: named, and training starts over (nothing half-loaded).
    results.write_arrays(path, {k: v for k, v in files.items() if k != "model/head/W"})
    with pytest.warns(UserWarning, match="damaged training checkpoint .*no array model/head/W"):
        again = train(fresh(), data, settings, out=tmp_path, progress=False)
    np.testing.assert_allclose(again.history["train_loss"], whole.history["train_loss"],
                               rtol=1e-5)


def _interrupt_after(model, data, settings, out, epochs):
    """Run `settings` into `out` and stop (as a kill would) right after epoch `epochs`."""
    from ufm.nets import training as train_module

    original = train_module._save_checkpoint

    def save_then_stop(path, settings_json, epoch, *args):
        original(path, settings_json, epoch, *args)
        if epoch >= epochs:
            raise KeyboardInterrupt

    train_module._save_checkpoint = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train(model, data, settings, out=out, progress=False)
    finally:
        train_module._save_checkpoint = original


def test_nc1_of_features_alone_matches_nc_metrics():
    rng = np.random.default_rng(0)
    H = rng.standard_normal((7, 30))
    labels = np.arange(30) % 5
    W = rng.standard_normal((5, 7))
    with jax.enable_x64(True):
        full = metrics.nc_metrics(jnp.asarray(W), jnp.asarray(H), jnp.asarray(labels))["nc1"]
        alone = metrics.nc1(jnp.asarray(H), jnp.asarray(labels), 5)
        assert float(alone) == pytest.approx(float(full), rel=1e-12)
        # Zero on collapsed features
        means = rng.standard_normal((7, 5))
        assert float(metrics.nc1(jnp.asarray(means[:, labels]), jnp.asarray(labels), 5)) < 1e-20


