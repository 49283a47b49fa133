"""The landscape experiments of `ufm run` (kind = benign | origin_phase | saddle_escape), on
tiny problems."""
import json

import numpy as np
import pytest

import ufm
from ufm.analysis import theory
from ufm.model.problem import Hyper, Problem
from ufm.running import config, results

TINY = {"num_classes": 3, "feature_dim": 3, "n_per_class": 2, "dtype": "float64"}


def _experiment(kind, problem=None, hyper=None, solver=None, landscape=None, seeds=(0,)):
    raw = {"name": kind, "kind": kind, "problem": TINY | (problem or {}),
           "hyper": {"lam_W": 5e-3, "lam_H": 5e-3, "lam_b": 0.0} | (hyper or {}),
           "solver": {"name": "lbfgs", "steps": 1000, "log_every": 100} | (solver or {}),
           "run": {"seeds": list(seeds)}, "landscape": landscape or {}}
    return ufm.running.experiment.resolve(raw)


def test_benign_landscape_run(tmp_path):
    # One loss here (CE; MSE's saddles are probed in test_landscape.py): the suite's budget.
    exp = _experiment("benign", problem={"loss": "ce"},
                      landscape={"random_starts": 4, "saddle_starts": 2, "epsilon": 1e-3})
    result = ufm.run(exp, out=tmp_path)
    ufm.running.experiment.figures(tmp_path)
    table = results.read_table(tmp_path / "results.csv")
    # 4 random + 2 near the origin + 2 near rank 1
    assert len(table["row"]) == 4 + 2 + 2
    assert set(table["start"]) == {"random", "near origin", "near rank 1"}
    assert np.all(table["reached"]) and np.all(table["f_ref_is_closed_form"])
    assert set(table["end_verdict"]) == {"global min (certified)"}
    with np.load(tmp_path / "spectra.npz") as spectra:
        origin = spectra["0|origin"]
        assert str(spectra["0|rank 1|verdict"]) == "strict saddle"
        assert spectra["0|optimum"].min() > -1e-10
    prob = Problem(loss="ce", **TINY)
    expected = theory.origin_eig_min(prob, Hyper(lam_W=5e-3, lam_H=5e-3, lam_b=0.0))
    assert origin.min() == pytest.approx(expected, rel=1e-10)
    for name in ("benign_reached.png", "benign_spectra.png", "manifest.json", "config.toml"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "manifest.json").read_text())["kind"] == "benign"
    assert "near origin" in ufm.running.experiment.summary(tmp_path)
    assert result.rows[0]["loss"] == "ce"


def test_origin_phase_run(tmp_path):
    exp = _experiment("origin_phase", landscape={"ratios": [0.5, 0.9, 1.1, 2.0]}, seeds=(0, 1))
    ufm.run(exp, out=tmp_path)
    ufm.running.experiment.figures(tmp_path)
    table = results.read_table(tmp_path / "results.csv")
    np.testing.assert_allclose(table["origin_eig_min"], table["origin_eig_min_formula"],
                               rtol=1e-9)
    below = table["ratio"] < 1
    assert set(table["origin_verdict"][below]) == {"strict saddle"}
    assert set(table["origin_verdict"][~below]) == {"global min (certified)"}
    assert np.all(table["w_norm"][below] > 0.1) and np.all(table["w_norm"][~below] < 1e-4)
    np.testing.assert_allclose(table["objective"], table["f_star"], rtol=1e-9)
    assert (tmp_path / "origin_phase.png").is_file()


def test_saddle_escape_run(tmp_path):
    exp = _experiment("saddle_escape", hyper={"lr": 0.5},
                      solver={"name": "gd", "steps": 3000, "log_every": 5},
                      landscape={"saddle": "origin", "epsilon": [1e-9, 1e-5]})
    ufm.run(exp, out=tmp_path)
    ufm.running.experiment.figures(tmp_path)
    table = results.read_table(tmp_path / "results.csv")
    assert np.all(table["escaped"]) and set(table["saddle_verdict"]) == {"strict saddle"}
    small, large = table["epsilon"] == 1e-9, table["epsilon"] == 1e-5
    measured = table["plateau"][small][0] - table["plateau"][large][0]
    predicted = table["predicted_plateau"][small][0] - table["predicted_plateau"][large][0]
    assert measured == pytest.approx(predicted, rel=0.1)  # linear escape sets the slope
    assert (tmp_path / "saddle_escape.png").is_file()
    assert (tmp_path / "history.npz").is_file()


@pytest.mark.parametrize("landscape, message", [
    ({"random_starts": -1}, "landscape.random_starts=-1"),
    ({"epsilon": [0.0]}, r"landscape.epsilon=\[0.0\]"),
    ({"saddle": "peak"}, "landscape.saddle='peak'"),
    ({"method": "qr"}, "landscape.method='qr'"),
    ({"nonsense": 1}, "unknown key landscape.'nonsense'"),
])
def test_bad_landscape_settings(landscape, message):
    with pytest.raises(config.ConfigError, match=message):
        _experiment("benign", landscape=landscape)


def test_unknown_kind():
    with pytest.raises(config.ConfigError, match="kind='hessian'"):
        ufm.running.experiment.resolve({"kind": "hessian"})


@pytest.mark.parametrize("path", sorted(__import__("pathlib").Path(__file__).parents[3]
                                        .joinpath("experiments").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_shipped_experiment_file_is_valid(path):
    exp = ufm.running.experiment.load(path)
    if exp.kind == "net":
        assert ufm.running.kinds.net.configurations(exp)
        return
    if exp.kind == "transfer":
        assert ufm.running.kinds.transfer.configurations(exp)
        return
    assert ufm.running.kinds.grid.configurations(exp)
