"""The one results folder of every kind: killed after its first checkpoint and run again, each
kind ends with the folder of an uninterrupted run; a damaged checkpoint and a truncated table
are reported and redone without the folder ever losing its table; data files hold no pickles."""
import pickle
import warnings

import numpy as np
import pytest

import ufm
from ufm.running import registry as kinds
from ufm.running import results

# Two units each; one Problem, so each kind compiles once (two values of lam_W).
TINY = {"num_classes": 3, "feature_dim": 3, "n_per_class": 2, "dtype": "float64"}
UFM = {"problem": TINY, "hyper": {"lam_W": [5e-3, 1e-2], "lam_H": 5e-3, "lam_b": 0.0},
       "run": {"seeds": [0]}}
EXPERIMENTS = {
    "grid": UFM | {"solver": {"steps": 60, "log_every": 20},
                   "run": {"seeds": [0], "chunk": 1, "batch": 1}},
    "origin_phase": UFM | {"kind": "origin_phase", "landscape": {"ratios": [0.5, 2.0]},
                           "solver": {"name": "lbfgs", "steps": 300, "log_every": 100}},
    "benign": UFM | {"kind": "benign", "landscape": {"random_starts": 2, "saddle_starts": 1},
                     "solver": {"name": "lbfgs", "steps": 300, "log_every": 100}},
    "saddle_escape": UFM | {"kind": "saddle_escape", "hyper": {"lam_W": [5e-3, 1e-2],
                                                               "lam_H": 5e-3, "lam_b": 0.0,
                                                               "lr": 0.5},
                            "landscape": {"epsilon": [1e-5]},
                            "solver": {"steps": 400, "log_every": 20}},
    "net": {"kind": "net", "data": {"name": "gaussian", "gaussian_dim": 6, "n_train": 8},
            "model": {"width": 12, "depth": 2, "head": ["learned", "etf"]},
            "train": {"epochs": 2, "eval_every": 1, "batch_size": 8, "layer_samples": 24}},
}


def _table(path):
    table = results.read_table(path / results.RESULTS)
    return {k: [str(v) for v in values] for k, values in table.items() if k != "seconds"}


def _arrays(path):
    files = {}
    for file in sorted(path.glob("*.npz")):
        with np.load(file, allow_pickle=False) as data:
            files[file.name] = {k: data[k] for k in data.files}
    return files


def _assert_same_folder(a, b):
    assert _table(a) == _table(b)
    arrays_a, arrays_b = _arrays(a), _arrays(b)
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        assert arrays_a[name].keys() == arrays_b[name].keys(), name
        for key in arrays_a[name]:
            np.testing.assert_array_equal(arrays_a[name][key], arrays_b[name][key],
                                          err_msg=f"{name}:{key}")


def _patch_run_unit(monkeypatch, name, wrapper):
    kind = kinds.get(name)
    module = __import__(kinds.KIND_MODULES[name], fromlist=["KINDS"])
    monkeypatch.setitem(module.KINDS, name, kind._replace(run_unit=wrapper(kind.run_unit)))


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_kind_resumes_after_a_kill(tmp_path, monkeypatch, name):
    experiment = ufm.running.experiment.resolve(EXPERIMENTS[name])
    ufm.run(experiment, out=tmp_path / "straight", progress=False)

    ran = []

    def killed_on_the_second_unit(run_unit):
        def wrapped(experiment, unit, bar, scratch):
            ran.append(unit.tag)
            if len(ran) == 2:
                raise KeyboardInterrupt
            return run_unit(experiment, unit, bar, scratch)
        return wrapped

    _patch_run_unit(monkeypatch, name, killed_on_the_second_unit)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        ufm.run(experiment, out=out, progress=False)
    assert len(results.read_table(out / results.RESULTS)["row"]) >= 1  # the first unit's rows
    monkeypatch.undo()
    ran.clear()
    _patch_run_unit(monkeypatch, name, lambda run_unit: lambda *a: (ran.append(a[1].tag),
                                                                    run_unit(*a))[1])
    resumed = ufm.run(experiment, out=out, progress=False)
    assert len(ran) == 1 and resumed.resumed == 1  # only the unfinished unit ran
    _assert_same_folder(tmp_path / "straight", out)


def test_a_damaged_checkpoint_is_named_and_redone_and_the_table_never_missing(tmp_path,
                                                                               monkeypatch):
    experiment = ufm.running.experiment.resolve(EXPERIMENTS["grid"])
    out = tmp_path / "out"
    ufm.run(experiment, out=out, progress=False)
    straight = _table(out)
    checkpoints = sorted((out / results.CHECKPOINTS).glob("group-*.npz"))
    assert len(checkpoints) == 2
    blob = checkpoints[1].read_bytes()
    checkpoints[1].write_bytes(blob[: len(blob) // 2])  # a full disk or a bad copy
    text = (out / results.RESULTS).read_text()
    (out / results.RESULTS).write_text(text[: len(text) // 3])

    ran = []

    def watched(run_unit):
        def wrapped(*args):
            assert (out / results.RESULTS).is_file()  # the old table stays until replaced
            ran.append(args[1].tag)
            return run_unit(*args)
        return wrapped

    _patch_run_unit(monkeypatch, "grid", watched)
    with pytest.warns(UserWarning, match=f"{checkpoints[1].name}: damaged checkpoint"):
        ufm.run(experiment, out=out, progress=False)
    assert ran == [checkpoints[1].stem]  # that unit only
    assert _table(out) == straight


def test_a_checkpoint_of_other_rows_is_not_trusted(tmp_path):
    folder = results.ResultsFolder(tmp_path, "x")
    blob = results.pack_unit("a", results.UnitResult([{"row": 3, "v": 1.5}], [], {}),
                             folder.digest)
    folder.save_unit("a", blob)
    assert folder.load_unit("a", [3]).rows == [{"row": 3, "v": 1.5}]
    with pytest.warns(UserWarning, match="rows are not this unit's"):
        assert folder.load_unit("a", [4]) is None
    folder.save_unit("b", blob)
    with pytest.warns(UserWarning, match="it holds unit 'a'"):
        assert folder.load_unit("b") is None


def test_the_cifar_reader_builds_no_other_objects(tmp_path):
    from ufm.nets import data

    good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    (tmp_path / "good").write_bytes(pickle.dumps(good, protocol=2))
    x, y = data._cifar_batch(tmp_path / "good")
    assert x.shape == (2, 32, 32, 3) and list(y) == [0, 1]

    class Exploit:
        def __reduce__(self):
            return (print, ("this ran",))

    (tmp_path / "bad").write_bytes(pickle.dumps({b"data": Exploit()}))
    with pytest.raises(ufm.running.config.InputError, match="builtins.print is not allowed"):
        data._cifar_batch(tmp_path / "bad")


def test_progress_off_a_terminal_prints_lines_not_carriage_returns(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bar = ufm.solvers.batching.progress_bar(True, 1000, "grid")
    for _ in range(1000):
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    assert 1 <= len(err.splitlines()) <= 3  # the first line, the last, nothing per update


@pytest.mark.parametrize("damage, said", [
    (lambda text: "", "has no header line"),
    (lambda text: text.splitlines()[0] + "\n1,2\n", "line 2 has 2 cells, the header 3"),
    (lambda text: text.encode() + b"\xff\xfe,\x80\n", "is damaged"),
])
def test_a_damaged_results_table_is_named_not_a_traceback(tmp_path, damage, said):
    """An empty results.csv was a StopIteration, a cut line an IndexError."""
    path = tmp_path / "results.csv"
    results.write_table(path, [{"row": 0, "loss": "ce", "nc1": 0.5}])
    assert list(results.read_table(path)) == ["row", "loss", "nc1"]
    broken = damage(path.read_text())
    path.write_bytes(broken if isinstance(broken, bytes) else broken.encode())
    with pytest.raises(results.ResultsFolderError, match=said):
        results.read_table(path)


# --- one writer, checkpoints that prove what they hold, a damaged config.toml (issue 24) ---

SLOW_GRID = """name = "two_writers"
[problem]
num_classes = 3
feature_dim = 3
n_per_class = 2
dtype = "float64"
[hyper]
lam_W = [5e-3, 6e-3, 7e-3, 8e-3, 9e-3, 1e-2]
lam_H = 5e-3
lam_b = 0.0
[solver]
steps = 40000
log_every = 2000
[run]
seeds = [0]
chunk = 1
batch = 1
"""


def _numbers(path):
    table = results.read_table(path / results.RESULTS)
    return {k: np.asarray(v) for k, v in table.items() if k != "seconds"}


def _wait_for(condition, what, seconds=120.0):
    import time
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_second_writer_refuses_and_sigterm_then_rerun_equals_the_uninterrupted_run(tmp_path,
                                                                                      capsys):
    """Two `ufm run`s on one folder used to both run the whole grid (and a killed second one
    left a 7-row table beside a 12-row history). Now the second refuses naming the first; the
    first, preempted with SIGTERM, says how to resume, and the resumed table is the straight
    run's."""
    import json
    import signal
    import subprocess
    import sys

    from ufm import cli

    file = tmp_path / "grid.toml"
    file.write_text(SLOW_GRID)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ufm", "run", str(file), "--out", str(out), "--no-plots",
               "--no-progress", "--host-devices", "1"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = out / results.LOCK

        def running():
            try:
                return json.loads(lock.read_text()).get("state") == "running"
            except (OSError, ValueError):
                return False
        _wait_for(running, "the first run's lock")
        assert cli.main(["run", str(file), "--out", str(out), "--no-plots",
                         "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"is being written by process {first.pid} on host" in err, err
        assert "Traceback" not in err
        _wait_for(lambda: any((out / results.CHECKPOINTS).glob("group-*.npz")),
                  "the first checkpoint")
        first.send_signal(signal.SIGTERM)
        _, first_err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 143, first_err
    assert "terminated (SIGTERM)" in first_err and "Resume with" in first_err
    assert json.loads((out / results.LOCK).read_text())["state"] == "released"
    finished = len(list((out / results.CHECKPOINTS).glob("group-*.npz")))
    assert 1 <= finished < 6  # preempted mid-grid

    experiment = ufm.running.experiment.load(file)
    resumed = ufm.run(experiment, out=out, progress=False)  # the lock is free again
    assert resumed.resumed == finished
    ufm.run(experiment, out=tmp_path / "straight", progress=False)
    got, want = _numbers(out), _numbers(tmp_path / "straight")
    assert got.keys() == want.keys() and len(got["row"]) == 6
    for key in want:
        if want[key].dtype.kind == "f":
            np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-12, err_msg=key)
        else:
            assert (got[key] == want[key]).all(), key


def test_a_lock_of_a_live_process_refuses_and_of_a_dead_one_is_taken_over(tmp_path):
    import json
    import os
    import socket
    import subprocess
    import sys
    import time

    experiment = ufm.running.experiment.resolve(EXPERIMENTS["grid"])
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ufm import results; "
         "results.FolderLock(sys.argv[1]).acquire(); print('held', flush=True); "
         "time.sleep(600)", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(results.FolderBusy, match=f"process {holder.pid} on host"):
            ufm.run(experiment, out=out, progress=False)
    finally:
        holder.kill()  # kill -9: the record still says "running"
        holder.wait()
    assert json.loads((out / results.LOCK).read_text())["state"] == "running"
    with pytest.warns(UserWarning, match=f"stale lock of process {holder.pid}.*it has ended"):
        ufm.run(experiment, out=out, progress=False)
    assert len(results.read_table(out / results.RESULTS)["row"]) == 2

    # A shared filesystem that passes no OS locks between hosts: the record and its heartbeat.
    record = {"state": "running", "host": "elsewhere-" + socket.gethostname(), "pid": 4242,
              "command": "ufm run grid.toml", "started": time.time() - 60,
              "heartbeat": time.time() - 5}
    (out / results.LOCK).write_text(json.dumps(record))
    with pytest.raises(results.FolderBusy, match="process 4242 on host elsewhere-.*alive 5 s ago"):
        ufm.run(experiment, out=out, progress=False)
    record["heartbeat"] = time.time() - results.STALE_SECONDS - 1
    (out / results.LOCK).write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="stale lock of process 4242.*silent for"):
        ufm.run(experiment, out=out, progress=False)
    assert os.path.exists(out / results.LOCK)  # never removed: see FolderLock


def test_a_checkpoint_from_another_configuration_is_recomputed(tmp_path, monkeypatch):
    """A chunk copied in from the same grid run with other solver.steps used to be resumed as
    finished (its rows reporting the other run's steps)."""
    experiment = ufm.running.experiment.resolve(EXPERIMENTS["grid"])
    other = ufm.running.experiment.resolve(EXPERIMENTS["grid"] | {"solver": {"steps": 40,
                                                                      "log_every": 20}})
    ufm.run(experiment, out=tmp_path / "a", progress=False)
    ufm.run(other, out=tmp_path / "b", progress=False)
    straight = _table(tmp_path / "a")
    tag = sorted((tmp_path / "b" / results.CHECKPOINTS).glob("group-*.npz"))[1].name
    (tmp_path / "a" / results.CHECKPOINTS / tag).write_bytes(
        (tmp_path / "b" / results.CHECKPOINTS / tag).read_bytes())
    ran = []
    _patch_run_unit(monkeypatch, "grid", lambda run_unit: lambda *a: (ran.append(a[1].tag),
                                                                      run_unit(*a))[1])
    with pytest.warns(UserWarning, match=f"{tag}: damaged checkpoint.*computed for another "
                                         "configuration"):
        ufm.run(experiment, out=tmp_path / "a", progress=False)
    assert ran == [tag[:-4]]
    assert _table(tmp_path / "a") == straight


@pytest.mark.parametrize("damage", ["half", "cut at a line", "not UTF-8", "deleted",
                                    "deleted with its copy"])
def test_a_damaged_config_toml_is_restored_and_the_run_resumes(tmp_path, monkeypatch, damage):
    """A half config.toml used to be read as "a different configuration" (its missing keys
    filled with defaults), a deleted one blocked resuming with no hint."""
    experiment = ufm.running.experiment.resolve(EXPERIMENTS["grid"])
    out = tmp_path / "out"
    ufm.run(experiment, out=out, progress=False)
    straight = _table(out)
    config, copy = out / results.CONFIG, out / results.CHECKPOINTS / results.CONFIG
    text = config.read_text()
    assert copy.read_text() == text
    if damage == "half":
        config.write_text(text[: len(text) // 2])
    elif damage == "cut at a line":
        config.write_text("".join(text.splitlines(keepends=True)[:12]))
    elif damage == "not UTF-8":
        config.write_bytes(b"\xff\xfe" + text.encode()[:40])
    else:
        config.unlink()
        if damage == "deleted with its copy":
            copy.unlink()
    ran = []
    _patch_run_unit(monkeypatch, "grid", lambda run_unit: lambda *a: (ran.append(a[1].tag),
                                                                      run_unit(*a))[1])
    source = "the digests of its checkpoints" if damage == "deleted with its copy" else "config"
    with pytest.warns(UserWarning, match=f"config.toml is (damaged|missing).*; restored from "
                                         f".*{source}"):
        resumed = ufm.run(experiment, out=out, progress=False)
    assert ran == [] and resumed.resumed == 2
    assert config.read_text() == text and _table(out) == straight


def test_a_damaged_config_toml_of_another_configuration_says_so(tmp_path):
    experiment = ufm.running.experiment.resolve(EXPERIMENTS["grid"])
    other = ufm.running.experiment.resolve(EXPERIMENTS["grid"] | {"solver": {"steps": 40,
                                                                      "log_every": 20}})
    out = tmp_path / "out"
    ufm.run(experiment, out=out, progress=False)
    text = (out / results.CONFIG).read_text()
    (out / results.CONFIG).write_text(text[: len(text) // 2])
    with pytest.raises(results.ResultsFolderError,
                       match=r"config.toml is damaged .*its copy .* says it held results of a "
                             r"different configuration"):
        ufm.run(other, out=out, progress=False)
    (out / results.CHECKPOINTS / results.CONFIG).unlink()
    with pytest.raises(results.ResultsFolderError,
                       match="config.toml is damaged .*nothing in the folder shows that it held "
                             "this configuration"):
        ufm.run(other, out=out, progress=False)
    assert sorted((out / results.CHECKPOINTS).glob("group-*.npz"))  # nothing removed


def test_the_manifest_says_what_set_the_numbers(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    manifest = results.manifest(1.5, experiment="x")
    numerics = manifest["numerics"]
    assert numerics["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"
    assert numerics["environment"]["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"
    assert numerics["jax_config"]["jax_enable_x64"] in (True, False)
    assert "jax_default_matmul_precision" in numerics["jax_config"]
    assert numerics["ufm_matmul_precision"] == "highest"
    installed = manifest["installed"]
    assert installed["jax"] == manifest["packages"]["jax"] and "numpy" in installed
    assert len(installed) > 20 and list(installed) == sorted(installed, key=str.lower)
    # The tree's state: a clean checkout, then one with a tracked file changed.
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True,
                                    capture_output=True)
    git("init", "-q")
    (repo / "f.py").write_text("x = 1\n")
    git("add", "f.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    revision, dirty = results.git_state(repo)
    assert len(revision) == 40 and dirty is False
    (repo / "new.txt").write_text("untracked does not count\n")
    assert results.git_state(repo)[1] is False
    (repo / "f.py").write_text("x = 2\n")
    assert results.git_state(repo) == (revision, True)
    assert results.git_state(tmp_path) == (None, None)  # not a checkout
    assert {"git_revision", "git_dirty", "command", "devices"} <= set(manifest)
