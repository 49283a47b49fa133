"""`ufm.analysis.end_points`: the columns a batch of end points reports, by problem: compression
always, GNC where d < K - 1 or on the sphere (the polygon's margin equal to the known code's),
minority collapse and the convex oracle for imbalanced classes."""
import numpy as np

import ufm
from ufm.analysis import end_points
from ufm.model import frames


def _collapsed(problem, W):
    """Params with every feature at its classifier (a batch of one)."""
    H = W[problem.labels].T
    return ufm.Params(W[None], H[None], np.zeros((1, problem.num_classes)), None)


def test_balanced_weight_decay_reports_compression_only():
    problem = ufm.Problem(num_classes=4, feature_dim=4, n_per_class=3)
    W = frames.simplex_etf(4, 4)
    found = end_points.end_point_columns(problem, ufm.Hyper(), _collapsed(problem, W), 1,
                                         np.array([1.0]))
    assert found and all(k.startswith("extra/") for k in found)
    assert not any("gnc" in k or "oracle" in k or "minority" in k for k in found)


def test_a_polygon_on_the_sphere_reports_the_known_code_margin():
    problem = ufm.Problem(num_classes=5, feature_dim=2, n_per_class=2, geometry="sphere")
    angles = 2 * np.pi * np.arange(5) / 5
    W = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    found = end_points.end_point_columns(problem, ufm.Hyper(tau=0.1), _collapsed(problem, W), 1,
                                         np.array([1.0]))
    assert found["extra/code_margin"][0] == 1.0 - np.cos(2 * np.pi / 5)
    np.testing.assert_allclose(found["extra/gnc2_margin"], found["extra/code_margin"],
                               rtol=1e-9)


def test_imbalanced_classes_report_minority_collapse_and_the_oracle():
    problem = ufm.Problem(num_classes=4, feature_dim=4, class_counts=(6, 6, 2, 2))
    hypers = ufm.Hyper(*(np.atleast_1d(v) for v in ufm.Hyper(lam_W=5e-3, lam_H=5e-3)))
    W = frames.simplex_etf(4, 4)
    found = end_points.end_point_columns(problem, hypers, _collapsed(problem, W), 1,
                                         np.array([1.0]))
    for key in ("minority_cos", "oracle_objective", "oracle_gap", "oracle_rank",
                "collapse_ratio"):
        assert f"extra/{key}" in found, key
    assert found["extra/oracle_objective"][0] > 0
