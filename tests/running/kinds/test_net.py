"""The net kind (`ufm.running.kinds.net`): files checked, a run into a folder, zips, a diverging
network flagged, the cross-loss spread."""

import numpy as np
import pytest

import ufm
from ufm.nets import data as nets_data
from ufm.nets import models
from ufm.nets.training import TrainSettings, train
from ufm.running.kinds import net as experiment


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


def test_a_diverging_network_is_flagged_and_its_neighbours_finish(tmp_path):
    file = tmp_path / "net.toml"
    file.write_text('kind = "net"\nname = "d"\n[data]\nname = "gaussian"\ngaussian_dim = 8\n'
                    '[model]\nwidth = 8\ndepth = 1\n[train]\nepochs = 3\neval_every = 3\n'
                    'optimizer = "gd"\nschedule = "constant"\nlr = [0.05, 1e6]\n')
    result = ufm.run(file, out=tmp_path / "out", progress=False)
    ok, broken = result.rows
    assert ok["status"] == "finished" and ok["test_acc"] > 0
    assert broken["status"] == "diverged" and broken["diverged_at"] == 1
    assert broken["test_acc"] is None
    assert "diverged at epoch 1" in ufm.running.experiment.summary(tmp_path / "out")
    data = nets_data.load("gaussian", shape=(8,))  # as the file's
    model = models.build("mlp", input_shape=(8,), num_classes=10, width=8, depth=1)
    with pytest.raises(FloatingPointError, match=r"diverged at epoch 1 .*lower train\.lr"):
        train(model, data, TrainSettings(epochs=3, eval_every=3, lr=1e6, optimizer="gd",
                                         schedule="constant"), progress=False)


def test_cross_loss_spread_is_the_variance_across_losses():
    from ufm.running.tables import cross_loss_spread

    table = {"row": np.arange(6), "seed": np.array([0, 0, 0, 0, 1, 1]),
             "train.loss": np.array(["ce", "mse", "ce", "mse", "ce", "mse"], dtype=object),
             "train.lr": np.array([0.1, 0.01, 0.1, 0.01, 0.1, 0.01]),  # zipped with the loss
             "model.width": np.array([64, 64, 256, 256, 256, 256]),
             "test_acc": np.array([0.9, 0.7, 0.95, 0.93, 0.97, np.nan]),
             "nc1": np.array([1e-2, 3e-2, 1e-3, 2e-3, 3e-3, np.nan])}
    spread = dict(cross_loss_spread(table))
    assert set(spread) == {"width=64", "width=256"}
    assert spread["width=64"]["test_acc_var"] == pytest.approx(np.var([0.9, 0.7]))
    # seeds pooled by their mean; a diverged (empty) run left out of its loss's mean
    assert spread["width=256"]["test_acc_var"] == pytest.approx(np.var([0.96, 0.93]))
    assert spread["width=256"]["nc1_var"] == pytest.approx(np.var([2e-3, 2e-3]))


def test_a_network_on_the_users_arrays_from_a_file(tmp_path, monkeypatch):
    """data.name = "arrays": the README's recipe, on Gaussian blobs far from standardized, a
    relative path read from the working folder; the setting is kept in the results."""
    from tests.nets.test_data import _blobs

    monkeypatch.chdir(tmp_path)
    _blobs(tmp_path / "blobs.npz", ood=True)
    (tmp_path / "mine.toml").write_text(
        'kind = "net"\nname = "mine"\n[data]\nname = "arrays"\npath = "blobs.npz"\n'
        '[model]\nwidth = 32\ndepth = 2\n[train]\nepochs = 30\neval_every = 10\n'
        'batch_size = 32\n')
    result = ufm.run(tmp_path / "mine.toml", out=tmp_path / "out", progress=False)
    row = result.rows[0]
    assert row["train_acc"] == 1.0 and row["test_acc"] >= 0.9 and "ood_acc" in row
    assert row["train_nc1"] < 0.2
    config = (tmp_path / "out" / "config.toml").read_text()
    assert 'name = "arrays"' in config and "standardize = true" in config
    with pytest.raises(ufm.InputError, match="does not exist"):
        ufm.run(ufm.running.experiment.apply_overrides(
            result.experiment, ["data.path=nowhere.npz"]), out=tmp_path / "o2", progress=False)
