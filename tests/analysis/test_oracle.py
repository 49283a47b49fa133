"""`ufm.analysis.oracle`: the convex oracle of imbalanced classes against the nonconvex solver and
the balanced closed form, its collapse threshold, and what it refuses."""
import numpy as np
import pytest

import ufm
from ufm.analysis import imbalance, oracle, theory


@pytest.mark.parametrize("loss,counts,lam_b", [
    ("ce", (20, 20, 5, 5), 5e-3),
    ("ce", (30, 12, 6, 3, 3), 1e-3),
    pytest.param("ls", (16, 16, 4, 4), 5e-3, marks=pytest.mark.slow),
    ("mse", (12, 6, 6, 3), 0.0),
])
def test_oracle_equals_the_nonconvex_optimum(loss, counts, lam_b):
    K = len(counts)
    problem = ufm.Problem(num_classes=K, feature_dim=K + 2, class_counts=counts, loss=loss,
                          dtype="float64")
    hyper = ufm.Hyper(lam_W=5e-3, lam_H=2e-3, lam_b=lam_b, alpha=0.1)
    found = oracle.convex_oracle(problem, hyper)
    assert found.exact and found.residual < 1e-12
    best = ufm.solve(problem, hyper, key=0, solver="lbfgs", steps=4000, log_every=4000,
                     tol=1e-12).history["objective"][-1]
    assert best == pytest.approx(found.objective, rel=1e-6)
    assert best >= found.objective - 1e-12  # the oracle is a lower bound
    # Its factorization is a point of the UFM with that value (features collapsed).
    labels = problem.labels
    H = found.H_bar[:, labels]
    pad = problem.feature_dim - K
    params = ufm.Params(np.pad(found.W, ((0, 0), (0, pad))), np.pad(H, ((0, pad), (0, 0))),
                        found.b)
    with problem.x64_scope():
        value = float(ufm.model.problem.objective(problem, hyper, params))
    assert value == pytest.approx(found.objective, rel=1e-10)


@pytest.mark.parametrize("loss,lam_b", [("ce", 5e-4), ("ls", 5e-4), ("mse", 0.0)])
def test_oracle_with_balanced_classes_is_the_closed_form(loss, lam_b):
    problem = ufm.Problem(num_classes=5, feature_dim=8, n_per_class=10, loss=loss,
                          dtype="float64")
    hyper = ufm.Hyper(lam_W=5e-3, lam_H=5e-3, lam_b=lam_b)
    found = oracle.convex_oracle(problem, hyper)
    closed = theory.optimum(problem, hyper)
    assert found.objective == pytest.approx(closed.objective, rel=1e-10)
    np.testing.assert_allclose(np.sum(found.W**2, axis=1), closed.w_norm_sq, rtol=1e-6)
    assert found.rank == 4  # the simplex ETF spans K - 1 dimensions


def test_minority_collapse_threshold_separates_collapsed_from_not():
    problem = ufm.Problem(num_classes=6, feature_dim=8, n_per_class=1, dtype="float64")
    hyper = ufm.Hyper(lam_W=5e-3, lam_H=5e-3, lam_b=5e-3)
    minority = [3, 4, 5]
    R = oracle.minority_collapse_threshold(problem, hyper, minority=minority, n_minority=5)
    assert 1 < R < 1e4
    for ratio, collapsed in ((R * 0.9, False), (R * 1.1, True)):
        counts = [ratio * 5] * 3 + [5] * 3
        found = oracle.convex_oracle(problem, hyper, counts=counts)
        spread = imbalance.minority_spread(found.W, minority)
        assert (spread < 1e-6) == collapsed, (ratio, spread)
    # Integer counts past the threshold: the nonconvex solver's minority classifiers coincide.
    n_major = int(np.ceil(R * 1.3 * 5))
    problem = ufm.Problem(num_classes=6, feature_dim=8, class_counts=(n_major,) * 3 + (5,) * 3,
                          dtype="float64")
    result = ufm.solve(problem, hyper, key=0, solver="lbfgs", steps=4000, log_every=4000,
                       tol=1e-12)
    found = imbalance.imbalance_metrics(result.params.W, result.params.H, problem.labels,
                                      problem.class_counts)
    assert found["minority_cos"] == pytest.approx(1.0, abs=1e-6)
    assert found["majority_cos"] < 0
    assert found["w_norm_ratio"] < 1


def test_oracle_refuses_what_it_cannot_solve():
    problem = ufm.Problem(num_classes=3, feature_dim=3, class_counts=(2, 1, 1), loss="focal")
    with pytest.raises(ValueError, match="loss='focal'"):
        oracle.convex_oracle(problem, ufm.Hyper())
    problem = ufm.Problem(num_classes=3, feature_dim=3, class_counts=(2, 1, 1))
    with pytest.raises(ValueError, match="lam_H=0.0"):
        oracle.convex_oracle(problem, ufm.Hyper(lam_H=0.0))
