"""Sizes, files and folders that used to exhaust memory, hang or end in a traceback (issue 24):
each is refused in one line naming the field, the value and the limit, in well under 5 s,
before anything is allocated or compiled; a damaged file of a results folder is named."""
import io
import json
import sys
import time

import numpy as np
import pytest

import ufm
from ufm import cli, config, experiment, results

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
    _refused(raw, r"needs about 1\.\d+ GiB and 0\.0931 GiB is available; .*UFM_MEMORY_LIMIT")
    monkeypatch.setenv("UFM_MEMORY_LIMIT", "none")  # the user knows better
    assert experiment.resolve(raw).problem["num_classes"] == 1000


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
