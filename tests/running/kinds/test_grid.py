import json

import numpy as np

import ufm
from ufm.running import results
from ufm.running.kinds import grid


def test_grid_groups_by_problem_and_solver_and_keeps_zip_pairs(tmp_path):
    exp = ufm.running.experiment.resolve({
        "name": "tiny-grid",
        "problem": {"num_classes": 3, "feature_dim": 4, "n_per_class": 2},
        "hyper": {"lam_W": {"logspace": [1e-3, 1e-2, 2]}, "lam_H": 1e-2},
        "solver": {"name": ["gd", "adam"], "steps": 40, "log_every": 20},
        "zip": [{"loss": ["ce", "mse"], "lam_b": [1e-3, 0.0], "lr": [0.5, 0.05]}],
        "run": {"seeds": [0, 1]},
    })
    result = ufm.run(exp, out=tmp_path)
    table = results.read_table(tmp_path / results.RESULTS)
    assert len(table["row"]) == 2 * 2 * 2 * 2  # lam_W x solver x zip x seeds
    manifest = json.loads((tmp_path / results.MANIFEST).read_text())
    assert manifest["groups"] == 4  # (loss) x (solver): one compiled batch each
    assert set(zip(table["loss"], table["lam_b"], table["lr"])) == {("ce", 1e-3, 0.5),
                                                                    ("mse", 0.0, 0.05)}
    assert set(table["solver"]) == {"gd", "adam"}
    np.testing.assert_array_equal(table["row"], np.arange(16))
    # Same configuration, same seed: the grid row equals a direct solve.

    i = 5
    cfg = ufm.running.kinds.grid.configurations(exp)[i]
    single = ufm.solve(cfg.problem, cfg.hyper, key=cfg.seed, steps=40, log_every=20,
                       solver=cfg.solver, tol=exp.solver["tol"] or 1e-6)
    np.testing.assert_allclose(table["objective"][i], single.history["objective"][-1], rtol=1e-5)
    assert result.rows[i]["solver"] == cfg.solver


def _tiny_grid():
    return ufm.running.experiment.resolve({
        "name": "resume",
        "problem": {"num_classes": 3, "feature_dim": 3, "n_per_class": 2,
                    "loss": ["ce", "mse"]},
        "hyper": {"lam_W": [1e-2, 2e-2], "lam_H": 1e-2, "lam_b": 0.0},
        "solver": {"steps": 60, "log_every": 20},
        "run": {"seeds": [0, 1]},
    })


def _table_without_timings(path):
    table = results.read_table(path / results.RESULTS)
    table.pop("seconds")
    return table


def test_an_interrupted_grid_resumes_without_recomputing(tmp_path, monkeypatch):
    exp = _tiny_grid()
    ufm.run(exp, out=tmp_path / "straight")

    calls = []
    real = grid.solve_batch

    def flaky(*args, **kwargs):
        calls.append(kwargs.get("desc"))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while the second group runs
        return real(*args, **kwargs)

    monkeypatch.setattr(grid, "solve_batch", flaky)
    out = tmp_path / "interrupted"
    try:
        ufm.run(exp, out=out)
    except KeyboardInterrupt:
        pass
    partial = results.read_table(out / results.RESULTS)
    assert sorted(set(partial["loss"])) == ["ce"]  # the finished group is already on disk
    assert len(partial["row"]) == 4

    calls.clear()
    monkeypatch.setattr(grid, "solve_batch", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    ufm.run(exp, out=out)
    assert len(calls) == 1  # the ce group was read back, not recomputed
    straight, resumed = _table_without_timings(tmp_path / "straight"), _table_without_timings(out)
    assert straight.keys() == resumed.keys()
    for key in straight:
        np.testing.assert_array_equal(straight[key], resumed[key], err_msg=key)
    _, h1 = results.load_results(tmp_path / "straight")
    _, h2 = results.load_results(out)
    for key in h1:
        np.testing.assert_array_equal(h1[key], h2[key], err_msg=key)
    manifest = json.loads((out / results.MANIFEST).read_text())
    assert manifest["units_resumed"] == 1


def test_a_folder_of_another_configuration_is_refused(tmp_path):
    exp = _tiny_grid()
    ufm.run(ufm.running.experiment.apply_overrides(exp, ["solver.steps=20"]), out=tmp_path / "a")
    import pytest

    with pytest.raises(ufm.running.results.ResultsFolderError, match="different configuration"):
        ufm.run(exp, out=tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(ufm.running.results.ResultsFolderError, match="not a ufm results folder"):
        ufm.run(exp, out=tmp_path / "b")


def test_chunked_groups_equal_one_batch_and_padding_is_dropped(tmp_path):
    exp = _tiny_grid()  # 2 groups of 4 configurations
    whole = ufm.run(ufm.running.experiment.apply_overrides(exp, ["run.batch=4"]),
                    out=tmp_path / "whole")
    cut = ufm.run(ufm.running.experiment.apply_overrides(exp, ["run.batch=3", "run.chunk=3"]),
                   out=tmp_path / "cut")
    manifest = json.loads((tmp_path / "cut" / results.MANIFEST).read_text())
    assert manifest["batch_widths"] == [3, 3] and manifest["chunks"] == 4
    a, b = _table_without_timings(tmp_path / "whole"), _table_without_timings(tmp_path / "cut")
    for key in ("row", "loss", "lam_W", "seed", "status", "steps"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    np.testing.assert_allclose(a["objective"], b["objective"], rtol=1e-6)
    assert len(whole.rows) == len(cut.rows) == 8
    # Slices of one under lax.map inside chunks of two: the same results again.
    mapped = ufm.run(ufm.running.experiment.apply_overrides(exp, ["run.batch=1", "run.chunk=2"]),
                      out=tmp_path / "mapped")
    manifest = json.loads((tmp_path / "mapped" / results.MANIFEST).read_text())
    assert manifest["batch_widths"] == [1, 1] and manifest["chunk_sizes"] == [2, 2]
    c = _table_without_timings(tmp_path / "mapped")
    for key in ("row", "status", "steps"):
        np.testing.assert_array_equal(a[key], c[key], err_msg=key)
    np.testing.assert_allclose(a["objective"], c["objective"], rtol=1e-6)
    assert len(mapped.rows) == 8


def test_grid_figures_pick_their_axes(tmp_path):

    exp = ufm.running.experiment.resolve({
        "problem": {"num_classes": 3, "feature_dim": 3, "n_per_class": 2, "loss": ["ce", "mse"]},
        "hyper": {"lam_W": [1e-2, 2e-2], "lam_H": [1e-2, 3e-2], "lam_b": 0.0},
        "solver": {"steps": 20, "log_every": 10}, "run": {"seeds": [0, 1]}})
    ufm.run(exp, out=tmp_path)
    names = {p.name for p in ufm.running.experiment.figures(tmp_path)}
    assert "grid_nc1_lam_W_lam_H.png" in names and "overview.png" in names
    names = {p.name for p in ufm.running.experiment.figures(tmp_path, metrics=["nc1"], x="lam_H",
                                                            y=None)}
    assert "grid_nc1_lam_H_lam_W.png" in names
