"""The fast path of the first-order solvers (`ufm.solvers.fast_step`, `loop.fast_block`)
against the
reference path (autodiff, every step checked): the same iterates to round-off in float64 for
every loss and option, vmapped and unbatched, and the same statuses with the step of a
finished run reported to within `check_every`."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ufm
from ufm.model import manifolds
from ufm.model.problem import multilabel_sets
from ufm.solvers import fast_step as fused
from ufm.solvers import loop, reference, settings

STEPS = 200
# A covering set of the options (each problem compiles twice, so not the full product):
# (problem kwargs, solver, hyper fields for a batch of two configurations).
CASES = [
    (dict(loss="ce"), "gd", dict(lam_W=[1e-2, 3e-2], tau=[1.0, 0.7], lr=[0.5, 0.3])),
    (dict(loss="ls", bias=False, class_counts=(6, 3, 2, 4)), "momentum",
     dict(alpha=[0.1, 0.3], lr=[0.1, 0.05])),
    (dict(loss="focal", classifier="fixed_etf"), "nesterov",
     dict(gamma=[0.5, 2.0], lr=[0.2, 0.1])),
    (dict(loss="mse", bias=False), "adam", dict(lam_H=[1e-2, 4e-2], lr=[0.02, 0.05])),
    (dict(loss="mse_rescaled", class_counts=(5, 2, 3, 3)), "gd",
     dict(kappa=[3.0, 1.5], M=[2.0, 1.0], lr=[0.1, 0.2])),
    (dict(loss="pick_all_label", label_sets=multilabel_sets(4, [3, 1])[0],
          set_counts=multilabel_sets(4, [3, 1])[1]), "momentum", dict(lr=[0.1, 0.2])),
    (dict(loss="ce", geometry="sphere"), "gd", dict(tau=[0.5, 0.2], lr=[0.3, 0.1])),
    (dict(loss="ce", geometry="sphere", bias=True), "adam",
     dict(tau=[0.5, 0.3], lr=[0.02, 0.01])),
    (dict(loss="ls", geometry="sphere", classifier="fixed_etf"), "nesterov",
     dict(tau=[0.5, 0.3], lr=[0.1, 0.05])),
]


def _problem(kwargs) -> ufm.Problem:
    if "class_counts" not in kwargs and "label_sets" not in kwargs:
        kwargs["n_per_class"] = 3
    return ufm.Problem(num_classes=4, feature_dim=5, dtype="float64", **kwargs)


def _hypers(fields) -> ufm.Hyper:
    base = dict(lam_W=2e-2, lam_H=1e-2, lam_b=1e-2)
    return ufm.Hyper(**{k: np.asarray(v, np.float64) for k, v in {**base, **fields}.items()})


def _assert_close(x, y, what):
    x, y = np.asarray(x), np.asarray(y)
    scale = max(np.max(np.abs(y)), 1e-300)
    assert np.max(np.abs(x - y)) <= 1e-12 * scale, (what, np.max(np.abs(x - y)) / scale)


def _assert_same_iterates(a, b):
    for name in ("W", "H", "b"):
        _assert_close(getattr(a.params, name), getattr(b.params, name), name)
    np.testing.assert_allclose(a.history["objective"], b.history["objective"], rtol=1e-12)


def _final_states(problem, solver, hypers, seeds, fast):
    """STEPS steps of a vmapped batch on either path, without the log points (what the run
    loop wraps around these: `test_fast_path_equals_the_reference_unbatched` covers it)."""
    with problem.x64_scope():
        hypers = hypers.broadcast(len(seeds), problem.jnp_dtype)
        keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))

        def run(hyper, key):
            state = reference.initial_state(problem, solver, hyper, key, 1.0, fast=fast)
            if fast:
                block = loop.fast_block(problem, solver, hyper, 0.0, STEPS, STEPS,
                                            settings.FastPath(25, kernel=False))
                return block(state, 0)
            _, step = reference.make_step(problem, solver, hyper)
            return jax.lax.fori_loop(0, STEPS, lambda _, s: step(s, 0.0, STEPS), state)

        return jax.device_get(jax.jit(jax.vmap(run))(hypers, keys))


@pytest.mark.parametrize("prob_kw, solver, hyper_kw", CASES,
                         ids=[f"{c[0]['loss']}-{c[0].get('geometry', 'wd')}-{c[1]}" for c in CASES])
def test_fast_path_equals_the_reference_vmapped(prob_kw, solver, hyper_kw):
    problem, hypers = _problem(prob_kw), _hypers(hyper_kw)
    assert fused.supports(problem, solver)
    fast = _final_states(problem, solver, hypers, [0, 1], fast=True)
    reference = _final_states(problem, solver, hypers, [0, 1], fast=False)
    for name in ("W", "H", "b"):
        _assert_close(getattr(fast.variables, name), getattr(reference.variables, name), name)
    np.testing.assert_array_equal(fast.step, [STEPS, STEPS])
    np.testing.assert_array_equal(fast.status, reference.status)
    np.testing.assert_allclose(fast.grad_norm, reference.grad_norm, rtol=1e-10)
    if problem.geometry == "sphere":  # the retraction keeps every point on the manifold
        np.testing.assert_allclose(np.linalg.norm(fast.variables.H, axis=1), 1.0, atol=1e-13)


@pytest.mark.parametrize("index", [0, 6])
def test_fast_path_equals_the_reference_unbatched(index):
    """One configuration through `solve` (no vmap; the run loop's real branches), with a step
    count that is not a multiple of the interval or the log spacing."""
    prob_kw, solver, hyper_kw = CASES[index]
    problem = _problem(prob_kw)
    hyper = ufm.Hyper(**{"lam_W": 2e-2, "lam_H": 1e-2, **{k: v[0] for k, v in hyper_kw.items()}})
    kwargs = dict(steps=137, log_every=50, tol=0.0, solver=solver, key=3)
    fast = ufm.solve(problem, hyper, fast=True, check_every=25, **kwargs)
    reference = ufm.solve(problem, hyper, fast=False, **kwargs)
    assert fast.steps == reference.steps == 137
    _assert_same_iterates(fast, reference)


def test_a_diverging_neighbour_is_flagged_and_leaves_the_others_alone():
    """One configuration of three diverges: the fast path freezes it at a finite point and
    reports the step of the last check before the first non-finite iterate (within
    check_every of the reference's exact step); the neighbours equal the reference's."""
    problem = _problem(dict(loss="ce"))
    hypers = _hypers(dict(lr=[0.5, 400.0, 0.3]))
    kwargs = dict(steps=300, log_every=100, tol=0.0)
    check = 10
    fast = ufm.solve_batch(problem, hypers, [0, 1, 2], fast=True, check_every=check, **kwargs)
    reference = ufm.solve_batch(problem, hypers, [0, 1, 2], fast=False, **kwargs)
    assert fast.status == reference.status == ["max_steps", "diverged", "max_steps"]
    exact = int(reference.diverged_at[1])
    assert exact - check < int(fast.diverged_at[1]) <= exact
    assert int(fast.steps[1]) == int(fast.diverged_at[1])
    for name in ("W", "H", "b"):
        assert np.all(np.isfinite(np.asarray(getattr(fast.params, name))[1]))
        for k in (0, 2):
            np.testing.assert_allclose(np.asarray(getattr(fast.params, name))[k],
                                       np.asarray(getattr(reference.params, name))[k],
                                       rtol=1e-12, atol=1e-15)
    assert np.isfinite(fast.history["objective"][1, -1])


def test_convergence_is_decided_at_checks_with_the_reference_rule():
    """A run that reaches the tolerance stops at the first check whose gradient norm is below
    it: at or after the reference's step, by less than check_every; the frozen point has a
    gradient norm below the tolerance."""
    problem = _problem(dict(loss="ce"))
    hypers = _hypers(dict(lr=[1.0, 0.8]))
    kwargs = dict(steps=20_000, log_every=500, tol=1e-9)
    check = 25
    fast = ufm.solve_batch(problem, hypers, [0, 1], fast=True, check_every=check, **kwargs)
    reference = ufm.solve_batch(problem, hypers, [0, 1], fast=False, **kwargs)
    assert fast.status == reference.status == ["converged"] * 2
    assert np.all(fast.steps >= reference.steps)
    assert np.all(fast.steps < reference.steps + check)
    with jax.enable_x64(True):
        hypers = hypers.broadcast(2, jnp.float64)
        for k in range(2):
            point = jax.tree.map(lambda x: jnp.asarray(x[k]), fast.params)
            hyper = jax.tree.map(lambda x: x[k], hypers)
            grad = jax.grad(lambda p: ufm.objective(problem, hyper, p))(point)
            assert float(optax.tree.norm(grad[:3])) <= 1e-9


@pytest.mark.parametrize("geometry", ["wd", "sphere"])
def test_closed_form_gradient_equals_autodiff_for_every_option(x64, geometry):
    """`fused.gradient` (closed form) against jax.grad of the objective, projected on the
    sphere, for every loss x bias x classifier x class counts: cheap, so the full product."""
    rng = np.random.default_rng(0)
    for loss in ("ce", "ls", "focal", "mse", "mse_rescaled"):
        for bias in (False, True):
            for classifier in ("learned", "fixed_etf"):
                for counts in ((3, 3, 3, 3), (5, 1, 2, 4)):
                    problem = ufm.Problem(num_classes=4, feature_dim=5, class_counts=counts,
                                          loss=loss, geometry=geometry, bias=bias,
                                          classifier=classifier, dtype="float64")
                    hyper = ufm.Hyper(lam_W=0.03, lam_H=0.02, lam_b=0.01, tau=0.7, alpha=0.2,
                                      gamma=1.5, kappa=2.0, M=1.5).astype(jnp.float64)
                    point = ufm.init(problem, int(rng.integers(1000)))
                    if bias:  # without a bias b stays at zero, as in a run
                        point = point._replace(b=jnp.asarray(rng.normal(size=4)))
                    Y = fused.targets(problem, jnp.float64)
                    value, grad = fused.gradient(problem, hyper, point, Y, with_value=True)
                    expected = jax.grad(lambda p: ufm.objective(problem, hyper, p))(point)
                    expected = manifolds.riemannian_grad(problem, point, expected)
                    np.testing.assert_allclose(value, ufm.objective(problem, hyper, point),
                                               rtol=1e-13)
                    np.testing.assert_allclose(grad.H, expected.H, rtol=1e-11, atol=1e-15)
                    assert (grad.W is None) == (classifier == "fixed_etf")
                    assert (grad.b is None) == (not bias)
                    if grad.W is not None:
                        np.testing.assert_allclose(grad.W, expected.W, rtol=1e-11, atol=1e-15)
                    if grad.b is not None:
                        np.testing.assert_allclose(grad.b, expected.b, rtol=1e-11, atol=1e-15)


def test_the_fast_path_is_chosen_automatically_and_can_be_turned_off():
    deep = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=2, depth=2)
    assert not fused.supports(deep, "gd")
    plain = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=2)
    assert not fused.supports(plain, "lbfgs") and fused.supports(plain, "adam")
    path = lambda problem, **options: ufm.SolverSettings(check_every=7, **options).fast_path(
        problem)
    assert path(plain) == (7, False)
    assert path(plain, fast=False) is None
    assert path(deep) is None
    # the kernel where it applies (d a power of two >= 16), the XLA fast path elsewhere
    assert path(plain, kernel="pallas") == (7, False)
    wide = ufm.Problem(num_classes=3, feature_dim=16, n_per_class=6)
    assert path(wide, kernel="pallas") == (7, True)
    assert path(wide, name="momentum", kernel="pallas") == (7, False)
    for bad in (dict(fast="yes"), dict(check_every=0), dict(check_every=2.5),
                dict(kernel="cuda")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ufm.solve(plain, ufm.Hyper(), steps=10, **bad)


