import json
import subprocess
import sys

import numpy as np
import pytest

import ufm
from ufm import cli
from ufm.running import results

# The tests of the default run share one worker (pytest-xdist --dist loadgroup): built once.
pytestmark = pytest.mark.xdist_group("default_run")


def test_default_run_reaches_neural_collapse_for_every_loss(default_run):
    table, history = results.load_results(default_run)
    table = results.read_table(
        default_run / results.RESULTS
    )  # numpy columns whether or not pandas exists
    assert sorted(set(table["loss"])) == ["ce", "focal", "ls", "mse"]
    assert len(table["row"]) == 12 and set(table["seed"]) == {0, 1, 2}
    assert "diverged" not in set(table["status"])
    for key in ("nc1", "nc2_W", "nc2_H"):
        assert np.all(table[key] < 1e-3), (key, table[key])
    assert np.all(np.abs(table["rel_gap"]) < 1e-5)  # float32 reaches f* to round-off
    assert history["nc1"].shape == (12, len(history["iteration"]))


def test_results_folder_has_everything(default_run):
    for name in ("config.toml", "results.csv", "history.npz", "manifest.json", "nc1.png",
                 "nc2_W.png", "nc2_H.png", "nc3.png", "rel_gap.png", "overview.png"):
        assert (default_run / name).is_file(), name
    resolved = ufm.running.experiment.load(default_run / "config.toml")
    assert resolved.to_dict() == ufm.running.experiment.load_default().to_dict()
    manifest = json.loads((default_run / "manifest.json").read_text())
    assert manifest["packages"]["jax"] and manifest["wall_seconds"] > 0
    assert manifest["configurations"] == 12


def test_show_and_plot(default_run, capsys):
    assert cli.main(["show", str(default_run)]) == 0
    out = capsys.readouterr().out
    assert all(loss in out for loss in ("ce", "focal", "ls", "mse"))
    (default_run / "nc1.png").unlink()
    assert cli.main(["plot", str(default_run), "--metric", "nc1"]) == 0
    assert (default_run / "nc1.png").is_file()


def test_bad_input_stops_before_compiling(tmp_path, capsys):
    assert cli.main(["run", "--out", str(tmp_path / "x"), "--set", "num_classes=1"]) == 2
    assert "problem.num_classes=1 is not allowed" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert cli.main(["show", str(tmp_path)]) == 2


def test_console_entry_point_runs_an_experiment_file(tmp_path):
    exp = tmp_path / "tiny.toml"
    exp.write_text('name = "tiny"\n[problem]\nnum_classes = 3\nfeature_dim = 3\nn_per_class = 2\n'
                   '[solver]\nsteps = 50\nlog_every = 10\n')
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "ufm", "run", str(exp), "--out", str(out),
                           "--no-plots", "--set", "hyper.lr=0.1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = results.read_table(out / "results.csv")
    assert table["lr"][0] == 0.1 and table["steps"][0] == 50


def test_a_rerun_says_what_it_resumed_and_an_interruption_how_to_resume(default_run, capsys,
                                                                       monkeypatch):
    assert cli.main(["run", "--out", str(default_run), "--no-progress", "--no-plots"]) == 0
    assert "resumed 4 of 4 units from checkpoints" in capsys.readouterr().out

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ufm.running.experiment, "run", interrupted)
    assert cli.main(["run", "--out", str(default_run), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and f"ufm run --out {default_run}" in err
    assert "Traceback" not in err


def test_sigterm_ends_a_run_like_ctrl_c_with_the_resume_command(tmp_path, capsys, monkeypatch):
    """A scheduler's SIGTERM (preemption, requeue) used to exit 143 silently."""
    import os
    import signal
    import time

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here
        raise AssertionError("SIGTERM did not interrupt the run")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(ufm.running.experiment, "run", terminated)
    out = tmp_path / "out"
    assert cli.main(["run", "--out", str(out), "--no-progress"]) == 143
    err = capsys.readouterr().err
    assert "terminated (SIGTERM)" in err and f"ufm run --out {out}" in err
    assert "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back


@pytest.mark.parametrize("code, advice", [(28, "free some space"), (30, "choose a folder")])
def test_a_full_or_read_only_disk_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch,
                                                              code, advice):
    import os

    def disk(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "out" / "results.csv"))

    monkeypatch.setattr(ufm.running.experiment, "run", disk)
    out = tmp_path / "out"
    assert cli.main(["run", "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"could not write {out}/results.csv: {os.strerror(code)}" in err
    assert advice in err and f"ufm run --out {out}" in err and "Traceback" not in err
