"""Generalized NC (d < K-1): the exact one-vs-rest margin QP, the softmax and Tammes codes
against configurations known exactly."""
import itertools

import numpy as np
import pytest

import ufm
from ufm.analysis import gnc, theory


def _brute_force_distance(P):
    """Distance from the origin to conv{columns of P}: the affine min-norm point of every
    subset of at most d + 1 columns, kept where its weights are >= 0 (exact for small m)."""
    d, m = P.shape
    best = np.inf
    for size in range(1, min(m, d + 1) + 1):
        for subset in itertools.combinations(range(m), size):
            Q = P[:, subset]
            A = np.block([[Q.T @ Q, np.ones((size, 1))], [np.ones((1, size)), np.zeros((1, 1))]])
            alpha = np.linalg.lstsq(A, np.r_[np.zeros(size), 1.0], rcond=None)[0][:size]
            if np.all(alpha >= -1e-12):
                best = min(best, np.linalg.norm(Q @ alpha))
    return best


@pytest.mark.parametrize("K,d", [(5, 2), (6, 3), (7, 3), (6, 4)])
def test_margin_qp_equals_brute_force_on_random_frames(K, d):
    rng = np.random.default_rng(K * 10 + d)
    for _ in range(3):
        W = rng.standard_normal((K, d))
        W /= np.linalg.norm(W, axis=1, keepdims=True)
        margins = gnc.one_vs_rest_margins(W)
        for k in range(K):
            exact = _brute_force_distance((np.delete(W, k, 0) - W[k]).T)
            assert margins[k] == pytest.approx(exact, abs=1e-10)


def test_margins_of_known_frames():
    np.testing.assert_allclose(gnc.one_vs_rest_margins(theory.simplex_etf(5, 7)), 5 / 4,
                               rtol=1e-12)
    angles = 2 * np.pi * np.arange(7) / 7
    polygon = np.stack([np.cos(angles), np.sin(angles)], 1)
    np.testing.assert_allclose(gnc.one_vs_rest_margins(polygon), 1 - np.cos(2 * np.pi / 7),
                               rtol=1e-12)
    octahedron = np.concatenate([np.eye(3), -np.eye(3)])
    np.testing.assert_allclose(gnc.one_vs_rest_margins(octahedron), 1.0, rtol=1e-12)
    inside = np.array([[1.0, 0], [0, 1], [-1, -1], [0.1, 0.1]])  # the last inside the others
    assert gnc.one_vs_rest_margins(inside)[3] < 1e-12


def test_gnc_metrics_vanish_or_match_on_a_collapsed_polygon():
    angles = 2 * np.pi * np.arange(5) / 5
    W = np.stack([np.cos(angles), np.sin(angles)], 1)
    labels = np.repeat(np.arange(5), 3)
    H = 2.0 * W[labels].T  # collapsed, self-dual features (any norm: GNC normalizes)
    m = gnc.gnc_metrics(W, H, labels)
    assert m["gnc1"] < 1e-20 and m["gnc3"] < 1e-12
    assert m["gnc2_margin"] == pytest.approx(1 - np.cos(2 * np.pi / 5), rel=1e-12)
    assert m["gnc2_tammes"] == pytest.approx(2 * np.sin(np.pi / 5), rel=1e-12)


def _margin(W):
    return float(np.min(gnc.one_vs_rest_margins(np.asarray(W, float))))


def test_grid_rows_carry_gnc_columns_that_reach_the_known_codes(tmp_path):
    """A sphere grid with d < K-1: every row gets the exact-QP margin, and at a small
    temperature the learned classifiers reach the softmax code (d = 2: the regular K-gon)."""
    from ufm.running import results
    from ufm.running.kinds import grid

    exp = ufm.running.experiment.resolve(
        {
            "name": "gnc-grid",
            "problem": {
                "num_classes": 6,
                "feature_dim": 2,
                "n_per_class": 2,
                "geometry": "sphere",
                "dtype": "float64",
            },
            "hyper": {"tau": [0.5, 0.05]},
            "solver": {"name": "lbfgs", "steps": 200, "log_every": 50, "tol": 1e-14},
            "run": {"seeds": [0]},
        }
    )
    ufm.run(exp, out=tmp_path, progress=False)
    table = results.read_table(tmp_path / results.RESULTS)
    for i in range(len(table["row"])):
        K, d = table["num_classes"][i], table["feature_dim"][i]
        assert table["code_margin"][i] == pytest.approx(theory.known_code_margin(K, d))
        assert table["gnc1"][i] < 1e-8  # the two features of a class coincide
        if table["tau"][i] == 0.05:
            assert table["gnc2_margin"][i] == pytest.approx(table["code_margin"][i], rel=1e-6)
    assert theory.known_code_margin(6, 2) == pytest.approx(0.5)
    assert theory.known_code_margin(4, 3) == pytest.approx(4 / 3)  # the simplex ETF
    assert grid.plot_gnc_margin(tmp_path, table) == [tmp_path / "gnc_margin.png"]


