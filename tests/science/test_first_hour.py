"""What a newcomer meets in the first hour: every misuse gets a one-line error naming what is
wrong, adjusted settings say so, finished grids can be extended, results load into pandas."""
import re
from pathlib import Path

import jax
import numpy as np
import pytest

import ufm
from ufm import cli
from ufm.running import experiment, results

TINY = """name = "tiny"
[problem]
num_classes = 3
feature_dim = 4
n_per_class = 2
[hyper]
tau = {logspace = [0.1, 1, 3]}
lam_W = 5e-3
lam_H = 5e-3
[solver]
steps = 40
log_every = 20
[run]
seeds = [0, 1]
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


# ------------------------------------------------------------------ nc_metrics validates input


@pytest.fixture(scope="module")
def point():
    rng = np.random.default_rng(0)
    return rng.normal(size=(4, 5)), rng.normal(size=(5, 12)), np.repeat(np.arange(4), 3)


@pytest.mark.parametrize("case, message", [
    ("transposed", r"H has shape \(12, 5\) but W has shape \(4, 5\).*pass H\.T"),
    ("one_hot", r"labels have shape \(12, 4\).*not one-hot.*argmax\(axis=1\)"),
    ("short_labels", r"labels have shape \(11,\).*\(12,\)"),
    ("float_labels", r"labels have dtype float64: integer class indices 0\.\.3"),
    ("out_of_range", r"labels hold 4: class indices must lie in 0\.\.3"),
    ("negative", r"labels hold -1"),
    ("empty_class", r"class 2 has no samples"),
    ("bias", r"b has shape \(3,\): a bias of shape \(4,\)"),
    ("vector_W", r"W has shape \(20,\): a \(K, d\) classifier"),
])
def test_nc_metrics_names_bad_input(point, case, message):
    W, H, y = point
    args = {"transposed": (W, H.T, y), "one_hot": (W, H, np.eye(4)[y]),
            "short_labels": (W, H, y[:-1]), "float_labels": (W, H, y.astype(float)),
            "out_of_range": (W, H, np.where(y == 3, 4, y)),
            "negative": (W, H, np.where(y == 0, -1, y)),
            "empty_class": (W, H, np.where(y == 2, 1, y)), "bias": (W, H, y, np.zeros(3)),
            "vector_W": (W.ravel(), H, y)}[case]
    with pytest.raises(ValueError, match=message):
        ufm.nc_metrics(*args)


def test_nc_metrics_checks_shapes_under_jit_too(point):
    W, H, y = point
    with pytest.raises(ValueError, match="pass H.T"):
        jax.jit(lambda W, H: ufm.nc_metrics(W, H, y))(W, H.T)
    good = jax.jit(lambda W, H: ufm.nc_metrics(W, H, y)["nc1"])(W, H)
    assert np.isclose(float(good), ufm.nc_metrics(W, H, y)["nc1"], rtol=1e-5)


# ------------------------------------------------------------------------------------ Params


def test_params_unpack_as_the_readme_shows():
    prob = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=2)
    params = ufm.init(prob, jax.random.key(0))
    W, H, b = params
    assert W.shape == (3, 4) and H.shape == (4, 6) and b.shape == (3,)
    # one sequence protocol: unpacking, len, indexing and tuple() agree
    assert len(params) == len(tuple(params)) == 3 and params[-1] is params.b
    assert params[:2] == (params.W, params.H) and params.layers is None
    assert len(jax.tree.leaves(params)) == 3  # still a pytree of its fields
    assert params._replace(b=b + 1).b[0] == b[0] + 1 and params._asdict()["layers"] is None
    deep = ufm.init(ufm.Problem(num_classes=3, feature_dim=4, n_per_class=2, depth=3),
                    jax.random.key(0))
    W, H, b, layers = deep
    assert layers.shape == (2, 4, 4)
    assert len(deep) == len(tuple(deep)) == 4 and deep[3] is deep.layers


# ------------------------------------------------------------- settings that do not apply


def test_config_marks_hyper_keys_a_geometry_does_not_use(tiny, tmp_path):
    out = tmp_path / "sphere"
    experiment.run(tiny, out=out, overrides=["geometry=sphere", "steps=2"], progress=False)
    text = (out / "config.toml").read_text()
    assert re.search(r"^lam_W = .*# not used: no penalty on W on the sphere geometry", text, re.M)
    assert re.search(r"^E_H = .*# not used: norm-ball geometries only", text, re.M)
    assert re.search(r"^beta1 = .*# not used: adam only", text, re.M)
    assert re.search(r"^tau = [^#]*$", text, re.M) and re.search(r"^lr = [^#]*$", text, re.M)
    # the comments are TOML comments: the folder's file reads back as the same experiment
    assert experiment.load(out / "config.toml").to_dict()["hyper"] == \
        experiment.apply_overrides(experiment.load(tiny), ["geometry=sphere", "steps=2"]
                                   ).to_dict()["hyper"]
    wd = ufm.model.problem.unused_hyper_fields(ufm.Problem(num_classes=3, feature_dim=4,
                                                     n_per_class=2), "adam")
    assert "lam_W" not in wd and "beta1" not in wd and set(wd) >= {"E_W", "E_H", "momentum"}


def test_train_settings_refuse_hyper_fields_a_network_ignores():
    nets = pytest.importorskip("ufm.nets")
    with pytest.raises(ValueError, match=r"train\.hyper\.lr=0\.3 is not used \(set "
                                         r"TrainSettings\.lr\)"):
        nets.TrainSettings(hyper=ufm.Hyper(lr=0.3)).check()
    nets.TrainSettings(hyper=ufm.Hyper(lam_H=1e-3, tau=0.5)).check()


# ------------------------------------------------------------------------ grids and the CLI


def test_row_labels_at_four_digits_and_logspace_takes_end_values(tiny):
    configs = ufm.running.kinds.grid.configurations(experiment.load(tiny))
    taus = sorted({c.hyper.tau for c in configs})
    assert np.allclose(taus, [0.1, 10**-0.5, 1.0])  # geomspace(0.1, 1, 3), not 10**[0.1..1]
    assert ufm.running.tables.label_value(taus[1]) == "0.3162"


def test_a_rounded_chunk_is_reported(tiny, tmp_path, capsys):
    experiment.run(tiny, out=tmp_path / "c", overrides=["run.chunk=4", "run.batch=3"],
                   progress=False)
    err = capsys.readouterr().err
    assert "run.chunk=4 is rounded to 3 configurations" in err and "slices of 3" in err
    experiment.run(tiny, out=tmp_path / "d", overrides=["run.chunk=3", "run.batch=3"],
                   progress=False)
    assert "rounded" not in capsys.readouterr().err


def test_cli_misuse_gives_one_line_errors(tiny, tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(["run", str(tiny), "--out", str(out), "--no-progress", "--no-plots"]) == 0
    capsys.readouterr()
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    cases = [
        (["run", str(tiny), "--out", str(a_file)], "is a file, not a folder"),
        (["plot", str(out), "--x", "nope"], "--x 'nope' is not a numeric axis of this grid: "
                                             "one of tau"),
        (["plot", str(out), "--y", "nope"], "--y 'nope' is not a numeric axis"),
        (["plot", str(out), "--metric", "nope"], "--metric 'nope' is not in this results "
                                                  "folder: one of"),
        (["plot", str(tmp_path / "nothing")], "is not a results folder"),
        (["show", str(tmp_path / "nothing")], "is not a results folder"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert a_file.read_text() == "mine"
    assert cli.main(["plot", str(out), "--metric", "nc1", "--x", "tau"]) == 0
    assert (out / "grid_nc1_tau.png").is_file()


# ------------------------------------------------------------------ extending a finished grid


def _same_rows(a: dict, b: dict):
    for column in a:
        if column == "seconds":
            continue
        x, y = np.asarray(a[column]), np.asarray(b[column])
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(x, y, err_msg=column)
        else:
            assert list(map(str, x)) == list(map(str, y)), column


def test_a_finished_grid_extends_with_new_seeds_and_axis_values(tiny, tmp_path, capsys,
                                                                monkeypatch):
    out = tmp_path / "grid"
    experiment.run(tiny, out=out, progress=False)
    calls = []
    kind = ufm.running.kinds.grid.KINDS["grid"]
    monkeypatch.setitem(ufm.running.kinds.grid.KINDS, "grid", kind._replace(
        run_unit=lambda *a: calls.append(a[1].rows) or kind.run_unit(*a)))
    more = ["run.seeds=[0, 1, 2]", "tau=[0.1, 0.31622776601683794, 1.0, 3.0]"]
    result = experiment.run(tiny, out=out, overrides=more, progress=False)
    assert "6 finished runs reused, 6 of 12 to run" in capsys.readouterr().err
    assert result.resumed == 1 and sorted(i for rows in calls for i in rows) == [
        2, 5, 8, 9, 10, 11]  # the new seed of the old taus, and every seed of tau = 3
    fresh = experiment.run(tiny, out=tmp_path / "fresh", overrides=more, progress=False)
    table = results.read_table(out / results.RESULTS)
    _same_rows(table, results.read_table(tmp_path / "fresh" / results.RESULTS))
    history, fresh_history = results.load_results(out)[1], results.load_results(
        tmp_path / "fresh")[1]
    np.testing.assert_array_equal(history["nc1"], fresh_history["nc1"])
    assert len(fresh.rows) == 12
    # the folder is now the extended grid's: a rerun resumes everything, extends again
    calls.clear()
    assert experiment.run(tiny, out=out, overrides=more, progress=False).resumed == 2
    assert calls == []
    again = more[:1] + ["tau=[0.1, 0.31622776601683794, 1.0, 3.0, 10.0]"]
    experiment.run(tiny, out=out, overrides=again, progress=False)
    assert sorted(i for rows in calls for i in rows) == [12, 13, 14]
    assert not list((out / "checkpoints").glob("group-*-chunk-?????.npz"))  # old files gone


def test_an_extension_refuses_what_changes_finished_runs(tiny, tmp_path):
    out = tmp_path / "grid"
    experiment.run(tiny, out=out, progress=False)
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    for overrides, message in [
        (["steps=50"], r"solver\.steps = 40 there, 50 here"),
        (["run.seeds=[0]"], r"3 of its 6 runs are not in this experiment \(e\.g\. tau=0\.1, "
                            r"seed=1\)"),
        (["tau=[0.1, 0.3, 1.0]"], r"tau=0\.3162, seed=0"),
        (["lam_H=1e-3"], "not in this experiment"),
    ]:
        with pytest.raises(results.ResultsFolderError, match=message):
            experiment.run(tiny, out=out, overrides=overrides, progress=False)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


# ------------------------------------------------------------------------------ load_results


def test_load_results_gives_a_typed_dataframe(tiny, tmp_path):
    pandas = pytest.importorskip("pandas")
    out = tmp_path / "r"
    ufm.run(tiny, out=out, progress=False)
    table, history = ufm.load_results(out)
    assert isinstance(table, pandas.DataFrame) and len(table) == 6
    assert table["nc1"].dtype == np.float64 and table["seed"].dtype == np.int64
    assert table["num_classes"].dtype == np.int64 and table["bias"].dtype == bool
    assert isinstance(table["status"].dtype, pandas.CategoricalDtype)
    assert pandas.api.types.is_string_dtype(table["loss"])
    assert table["diverged_at"].isna().all()  # empty throughout: NaN, not text
    assert history["nc1"].shape == (6, len(history["iteration"]))
    means = table.groupby("tau")["nc1"].mean()
    assert list(means.index) == sorted(set(table["tau"]))
    with pytest.raises(FileNotFoundError, match="not a results folder"):
        ufm.load_results(Path(tmp_path / "nothing"))
