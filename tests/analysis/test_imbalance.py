"""Imbalanced classes: the convex oracle against the nonconvex solver and the balanced closed
form, minority-collapse metrics and the collapse threshold."""
import numpy as np
import pytest

import ufm
from ufm.analysis import imbalance, oracle, theory


def test_imbalance_metrics_on_a_simplex_etf():
    K = 6
    W = theory.simplex_etf(K, K)
    counts = (4, 4, 4, 1, 1, 1)
    labels = np.repeat(np.arange(K), counts)
    found = imbalance.imbalance_metrics(W, W.T[:, labels], labels, counts)
    assert found["minority_cos"] == pytest.approx(-1 / (K - 1))
    assert found["majority_cos"] == pytest.approx(-1 / (K - 1))
    assert found["w_norm_ratio"] == pytest.approx(1.0)
    assert found["h_norm_ratio"] == pytest.approx(1.0)


def test_grid_rows_carry_the_oracle_and_the_collapse_ratio(tmp_path):
    from ufm.running import results

    exp = ufm.running.experiment.resolve({
        "name": "imbalance-grid",
        "problem": {"num_classes": 4, "feature_dim": 6, "class_counts": [20, 20, 5, 5],
                    "dtype": "float64"},
        "hyper": {"lam_W": 5e-3, "lam_H": 5e-3, "lam_b": 5e-3},
        "solver": {"name": "lbfgs", "steps": 2000, "log_every": 2000, "tol": 1e-12},
        "run": {"seeds": [0, 1]},
    })
    ufm.run(exp, out=tmp_path, progress=False)
    table = results.read_table(tmp_path / results.RESULTS)
    assert np.all(np.abs(table["oracle_gap"]) < 1e-6)
    problem = ufm.Problem(num_classes=4, feature_dim=6, n_per_class=1, dtype="float64")
    hyper = ufm.Hyper(lam_W=5e-3, lam_H=5e-3, lam_b=5e-3)
    R = oracle.minority_collapse_threshold(problem, hyper, minority=[2, 3], n_minority=5)
    np.testing.assert_allclose(table["collapse_ratio"], R)
    # Below the threshold (ratio 4): minority classifiers apart, the oracle agreeing.
    assert R > 4 and np.all(table["minority_cos"] < 1 - 1e-3)
    np.testing.assert_allclose(table["minority_cos"], table["oracle_minority_cos"], atol=1e-5)
