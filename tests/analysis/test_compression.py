"""Feature compression next to NC: effective rank, coding rate and rate reduction equal their
formulas on constructed features, and appear in the rows of UFM runs."""
import numpy as np
import pytest

import ufm
from ufm.analysis import compression, theory

EPS2 = 0.5


def _direct_rate(Z, eps2=EPS2):
    d, N = Z.shape
    return 0.5 * np.linalg.slogdet(np.eye(d) + d / (N * eps2) * Z @ Z.T)[1]


def test_coding_rate_and_rate_reduction_equal_the_formulas():
    rng = np.random.default_rng(0)
    for d, N in ((5, 40), (30, 12)):  # both branches: d x d and N x N Gram matrices
        Z = rng.normal(size=(d, N))
        assert compression.coding_rate(Z) == pytest.approx(_direct_rate(Z), rel=1e-12)
        labels = np.arange(N) % 3
        expected = _direct_rate(Z) - sum(
            np.mean(labels == k) * 0.5 * np.linalg.slogdet(
                np.eye(d) + d / (np.sum(labels == k) * EPS2) * Z[:, labels == k]
                @ Z[:, labels == k].T)[1] for k in range(3))
        assert compression.rate_reduction(Z, labels, 3) == pytest.approx(expected, rel=1e-10)


def test_effective_rank_on_constructed_spectra():
    U, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(8, 8)))
    V, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(20, 20)))
    for s in ([1, 1, 1, 0, 0, 0, 0, 0], [4, 2, 1, 1, 0, 0, 0, 0]):
        Z = U @ np.diag(s) @ V[:8]
        p = np.array(s, float)[np.array(s) > 0] / np.sum(s)
        assert compression.effective_rank(Z) == pytest.approx(np.exp(-np.sum(p * np.log(p))),
                                                               rel=1e-10)


def test_closed_form_optimum_compresses_to_k_minus_1_dimensions():
    K, d, n = 4, 6, 5
    prob = ufm.Problem(num_classes=K, feature_dim=d, n_per_class=n, dtype="float64")
    point = theory.optimum_point(prob, ufm.Hyper())
    N = K * n
    # unit features: K ETF vectors n times each, sum_k u_k u_k^T = K/(K-1) P (P of rank K-1)
    rate = 0.5 * (K - 1) * np.log(1 + d / (N * EPS2) * n * K / (K - 1))
    expected = {"effective_rank": K - 1, "coding_rate": rate,
                "rate_reduction": rate - 0.5 * np.log(1 + d / EPS2)}
    found = compression.compression_metrics(point.H, prob.labels, K)
    for key, value in expected.items():
        assert found[key] == pytest.approx(value, rel=1e-10), key


def test_grid_rows_carry_compression(tmp_path):
    grid = {"name": "c", "problem": {"num_classes": 3, "feature_dim": 4, "n_per_class": 4},
            "hyper": {"lam_W": 5e-3, "lam_H": 5e-3}, "solver": {"steps": 3000,
                                                               "log_every": 1000},
            "run": {"seeds": [0, 1]}}
    ufm.run(ufm.running.experiment.resolve(grid), out=tmp_path / "c", progress=False)
    table = ufm.running.results.read_table(tmp_path / "c" / "results.csv")
    assert np.allclose(table["effective_rank"], 2.0, atol=0.02)  # nearly collapsed: K - 1
    assert np.all(table["rate_reduction"] > 0.5)
