"""`ufm.analysis.code_table`: the certified values obey what every code obeys, and the sphere
UFM's results compare learned classifiers with them (`code_margin`)."""
import numpy as np
import pytest

from ufm.analysis import best_known, code_table, end_points
from ufm.model.problem import Params, Problem


def test_certified_margins_obey_the_bounds():
    """margin >= d_min^2 / 2 for the Tammes code, so the softmax optimum is at least that;
    both fall with K (drop a point); Rankin's regime d + 2 <= K <= 2d: margin 1, distance
    sqrt 2; and every Tammes distance at most the best known (within its precision)."""
    for (d, K), margin in code_table.SOFTMAX_MARGIN.items():
        distance = code_table.TAMMES_DISTANCE[(d, K)]
        assert margin >= distance ** 2 / 2 - 1e-12, (d, K)
        if K <= 2 * d:
            assert margin == pytest.approx(1.0, abs=1e-12)
            assert distance == pytest.approx(np.sqrt(2), abs=1e-12)
        known = best_known.TAMMES.get((d, K))
        if known is not None:
            assert distance <= known.distance + max(known.tolerance, 1e-12), (d, K)
        if (d, K + 1) in code_table.SOFTMAX_MARGIN:
            assert code_table.TAMMES_DISTANCE[(d, K + 1)] <= distance + 1e-12, (d, K)
    assert code_table.certified_margin(8, 3) == pytest.approx(1 - (np.sqrt(8) - 1) / 7,
                                                              abs=1e-13)
    assert code_table.certified_margin(1000, 3) is None


def test_sphere_results_carry_the_certified_code_margin():
    """A sphere problem of 8 classes in R^3 (no closed form) reports the square antiprism's
    certified margin as code_margin next to the learned classifiers' own."""
    problem = Problem(num_classes=8, feature_dim=3, n_per_class=1, geometry="sphere")
    rng = np.random.default_rng(0)
    W = rng.normal(size=(1, 8, 3))
    params = Params(W=W, H=rng.normal(size=(1, 3, 8)), b=np.zeros((1, 8)))
    found = end_points.gnc_columns(problem, params, 1)
    assert found["extra/code_margin"][0] == code_table.certified_margin(8, 3)
    assert found["extra/gnc2_margin"][0] < found["extra/code_margin"][0]  # random: below it
