"""`ufm.solvers.reference`: one reference step of gradient descent is W - lr grad f by autodiff
(the penalties included), a fixed classifier does not move, and a step past the budget or after
convergence changes nothing."""
import jax
import jax.numpy as jnp
import numpy as np

import ufm
from ufm.solvers import reference


def _start(problem, hyper):
    return reference.initial_state(problem, "gd", hyper, jax.random.key(3), 1.0, vmapped=False)


def test_a_gd_step_is_the_autodiff_gradient_step(x64):
    problem = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=2, dtype="float64")
    hyper = ufm.Hyper(lam_W=1e-2, lam_H=2e-2, lam_b=3e-2, lr=0.3).astype(jnp.float64)
    state = _start(problem, hyper)
    _, step = reference.make_step(problem, "gd", hyper, vmapped=False)
    after = step(state, jnp.asarray(0.0), jnp.asarray(10, jnp.int32))
    grad = jax.grad(lambda p: ufm.objective(problem, hyper, p))(state.variables)
    for name in ("W", "H", "b"):
        np.testing.assert_allclose(getattr(after.variables, name),
                                   getattr(state.variables, name) - 0.3 * getattr(grad, name),
                                   rtol=1e-13, atol=1e-15)
    assert int(after.step) == 1
    expected_norm = np.sqrt(sum(float(jnp.sum(g ** 2)) for g in (grad.W, grad.H, grad.b)))
    np.testing.assert_allclose(float(after.grad_norm), expected_norm, rtol=1e-12)


def test_a_step_past_the_budget_or_a_frozen_run_changes_nothing(x64):
    problem = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=2, dtype="float64")
    hyper = ufm.Hyper(lr=0.3).astype(jnp.float64)
    state = _start(problem, hyper)
    _, step = reference.make_step(problem, "gd", hyper, vmapped=False)
    spent = step(state, jnp.asarray(0.0), jnp.asarray(0, jnp.int32))
    np.testing.assert_array_equal(spent.variables.W, state.variables.W)
    assert int(spent.step) == 0
    converged = step(state, jnp.asarray(1e9), jnp.asarray(10, jnp.int32))  # tol reached at once
    again = step(converged, jnp.asarray(1e9), jnp.asarray(10, jnp.int32))
    np.testing.assert_array_equal(again.variables.W, converged.variables.W)
    assert int(again.step) == int(converged.step)


def test_a_fixed_classifier_is_not_stepped(x64):
    problem = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=2, dtype="float64",
                          classifier="fixed_etf")
    hyper = ufm.Hyper(lr=0.5).astype(jnp.float64)
    state = _start(problem, hyper)
    _, step = reference.make_step(problem, "gd", hyper, vmapped=False)
    after = step(state, jnp.asarray(0.0), jnp.asarray(10, jnp.int32))
    np.testing.assert_array_equal(after.variables.W, state.variables.W)
    assert not np.allclose(after.variables.H, state.variables.H)
