"""Sizes, files and folders that used to exhaust memory, hang or end in a traceback (issue 24):
each is refused in one line naming the field, the value and the limit, in well under 5 s,
before anything is allocated or compiled; a damaged file of a results folder is named."""
import io
import json
import pickle
import struct
import sys
import time

import numpy as np
import pytest

import ufm
from ufm import cli
from ufm.running import config, experiment, results
from ufm.solvers import batching

SMALL = {"problem": {"num_classes": 3, "feature_dim": 3, "n_per_class": 2, "dtype": "float64"},
         "hyper": {"lam_W": 5e-3, "lam_H": 5e-3, "lam_b": 0.0},
         "solver": {"steps": 40, "log_every": 20}, "run": {"seeds": [0]}}


def _refused(raw, message):
    start = time.perf_counter()
    with pytest.raises(config.ConfigError, match=message):
        experiment.resolve(raw)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("section, key, value, message", [
    ("problem", "n_per_class", 1_000_000_000, r"n_per_class=1000000000 is not allowed: at most "
                                              r"715827882 .*int32"),
    ("problem", "feature_dim", 1_000_000_000, r"num_classes x feature_dim = 3e\+09 .*2\^31 - 1"),
    ("problem", "num_classes", 10**12, r"num_classes=1000000000000 is not allowed: at most "
                                       r"2147483647"),
    ("problem", "depth", 1000, r"depth=1000 is not allowed: an integer from 1 to 64"),
    ("solver", "init_scale", 1e39, r"init_scale=1e\+39 is not allowed: a number in \(0, 1e6\]"),
    ("hyper", "lr", {"linspace": [0.1, 1.0, 100_000_000]},
     r"num at most 100000 values on one axis"),
])
def test_sizes_are_bounded_before_anything_is_allocated(section, key, value, message):
    raw = json.loads(json.dumps(SMALL))
    raw[section][key] = value
    _refused(raw, message)


def test_a_working_set_above_the_available_memory_is_refused_with_the_estimate(monkeypatch):
    raw = json.loads(json.dumps(SMALL))
    raw["problem"].update(num_classes=1000, feature_dim=512, n_per_class=100)
    monkeypatch.setenv("UFM_MEMORY_LIMIT", "1e8")
    _refused(raw, r"needs about 3\.12 GiB and 0\.0931 GiB is available; .*UFM_MEMORY_LIMIT")
    monkeypatch.setenv("UFM_MEMORY_LIMIT", "none")  # the user knows better
    assert experiment.resolve(raw).problem["num_classes"] == 1000


def test_configurations_computed_at_once_must_fit_together(monkeypatch):
    """The issue's probe: num_classes = 10^7 (d = 6, n = 5) in a grid on a 2-core CPU split into
    two host devices was killed at 24 GB. One such configuration fits (peak RSS of
    `ufm.solve` measured at 15.6 GiB, which the estimate brackets); two at once do not."""
    monkeypatch.setenv("UFM_MEMORY_LIMIT", "24e9")
    prob = ufm.Problem(num_classes=10**7, feature_dim=6, n_per_class=5)
    assert 14.5 < prob.working_set() / 2**30 < 17.5
    batching.check_in_flight(prob, 1, 2, "fewer")  # one device: one configuration at a time
    monkeypatch.setattr(batching.jax, "local_device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"size: 2 configurations at once \(1 per vmapped "
                       r"slice on each of 2 devices; num_classes=10000000.*needs about 31\.\d "
                       r"GiB and 22\.4 GiB is available; fewer, or set UFM_MEMORY_LIMIT"):
        batching.check_in_flight(prob, 1, 2, "fewer")


def test_a_batch_too_large_to_compute_at_once_is_refused_before_it_compiles(monkeypatch,
                                                                           tmp_path):
    prob = ufm.Problem(num_classes=3, feature_dim=3, n_per_class=2, dtype="float64")
    monkeypatch.setenv("UFM_MEMORY_LIMIT", str(2.5 * prob.working_set()))
    hypers = ufm.Hyper(lam_W=np.full(4, 5e-3), lam_H=np.full(4, 5e-3))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"4 configurations at once .* \(width=1: one "
                                         r"configuration per vmapped slice"):
        ufm.solve_batch(prob, hypers, [0, 1, 2, 3], steps=20, log_every=10)
    assert time.perf_counter() - start < 5
    assert ufm.solve_batch(prob, hypers, [0, 1, 2, 3], steps=20, log_every=10,
                           width=1).steps.shape == (4,)
    raw = json.loads(json.dumps(SMALL))
    raw["run"].update(seeds=[0, 1, 2, 3], batch=4)
    with pytest.raises(config.InputError, match=r"group 1: size: 4 configurations at once .*"
                                                r"run\.batch = 1 and --host-devices 1"):
        experiment.run(experiment.resolve(raw), out=tmp_path / "run")
    assert not (tmp_path / "run" / "results.csv").exists()


def test_a_grid_too_large_to_expand_is_refused():
    raw = json.loads(json.dumps(SMALL))
    raw["hyper"]["lam_W"] = {"linspace": [1e-4, 1e-2, 100_000]}
    raw["hyper"]["lam_H"] = {"linspace": [1e-4, 1e-2, 100]}
    _refused(raw, r"the grid has 1e\+07 configurations .* at most 1000000 in one experiment")


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not a text file"),
    (b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deep"),
    (b"x = " + b"[" * 20 + b"]" * 20 + b"\n", "nested too deep"),
    (b"lr = [" + b"0.1, " * 400_000 + b"]\n", "bytes is not allowed for an experiment file"),
])
def test_hostile_experiment_files_are_refused(tmp_path, content, message):
    path = tmp_path / "hostile.toml"
    path.write_bytes(content)
    start = time.perf_counter()
    with pytest.raises(config.ConfigError, match=message):
        experiment.load(path)
    assert time.perf_counter() - start < 5


def test_the_default_output_folder_stays_under_runs():
    assert cli.folder_name("/elsewhere/x") == "_elsewhere_x"
    assert cli.folder_name("../../x") == "_.._x"
    assert cli.folder_name("...") == "experiment"
    assert cli.folder_name("closed_forms") == "closed_forms"


def test_nc_metrics_refuses_one_class():
    with pytest.raises(ValueError, match="K = 1 class.*at least 2"):
        ufm.nc_metrics(np.ones((1, 3)), np.ones((3, 4)), np.zeros(4, int))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "out"
    ufm.run(experiment.resolve(SMALL | {"run": {"seeds": [0, 1], "chunk": 1, "batch": 1}}),
            out=out, progress=False)
    return out


def test_ufm_show_into_a_closed_pipe_is_quiet(finished, monkeypatch, capsys):
    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(sys, "stdout", Closed())
    assert cli.main(["show", str(finished), "--all"]) == 0


@pytest.mark.parametrize("damage", ["cut", "garbage", "other rows"])
def test_a_damaged_history_is_named_by_plot_and_load_results(finished, tmp_path, capsys, damage):
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    history = out / results.HISTORY
    if damage == "cut":
        history.write_bytes(history.read_bytes()[:200])
    elif damage == "garbage":
        history.write_bytes(b"not an archive")
    else:
        with np.load(history) as data:
            arrays = {k: data[k] for k in data.files}
        np.savez(history, **{k: (v if k == "iteration" else v[:1]) for k, v in arrays.items()})
    assert cli.main(["plot", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{history}" in err and ("damaged" in err or "not one trajectory per row" in err)
    assert "Traceback" not in err
    with pytest.raises(results.ResultsFolderError, match="history.npz"):
        results.load_results(out)


@pytest.mark.parametrize("name, content", [
    ("plan.json", [[2, 3]]), ("plan.json", {"a": 1}), ("plan.json", [["x", 1]]),
])
def test_a_plan_of_the_wrong_shape_is_named_and_made_again(finished, tmp_path, name, content):
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    straight = results.read_table(out / results.RESULTS)
    (out / results.CHECKPOINTS / name).write_text(json.dumps(content))
    with pytest.warns(UserWarning, match=f"{name}: damaged"):
        again = ufm.run(experiment.resolve(SMALL | {"run": {"seeds": [0, 1], "chunk": 1,
                                                            "batch": 1}}),
                        out=out, progress=False)
    assert again.resumed == 2  # the same cut of the work: every unit read back
    table = results.read_table(out / results.RESULTS)
    assert list(table["nc1"]) == list(straight["nc1"])


def test_imports_of_the_wrong_shape_are_named_and_their_rows_recomputed(tmp_path):
    base = SMALL | {"run": {"seeds": [0], "chunk": 1, "batch": 1}}
    out = tmp_path / "out"
    ufm.run(experiment.resolve(base), out=out, progress=False)
    extended = experiment.resolve(SMALL | {"run": {"seeds": [0, 1], "chunk": 1, "batch": 1}})
    ufm.run(extended, out=out, progress=False)
    straight = results.read_table(out / results.RESULTS)
    imports = sorted((out / results.CHECKPOINTS).glob("imports-*.json"))
    assert len(imports) == 1
    imports[0].write_text(json.dumps([["imported-x", [0, 99]]]))
    with pytest.warns(UserWarning, match="imports-.*damaged.*not distinct rows of one group"):
        ufm.run(extended, out=out, progress=False)
    assert list(results.read_table(out / results.RESULTS)["nc1"]) == list(straight["nc1"])


# ---- CIFAR-10 python batches: the reader builds only checked numbers, in bounded memory ----

class _Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 strings (BINSTRING), as the distributed CIFAR-10 batches are."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def _python2_batch(obj) -> bytes:
    out = io.BytesIO()
    _Python2Pickler(out, protocol=2).dump(obj)
    return out.getvalue()


def _shared_references(depth):
    """A list whose 16^(depth+1) leaves are 16 references per level: a few hundred bytes of
    pickle that np.asarray would expand to 16^(depth+1) numbers."""
    level = [0] * 16
    for _ in range(depth):
        level = [level] * 16
    return level


class _Forged:
    """An object that pickles as the given reduce tuple (a crafted file without hand-written
    opcodes)."""

    def __init__(self, *reduced):
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced


def _pixels(rows):
    return np.arange(rows * 3072, dtype=np.uint8).reshape(rows, 3072)


def test_the_cifar_reader_reads_python_2_batches_as_distributed(tmp_path):
    from ufm.nets import data

    file = tmp_path / "data_batch_1"
    file.write_bytes(_python2_batch({b"batch_label": b"training batch 1 of 5",
                                     b"labels": [3, 9, 0], b"data": _pixels(3),
                                     b"filenames": [b"a.png", b"b.png", b"c.png"]}))
    assert b"_codecs" not in file.read_bytes()  # really the Python 2 string opcodes
    x, y = data._cifar_batch(file)
    assert x.shape == (3, 32, 32, 3) and y.tolist() == [3, 9, 0] and y.dtype == np.int32
    np.testing.assert_array_equal(x[1, :, :, 0].ravel(), _pixels(3)[1, :1024])


_HUGE_STATE = (1, (10**6, 3072), np.dtype("u1"), False, b"abc")


@pytest.mark.parametrize("content, message", [
    (lambda: pickle.dumps({b"data": _shared_references(8), b"labels": [0]}, protocol=2),
     r"'data' is a list, not uint8 rows of 3072 bytes"),
    (lambda: pickle.dumps({b"data": _pixels(2), b"labels": _shared_references(8)}, protocol=2),
     r"'labels' is not a list of 2 integers"),
    (lambda: pickle.dumps([_pixels(2), [0, 1]], protocol=2),
     r"its top-level object is a list; a batch is a dict"),
    (lambda: b"\x80\x02\x82\x01.", r"extension code opcode EXT1"),
    (lambda: b"\x80\x02K\x01Q.", r"a persistent id"),
    (lambda: pickle.dumps({b"data": np.array([1, [2]], dtype=object), b"labels": [0]},
                          protocol=2), r"dtype 'O8' is not a numeric type"),
    (lambda: pickle.dumps({b"data": _Forged(np.ndarray, ((10**10,),)), b"labels": [0]},
                          protocol=2), r"numpy.ndarray called directly"),
    (lambda: pickle.dumps({b"data": _Forged(np._core.multiarray._reconstruct,
                                            (np.ndarray, (0,), b"b"), _HUGE_STATE)},
                          protocol=2), r"shape \(1000000, 3072\) whose data is not its"),
    (lambda: pickle.dumps({b"data": _pixels(2), b"labels": [0, 12]}, protocol=2),
     r"'labels' hold 0..12; CIFAR-10's are 0..9"),
    (lambda: pickle.dumps({b"data": _pixels(2), b"labels": [0, 1]}, protocol=2)[:200],
     r"not a pickle|a damaged pickle"),
    (lambda: bytes(range(256)) * 8, r"not a pickle"),
    (lambda: pickle.dumps({b"data": _Forged(print, ("this ran",))}, protocol=2),
     r"(__builtin__|builtins).print is not allowed"),
], ids=["shared-references-data", "shared-references-labels", "top-level-list",
        "extension-code", "persistent-id", "object-array", "ndarray-called", "huge-shape",
        "labels-out-of-range", "truncated", "not-a-pickle", "code"])
def test_a_malformed_cifar_batch_is_refused_naming_the_file(tmp_path, capsys, content, message):
    from ufm.nets import data

    file = tmp_path / "data_batch_1"
    file.write_bytes(content())
    start = time.perf_counter()
    with pytest.raises(config.InputError, match=message) as refused:
        data._cifar_batch(file)
    assert time.perf_counter() - start < 5
    assert str(refused.value).startswith(f"{file} is not a CIFAR-10 python batch: ")
    assert "this ran" not in capsys.readouterr().out


def test_a_cifar_batch_beyond_the_size_or_opcode_bounds_is_refused_unread(tmp_path, monkeypatch):
    from ufm.nets import data

    file = tmp_path / "data_batch_1"
    file.write_bytes(pickle.dumps({b"data": _pixels(100), b"labels": list(range(10)) * 10}))
    assert data._cifar_batch(file)[1].shape == (100,)
    monkeypatch.setattr(data, "MAX_BATCH_OPCODES", 50)
    with pytest.raises(config.InputError, match=r"more than 50 pickle opcodes"):
        data._cifar_batch(file)
    monkeypatch.setattr(data, "MAX_BATCH_BYTES", 10_000)
    with pytest.raises(config.InputError, match=r"bytes, more than the 10,000 a CIFAR-10 batch"):
        data._cifar_batch(file)


def test_a_split_missing_a_class_is_refused_before_training(tmp_path):
    from ufm.nets import data, models, training

    for name in data.CIFAR_FILES:
        labels = [k for k in range(10) if not (name == "test_batch" and k == 3)]
        (tmp_path / name).write_bytes(pickle.dumps({b"data": _pixels(len(labels)),
                                                    b"labels": labels}))
    with pytest.raises(config.InputError, match=r"'cifar10': the test split has no sample of "
                                                r"class \[3\] of 0..9"):
        data.load("cifar10", path=tmp_path)
    blobs = data.gaussian(num_classes=3, n_train=4, n_test=2, shape=(4,))
    keep = blobs.y_test != 2
    without = blobs._replace(x_test=blobs.x_test[keep], y_test=blobs.y_test[keep])
    model = models.build("mlp", input_shape=(4,), num_classes=3)
    with pytest.raises(config.InputError, match=r"the test split has no sample of class \[2\]"):
        training.train(model, without, training.TrainSettings(epochs=1), progress=False)
    wrong = blobs._replace(y_train=blobs.y_train[:-1])
    with pytest.raises(config.InputError, match=r"the train split has 12 inputs and 11 labels"):
        training.train(model, wrong, training.TrainSettings(epochs=1), progress=False)
