"""The one results folder of every kind: killed after its first checkpoint and run again, each
kind ends with the folder of an uninterrupted run; a damaged checkpoint and a truncated table
are reported and redone without the folder ever losing its table; data files hold no pickles."""
import pickle
import warnings

import numpy as np
import pytest

import ufm
from ufm import kinds, results

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
    experiment = ufm.experiment.resolve(EXPERIMENTS[name])
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
    experiment = ufm.experiment.resolve(EXPERIMENTS["grid"])
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
    blob = results.pack_unit("a", results.UnitResult([{"row": 3, "v": 1.5}], [], {}))
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
    with pytest.raises(ufm.config.InputError, match="builtins.print is not allowed"):
        data._cifar_batch(tmp_path / "bad")


def test_progress_off_a_terminal_prints_lines_not_carriage_returns(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bar = ufm.runner.progress_bar(True, 1000, "grid")
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
