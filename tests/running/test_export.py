"""`ufm export DIR --tensorboard`: event files TensorBoard reads back, every logged metric at
every logged step of every row."""
import numpy as np
import pytest

import ufm
from ufm import cli
from ufm.running import export, results

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator")

GRID = {"problem": {"num_classes": 3, "feature_dim": 4, "n_per_class": 2, "dtype": "float64",
                    "loss": ["ce", "mse"]},
        "hyper": {"lr": [0.5, 1e4]}, "solver": {"steps": 60, "log_every": 20},
        "run": {"seeds": [0, 1]}}


def test_crc32c_and_the_record_framing():
    assert export.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert export.crc32c(b"") == 0
    framed = export.record(b"abc")
    assert len(framed) == 8 + 4 + 3 + 4 and framed[12:15] == b"abc"


def test_tensorboard_reads_back_every_metric_of_every_row(tmp_path, capsys):
    out = tmp_path / "grid"
    ufm.run(ufm.running.experiment.resolve(GRID), out=out, progress=False)
    assert cli.main(["export", str(out), "--tensorboard"]) == 0
    assert "8 TensorBoard runs" in capsys.readouterr().out
    table = results.read_table(out / results.RESULTS)
    history = results.read_history(out / results.HISTORY)
    runs = sorted((out / "tensorboard").iterdir())
    assert len(runs) == len(table["row"]) == 8
    assert runs[0].name.startswith("row0000_loss=ce,lr=0.5,seed=0")
    diverged = 0
    for i, run in enumerate(runs):
        acc = event_accumulator.EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        for key, values in history.items():
            if key == "iteration":
                continue
            finite = np.isfinite(values[i])
            if not finite.any():
                assert key not in acc.Tags()["scalars"]
                continue
            got = acc.Scalars(key)
            assert [s.step for s in got] == list(history["iteration"][finite]), (run, key)
            with np.errstate(over="ignore"):
                want = values[i][finite].astype(np.float32)
            np.testing.assert_array_equal(np.array([s.value for s in got], np.float32), want)
        diverged += table["status"][i] == "diverged"
    assert diverged == 4  # lr = 1e4: its NaN padding left out, its huge values as inf
    # Exported again: each run's file replaced, not added to.
    export.tensorboard(out)
    assert all(len(list(run.glob("events.out.tfevents.*"))) == 1 for run in runs)


def test_export_names_what_it_cannot_do(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path), "--tensorboard"]) == 2
    assert "not a results folder" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path)]) == 2
    assert "--tensorboard" in capsys.readouterr().err
    (tmp_path / results.RESULTS).write_text("row\n0\n")
    with pytest.raises(ufm.InputError, match="no histories"):
        export.tensorboard(tmp_path)
