"""The flax path: models, heads, losses, data readers, training, checkpoints, experiments."""
import gzip
import json
import pickle
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ufm
from ufm.analysis import nc as metrics
from ufm.analysis import theory
from ufm.model import losses
from ufm.nets import data as nets_data
from ufm.nets import models
from ufm.nets.training import TrainSettings, make_train_step, train
from ufm.running import results
from ufm.running.kinds import net as experiment


@pytest.fixture(scope="module")
def digits():
    return nets_data.load("digits")


def _tiny_gaussian(shape=(12,), K=4, n=8):
    return nets_data.gaussian(num_classes=K, n_train=n, n_test=4, shape=shape, seed=1)


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


def test_missing_dataset_files_are_named(tmp_path):
    with pytest.raises(nets_data.DatasetFilesMissing, match="train-images-idx3-ubyte"):
        nets_data.load("mnist", path=tmp_path)
    with pytest.raises(nets_data.DatasetFilesMissing, match="data_batch_1"):
        nets_data.load("cifar10", path=tmp_path)
    with pytest.raises(ValueError, match="needs data.path"):
        nets_data.load("cifar10")
    with pytest.raises(ValueError, match="data.name='svhn' is not allowed"):
        nets_data.load("svhn")


def _write_idx(path, array, gz=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big")
                                                         for s in array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_and_cifar_readers_read_the_standard_formats(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 28, 28))
    labels = np.arange(20) % 10
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, gz=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:10])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:10])
    mnist = nets_data.load("mnist", path=tmp_path)
    assert mnist.x_train.shape == (20, 784) and mnist.x_test.shape == (10, 784)
    np.testing.assert_array_equal(mnist.y_train, labels)
    np.testing.assert_allclose(nets_data.read_idx(tmp_path / "train-images-idx3-ubyte.gz"), images)
    pixels = rng.integers(0, 256, (20, 3 * 32 * 32), dtype=np.uint8)
    for name in nets_data.CIFAR_FILES:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": pixels, b"labels": list(range(10)) * 2}, f)
    cifar = nets_data.load("cifar10", path=tmp_path)
    assert cifar.x_train.shape == (100, 32, 32, 3) and cifar.x_test.shape == (20, 32, 32, 3)
    # Channel-last from CIFAR's channel-first rows: the red plane is the first 1024 bytes.
    red = cifar.x_train[:20, :, :, 0].reshape(20, -1)
    assert np.corrcoef(red.ravel(), pixels[:, :1024].astype(float).ravel())[0, 1] > 0.9999


def test_variants():
    base = nets_data.load("digits")
    shuffled = nets_data.load("digits", variant="random_labels")
    assert np.mean(shuffled.y_train == base.y_train) < 0.2
    np.testing.assert_array_equal(shuffled.y_test, base.y_test)  # the test split is untouched
    noise = nets_data.load("digits", variant="random_inputs")
    assert noise.x_train.shape == base.x_train.shape
    assert abs(np.corrcoef(noise.x_train.ravel(), base.x_train.ravel())[0, 1]) < 0.05


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


def test_net_experiment_file_errors_and_run(tmp_path, capsys):
    with pytest.raises(ufm.running.config.ConfigError, match="model.head='foo' is not allowed"):
        experiment.resolve({"kind": "net", "model": {"head": "foo"}})
    with pytest.raises(ufm.running.config.ConfigError, match="unknown key train.'lrr'"):
        experiment.resolve({"kind": "net", "train": {"lrr": 0.1}})
    with pytest.raises(ValueError, match="train.epochs=0 is not allowed"):
        experiment.resolve({"kind": "net", "train": {"epochs": 0}})
    file = tmp_path / "net.toml"
    file.write_text('kind = "net"\nname = "tiny"\n[data]\nname = "gaussian"\ngaussian_dim = 12\n'
                    '[model]\nwidth = 16\ndepth = 2\nhead = ["learned", "etf"]\n'
                    '[train]\nepochs = 4\neval_every = 2\nbatch_size = 32\n')
    out = tmp_path / "out"
    assert ufm.cli.main(["run", str(file), "--out", str(out), "--no-progress"]) == 0
    assert "head=etf" in capsys.readouterr().out and (out / "layer_nc1.png").is_file()
    table, history = ufm.running.results.load_results(out)
    assert len(table["row"]) == 2 and history["nc1"].shape == (2, 3)


def test_net_zip_advances_fields_together():
    exp = experiment.resolve({"kind": "net", "zip": [{"train.loss": ["ce", "mse"],
                                                      "train.lr": [0.1, 0.01]}],
                              "run": {"seeds": [0, 1]}})
    pairs = [(c["train.loss"], c["train.lr"], c["seed"]) for c in experiment.configurations(exp)]
    assert pairs == [("ce", 0.1, 0), ("ce", 0.1, 1), ("mse", 0.01, 0), ("mse", 0.01, 1)]
    import tomllib

    assert (
        experiment.resolve(tomllib.loads(experiment.dumps(exp))) == exp
    )  # config.toml round-trips
    with pytest.raises(ufm.running.config.ConfigError, match="equal lengths"):
        experiment.resolve({"kind": "net", "zip": [{"train.loss": ["ce"], "train.lr": [1, 2]}]})


def test_stratified_subset_takes_the_first_samples_of_every_class():
    y = np.array([2, 0, 1, 0, 2, 1, 0, 2, 1, 1])
    take = nets_data.stratified_subset(y, 6, 3)
    np.testing.assert_array_equal(take, [0, 1, 2, 3, 4, 5])  # two of each, in order
    np.testing.assert_array_equal(np.bincount(y[take]), [2, 2, 2])
    assert len(nets_data.stratified_subset(y, 1, 3)) == 3  # at least one of each class
