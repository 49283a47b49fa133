"""Multi-label UFM with the pick-all-label loss: label sets in Problem, the reduction to the
CE UFM with single labels, NC_m -> 0 at the optimum, configuration and grid support."""
import numpy as np
import pytest

import ufm
from ufm.analysis import nc as metrics
from ufm.model.problem import multilabel_sets
from ufm.running import config, results


def test_multilabel_sets_builds_every_set_of_each_size():
    sets, counts = multilabel_sets(3, [4, 2])
    assert sets == ((0,), (1,), (2,), (0, 1), (0, 2), (1, 2))
    assert counts == (4, 4, 4, 2, 2, 2)
    sets, counts = multilabel_sets(4, [3, 0, 1])
    assert sets[-4:] == ((0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)) and len(sets) == 8
    problem = ufm.Problem(num_classes=3, feature_dim=4, label_sets=((0,), (1,), (2,), (0, 1)),
                          set_counts=(2, 2, 2, 3))
    Y = np.asarray(problem.targets())
    assert problem.num_samples == 9 and Y.shape == (3, 9)
    np.testing.assert_array_equal(Y[:, -3:], [[1, 1, 1], [1, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(Y.sum(axis=0), [1] * 6 + [2] * 3)


def test_single_label_sets_reduce_exactly_to_the_ce_ufm():
    plain = ufm.Problem(num_classes=4, feature_dim=6, n_per_class=3, dtype="float64")
    sets = ufm.Problem(num_classes=4, feature_dim=6, label_sets=((0,), (1,), (2,), (3,)),
                       set_counts=(3, 3, 3, 3), loss="pick_all_label", dtype="float64")
    hyper = ufm.Hyper(lam_W=1e-3, lam_H=1e-3, lam_b=1e-3)
    a = ufm.solve(plain, hyper, key=3, solver="lbfgs", steps=300, log_every=100, tol=1e-12)
    b = ufm.solve(sets, hyper, key=3, solver="lbfgs", steps=300, log_every=100, tol=1e-12)
    # Same targets and loss; only XLA's fusion may differ (round-off).
    np.testing.assert_allclose(b.history["objective"], a.history["objective"], rtol=1e-13)
    np.testing.assert_allclose(np.asarray(b.params.H), np.asarray(a.params.H), rtol=1e-9,
                               atol=1e-12)
    for key in ("nc1", "nc2_W", "nc2_H", "nc3", "nc4"):
        np.testing.assert_allclose(b.history[key], a.history[key], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(b.history["nc1_single"], a.history["nc1"], rtol=1e-9, atol=1e-9)
    assert np.all(np.isnan(b.history["nc_m"]))  # no multi-label sets
    assert b.history["rel_gap"][-1] == pytest.approx(0.0, abs=1e-9)  # the CE closed form


@pytest.mark.parametrize("counts_by_size", [[5, 5], [6, 2]])
def test_nc_m_vanishes_at_the_optimum_for_pairs(counts_by_size):
    sets, counts = multilabel_sets(3, counts_by_size)
    problem = ufm.Problem(num_classes=3, feature_dim=4, label_sets=sets, set_counts=counts,
                          dtype="float64")
    hyper = ufm.Hyper(lam_W=1e-3, lam_H=1e-3, lam_b=1e-3)
    result = ufm.solve(problem, hyper, key=0, solver="lbfgs", steps=2000, log_every=100,
                       tol=1e-12)
    history = result.history
    assert result.status == "converged"
    assert history["nc_m"][0] > 0.1 and history["nc_m"][-1] < 1e-8
    assert history["nc1"][-1] < 1e-12  # every label set collapsed to its mean
    assert history["nc2_W"][-1] < 1e-8 and history["nc2_H"][-1] < 1e-8  # single-label ETF
    assert history["nc3"][-1] < 1e-8


def test_nc_m_of_a_constructed_point():
    """Pair means equal to the sum of their classes' (centred) means: NC_m = 0; rotated by a
    known angle in the plane of the single-label ETF: NC_m is that angle."""
    K = 3
    sets, counts = multilabel_sets(K, [1, 1])
    E = ufm.analysis.theory.simplex_etf(K, 2)  # rows: the single-label means
    pairs = np.array([E[i] + E[j] for i, j in sets[K:]])
    H = np.concatenate([E, pairs]).T
    sample_sets = np.arange(len(sets))
    found = metrics.multilabel_metrics(E, H, sample_sets, sets)
    assert float(found["nc_m"]) == pytest.approx(0.0, abs=1e-12)
    theta = 0.1
    R = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    H = np.concatenate([E, pairs @ R.T]).T
    found = metrics.multilabel_metrics(E, H, sample_sets, sets)
    assert float(found["nc_m"]) == pytest.approx(theta, rel=1e-9)


def test_label_sets_are_checked():
    with pytest.raises(ValueError, match="a single-label set"):
        ufm.Problem(num_classes=3, feature_dim=3, label_sets=((0,), (1,), (0, 1)),
                    set_counts=(1, 1, 1))
    with pytest.raises(ValueError, match="loss='focal'"):
        ufm.Problem(num_classes=2, feature_dim=3, label_sets=((0,), (1,)), set_counts=(1, 1),
                    loss="focal")
    with pytest.raises(ValueError, match="set_counts"):
        ufm.Problem(num_classes=2, feature_dim=3, label_sets=((0,), (1,)), set_counts=(1,))
    with pytest.raises(ValueError, match="label sets, not one label"):
        _ = ufm.Problem(num_classes=2, feature_dim=3, label_sets=((0,), (1,)),
                        set_counts=(1, 1)).labels  # the property raises
    with pytest.raises(config.ConfigError, match="problem.multiplicity_counts"):
        ufm.running.kinds.grid.configurations(ufm.running.experiment.resolve({"problem": {
                                                          "num_classes": 3,
                                                          "multiplicity_counts": [0, 2]}}))


def test_grid_axis_over_multiplicity_counts(tmp_path):
    exp = ufm.running.experiment.resolve({
        "name": "ml-grid",
        "problem": {"num_classes": 3, "feature_dim": 4, "multiplicity_counts": [[2, 2], [2, 1]],
                    "dtype": "float64"},
        "solver": {"name": "gd", "steps": 400, "log_every": 100, "tol": 1e-12},
        "hyper": {"lam_W": 1e-3, "lam_H": 1e-3, "lam_b": 1e-3, "lr": 1.0},
    })
    ufm.run(exp, out=tmp_path, progress=False)
    table = results.read_table(tmp_path / results.RESULTS)
    assert list(table["label_sets"]) == ["0 1 2 0+1 0+2 1+2"] * 2
    assert [str(c) for c in table["set_counts"]] == ["2 2 2 2 2 2", "2 2 2 1 1 1"]
    with np.load(tmp_path / results.HISTORY) as history:
        nc_m = history["nc_m"]
    assert np.all(nc_m[:, -1] < 0.5 * nc_m[:, 0])  # falling during training


@pytest.mark.slow
def test_multilabel_picture_script(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "experiments" / "multilabel_picture.py"
    out = subprocess.run([sys.executable, str(script), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "multilabel_picture.png").is_file()
    late = [line for line in out.stdout.splitlines() if line.strip().startswith("late")][0]
    assert float(late.split("NC_m")[1].split()[0]) < 1e-8
