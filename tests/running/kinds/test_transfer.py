"""The transfer kind (`ufm.running.kinds.transfer`): an experiment runs into a folder."""
import jax
import pytest

import ufm


def test_transfer_experiment_runs_into_a_folder(tmp_path, capsys):
    file = tmp_path / "transfer.toml"
    file.write_text('kind = "transfer"\nname = "tiny"\n[data]\nname = "gaussian"\n'
                    'gaussian_dim = 10\nsource = [0, 1, 2]\ntarget = [3, 4, 5, 6]\nood = "noise"\n'
                    '[model]\nwidth = 12\ndepth = 2\n[pretrain]\nepochs = 3\neval_every = 3\n'
                    '[finetune]\nepochs = 2\neval_every = 2\n')
    out = tmp_path / "out"
    assert ufm.cli.main(["run", str(file), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "probe" in printed and "frozen network on the target's ood split" in printed
    table, history = ufm.load_results(out)
    assert list(table["mode"]) == ["probe", "layer", "full"]
    assert (table["params_trained"].iloc[0] < table["params_trained"].iloc[1]
            < table["params_trained"].iloc[2] == table["params_total"].iloc[2])
    assert "frozen_ood_nc1_layer1" in table and "probe_test_acc_layer0" in table
    assert (out / "transfer.png").is_file() and history["test_acc"].shape[0] == 3
    with pytest.raises(ufm.running.config.ConfigError, match="must be disjoint"):
        ufm.running.experiment.resolve({"kind": "transfer", "data": {"source": [0, 1],
                                                             "target": [1, 2]}})
    jax.clear_caches()
