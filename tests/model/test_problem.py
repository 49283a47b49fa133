import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.model.problem import validate_hyper


def test_labels_are_class_sorted_and_counts_respected():
    prob = ufm.Problem(num_classes=3, feature_dim=4, class_counts=(2, 1, 3))
    np.testing.assert_array_equal(prob.labels, [0, 0, 1, 2, 2, 2])
    assert prob.num_samples == 6 and not prob.balanced and prob.n_per_class is None
    balanced = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=2)
    assert balanced.class_counts == (2, 2, 2) and balanced.balanced


def test_problem_is_hashable_and_bias_defaults_by_geometry():
    a = ufm.Problem(num_classes=4, feature_dim=3, n_per_class=2)
    b = ufm.Problem(num_classes=4, feature_dim=3, n_per_class=2)
    assert hash(a) == hash(b) and a == b and a.bias is True
    assert ufm.Problem(num_classes=4, feature_dim=3, geometry="sphere").bias is False


@pytest.mark.parametrize(
    "kwargs, field, allowed",
    [
        (dict(num_classes=1, feature_dim=3), "num_classes=1", "integer >= 2"),
        (dict(num_classes=3, feature_dim=0), "feature_dim=0", "integer >= 1"),
        (dict(num_classes=3, feature_dim=2, n_per_class=0), "n_per_class=0", "integer >= 1"),
        (dict(num_classes=3, feature_dim=2, class_counts=(1, 2)), "class_counts", "3 integers"),
        (dict(num_classes=3, feature_dim=2, loss="hinge"), "loss='hinge'", "one of"),
        (dict(num_classes=3, feature_dim=2, geometry="ball"), "geometry='ball'", "one of"),
        (dict(num_classes=3, feature_dim=2, classifier="svm"), "classifier='svm'", "one of"),
        (dict(num_classes=3, feature_dim=2, dtype="float16"), "dtype='float16'", "one of"),
        (dict(num_classes=5, feature_dim=2, classifier="fixed_etf"), "feature_dim=2", "at least"),
    ],
)
def test_bad_problem_names_field_value_and_rule(kwargs, field, allowed):
    with pytest.raises(ValueError) as err:
        ufm.Problem(**kwargs)
    assert field in str(err.value) and allowed in str(err.value)


@pytest.mark.parametrize(
    "field, value, allowed",
    [("lam_W", -1.0, ">= 0"), ("lam_H", -1e-3, ">= 0"), ("tau", 0.0, "> 0"),
     ("alpha", 1.0, "< 1"), ("lr", 0.0, "> 0"), ("gamma", -1.0, ">= 0"),
     ("momentum", 1.5, "< 1"), ("lam_b", float("nan"), ">= 0")],
)
def test_bad_hyper_names_field_value_and_rule(field, value, allowed):
    with pytest.raises(ValueError) as err:
        validate_hyper(ufm.Hyper(**{field: value}))
    assert f"{field}=" in str(err.value) and allowed in str(err.value)


def test_bad_hyper_in_a_batch_is_caught():
    with pytest.raises(ValueError, match="lr=-1"):
        validate_hyper(ufm.Hyper(lr=np.array([0.1, -1.0])))


def test_init_is_deterministic_and_seed_dependent():
    prob = ufm.Problem(num_classes=4, feature_dim=5, n_per_class=3)
    a, b = ufm.init(prob, jax.random.key(0)), ufm.init(prob, jax.random.key(0))
    c = ufm.init(prob, jax.random.key(1))
    np.testing.assert_array_equal(a.H, b.H)
    assert not np.allclose(a.H, c.H)
    assert a.W.shape == (4, 5) and a.H.shape == (5, 12) and a.b.shape == (4,)


def test_init_on_sphere_and_fixed_etf():
    prob = ufm.Problem(num_classes=4, feature_dim=5, n_per_class=3, geometry="sphere",
                       classifier="fixed_etf")
    p = ufm.init(prob, jax.random.key(0))
    np.testing.assert_allclose(jnp.linalg.norm(p.H, axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p.W @ p.W.T, (4 / 3) * (np.eye(4) - 0.25), atol=1e-6)


def test_objective_matches_the_formula(x64):
    prob = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=2, dtype="float64")
    hyp = ufm.Hyper(lam_W=0.1, lam_H=0.2, lam_b=0.3, tau=0.5)
    p = ufm.init(prob, jax.random.key(3))
    p = p._replace(b=jnp.array([0.1, -0.2, 0.3]))
    Z = (np.asarray(p.W) @ np.asarray(p.H) + np.asarray(p.b)[:, None]) / 0.5
    logp = Z - np.log(np.exp(Z).sum(0))
    ce = -logp[prob.labels, np.arange(6)].mean()
    expected = ce + 0.05 * np.sum(p.W**2) + 0.1 * np.sum(p.H**2) + 0.15 * np.sum(p.b**2)
    np.testing.assert_allclose(ufm.objective(prob, hyp, p), expected, rtol=1e-12)


def test_float64_problem_runs_in_float64_without_global_flag():
    assert not jax.config.jax_enable_x64
    prob = ufm.Problem(num_classes=3, feature_dim=3, n_per_class=2, dtype="float64")
    res = ufm.solve(prob, ufm.Hyper(lam_W=0.01, lam_H=0.01), steps=20, log_every=10)
    assert res.params.H.dtype == jnp.float64
    assert not jax.config.jax_enable_x64
