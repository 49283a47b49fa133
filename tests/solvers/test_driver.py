import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm import solvers
from ufm.solvers import driver, records

# (problem kwargs, hyper kwargs, collapses to zero)
# Every family of closed form is reached by L-BFGS from a random start; the second case of a
# family runs under -m slow (test_theory checks every closed-form point is critical and
# attains f*, and test_fused reaches every family with fast-path GD).
CLOSED_FORM_CASES = [
    (
        dict(num_classes=4, feature_dim=6, n_per_class=5, loss="ce"),
        dict(lam_W=1e-2, lam_H=1e-2),
        False,
    ),
    pytest.param(
        dict(num_classes=3, feature_dim=2, n_per_class=8, loss="ce"),
        dict(lam_W=5e-3, lam_H=2e-2, tau=0.5),
        False,
        marks=pytest.mark.slow,
    ),
    (
        dict(num_classes=4, feature_dim=6, n_per_class=5, loss="ce"),
        dict(lam_W=0.2, lam_H=0.2),
        True,
    ),
    (
        dict(num_classes=5, feature_dim=5, n_per_class=4, loss="ls"),
        dict(lam_W=1e-2, lam_H=5e-3, alpha=0.1),
        False,
    ),
    pytest.param(
        dict(num_classes=4, feature_dim=6, n_per_class=5, loss="ls"),
        dict(lam_W=0.12, lam_H=0.12, alpha=0.3),
        True,
        marks=pytest.mark.slow,
    ),
    (
        dict(num_classes=4, feature_dim=6, n_per_class=5, loss="focal"),
        dict(lam_W=1e-2, lam_H=1e-2, gamma=2.0),
        False,
    ),
    pytest.param(
        dict(num_classes=6, feature_dim=5, n_per_class=3, loss="focal"),
        dict(lam_W=2e-2, lam_H=1e-2, gamma=1.0),
        False,
        marks=pytest.mark.slow,
    ),
    (
        dict(num_classes=4, feature_dim=6, n_per_class=5, loss="mse"),
        dict(lam_W=1e-2, lam_H=1e-2, lam_b=0.0),
        False,
    ),
    pytest.param(
        dict(num_classes=4, feature_dim=6, n_per_class=5, loss="mse"),
        dict(lam_W=0.3, lam_H=0.3, lam_b=0.0),
        True,
        marks=pytest.mark.slow,
    ),
    pytest.param(
        dict(num_classes=4, feature_dim=6, n_per_class=5, loss="mse", bias=False),
        dict(lam_W=1e-2, lam_H=2e-2),
        False,
        marks=pytest.mark.slow,
    ),
    (
        dict(num_classes=3, feature_dim=3, n_per_class=6, loss="mse", bias=False),
        dict(lam_W=2e-2, lam_H=5e-3),
        False,
    ),
    (
        dict(num_classes=4, feature_dim=6, n_per_class=5, loss="ce", geometry="sphere"),
        dict(tau=0.5),
        False,
    ),
    pytest.param(
        dict(num_classes=5, feature_dim=4, n_per_class=3, loss="ce", geometry="sphere"),
        dict(tau=0.1),
        False,
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize("prob_kw, hyp_kw, zero", CLOSED_FORM_CASES)
def test_lbfgs_reaches_the_closed_form_optimum(prob_kw, hyp_kw, zero):
    prob = ufm.Problem(dtype="float64", **prob_kw)
    res = ufm.solve(prob, ufm.Hyper(**hyp_kw), key=7, solver="lbfgs", steps=3000, log_every=50)
    assert res.status == "converged"
    assert res.optimum is not None and res.optimum.is_zero is zero
    h = res.history
    assert abs(h["rel_gap"][-1]) <= 1e-6, h["rel_gap"][-1]
    if zero:
        assert np.linalg.norm(res.params.H) < 1e-3
    else:
        for name in ("nc1", "nc2_W", "nc2_H", "nc3"):
            if name == "nc2_W" and prob.loss == "mse" and not prob.bias:
                continue  # without bias the MSE optimum is an orthogonal frame, not an ETF
            assert h[name][-1] < 1e-6, (name, h[name][-1])
        norms = np.linalg.norm(res.params.W, axis=1) ** 2  # numpy: the result is float64
        np.testing.assert_allclose(norms, res.optimum.w_norm_sq, rtol=1e-4)


@pytest.mark.parametrize("solver, lr", [("gd", 1.0), ("momentum", 0.3), ("nesterov", 0.5),
                                        ("adam", 0.05)])
def test_first_order_solvers_reach_the_ce_optimum(solver, lr):
    prob = ufm.Problem(num_classes=4, feature_dim=6, n_per_class=5, dtype="float64")
    res = ufm.solve(prob, ufm.Hyper(lam_W=1e-2, lam_H=1e-2, lr=lr), key=1, solver=solver,
                    steps=20_000, log_every=200)
    assert res.status == "converged" and abs(res.history["rel_gap"][-1]) < 1e-6


def test_riemannian_gd_on_the_sphere_stays_on_it_and_reaches_the_optimum():
    prob = ufm.Problem(num_classes=4, feature_dim=6, n_per_class=5, geometry="sphere",
                       dtype="float64")
    res = ufm.solve(prob, ufm.Hyper(tau=0.5, lr=0.5), key=2, steps=20_000, log_every=200)
    assert res.status == "converged" and abs(res.history["rel_gap"][-1]) < 1e-6
    np.testing.assert_allclose(np.linalg.norm(res.params.W, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(res.params.H, axis=0), 1.0, atol=1e-12)


def test_fixed_etf_classifier_does_not_move():
    prob = ufm.Problem(num_classes=4, feature_dim=4, n_per_class=3, classifier="fixed_etf")
    res = ufm.solve(prob, ufm.Hyper(lam_W=1e-2, lam_H=1e-2), steps=300, log_every=100)
    etf = ufm.model.frames.simplex_etf(4, 4)
    np.testing.assert_array_equal(res.params.W, etf.astype(np.float32))
    assert res.history["nc1"][-1] < res.history["nc1"][0]


def test_identical_seeds_identical_runs_and_different_seeds_different_starts():
    prob = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=4)
    hyp = ufm.Hyper(lam_W=1e-2, lam_H=1e-2)
    a = ufm.solve(prob, hyp, key=3, steps=200, log_every=50)
    b = ufm.solve(prob, hyp, key=jax.random.key(3), steps=200, log_every=50)
    c = ufm.solve(prob, hyp, key=4, steps=200, log_every=50)
    np.testing.assert_array_equal(a.params.H, b.params.H)
    np.testing.assert_array_equal(a.history["objective"], b.history["objective"])
    assert a.history["objective"][0] != c.history["objective"][0]
    assert not np.allclose(a.params.H, c.params.H)


def _batch_hypers(lrs):
    return ufm.Hyper(lam_W=np.full(len(lrs), 1e-2), lam_H=np.linspace(5e-3, 2e-2, len(lrs)),
                     lr=np.asarray(lrs))


def test_vmapped_runs_equal_separate_runs():
    prob = ufm.Problem(num_classes=4, feature_dim=5, n_per_class=4, dtype="float64")
    lrs = [0.3, 0.5, 0.8, 1.0, 0.4, 0.6, 0.9, 0.7]
    hypers = _batch_hypers(lrs)
    seeds = list(range(8))
    batch = ufm.solve_batch(prob, hypers, seeds, steps=3000, log_every=100)
    # The same run as one pure function, vmapped directly.
    run = ufm.make_run(prob, steps=3000, log_every=100, tol=solvers.default_tol(prob))
    _, f_star = driver.optimum_values(prob, hypers)
    with jax.enable_x64(True):
        keys = jax.vmap(jax.random.key)(jnp.arange(8))
        out = jax.jit(jax.vmap(run))(hypers.broadcast(8, jnp.float64), keys, jnp.asarray(f_star))
    assert isinstance(out, solvers.RunOutput)
    params, history, steps, status = out  # a NamedTuple: unpacks as before
    for i in range(8):
        hyp = ufm.Hyper(*(float(np.asarray(v)[i]) if np.ndim(v) else v for v in hypers))
        single = ufm.solve(prob, hyp, key=seeds[i], steps=3000, log_every=100)
        assert single.status == batch.status[i] == solvers.STATUSES[int(status[i])]
        assert single.steps == batch.steps[i] == int(steps[i])
        for got in (batch.params, params):
            np.testing.assert_allclose(got.W[i], single.params.W, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(got.H[i], single.params.H, rtol=1e-9, atol=1e-12)
        T = len(single.history["objective"])
        np.testing.assert_allclose(batch.history["objective"][i, :T], single.history["objective"],
                                   rtol=1e-12)
        np.testing.assert_allclose(history["objective"][i, :T], single.history["objective"],
                                   rtol=1e-12)


def test_solve_is_a_batch_of_one():
    """`solve` runs the path `solve_batch` runs (one checked settings value, f*, the result),
    on the unbatched program: the same fields, equal to round-off to a batch of one."""
    prob = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=3, dtype="float64")
    hyper = ufm.Hyper(lam_W=1e-2, lam_H=1e-2, lr=0.5)
    single = ufm.solve(prob, hyper, key=5, steps=400, log_every=50)
    batch = ufm.solve_batch(prob, hyper, [5], steps=400, log_every=50)
    assert (single.status, single.steps) == (batch.status[0], int(batch.steps[0]))
    assert single.optimum is not None
    assert single.optimum.objective == batch.optimum[0].objective
    assert set(single.history) == set(batch.history)
    for k, v in single.history.items():
        np.testing.assert_allclose(v, batch.history[k] if k == "iteration" else batch.history[k][0],
                                   rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(single.params.W, batch.params.W[0], rtol=1e-12, atol=1e-14)


def test_a_diverging_configuration_is_flagged_and_leaves_its_neighbours_alone():
    prob = ufm.Problem(num_classes=4, feature_dim=5, n_per_class=4)
    lrs = [0.5, 1e4, 0.8]
    batch = ufm.solve_batch(prob, _batch_hypers(lrs), [0, 1, 2], steps=2000, log_every=100)
    assert batch.status[1] == "diverged" and batch.diverged_at[1] >= 0
    assert batch.steps[1] == batch.diverged_at[1]
    assert np.all(np.isfinite(batch.params.H[1]))  # frozen at its last finite point
    assert batch.status[0] != "diverged" and batch.status[2] != "diverged"
    calm = ufm.solve_batch(prob, _batch_hypers([0.5, 0.6, 0.8]), [0, 1, 2], steps=2000,
                           log_every=100)
    for i in (0, 2):
        np.testing.assert_allclose(batch.params.H[i], calm.params.H[i], rtol=1e-5, atol=1e-6)
        assert batch.history["nc1"][i, -1] < 1e-2


def test_history_has_every_metric_at_every_log_point():
    prob = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=2)
    res = ufm.solve(prob, ufm.Hyper(), steps=250, log_every=100, tol=0.0)
    np.testing.assert_array_equal(res.history["iteration"], [0, 100, 200, 250])
    for key in records.HISTORY_KEYS:
        assert res.history[key].shape == (4,), key
    assert res.status == "max_steps" and res.steps == 250


def test_no_closed_form_gives_nan_gap():
    prob = ufm.Problem(num_classes=3, feature_dim=4, class_counts=(2, 3, 4))
    res = ufm.solve(prob, ufm.Hyper(), steps=100, log_every=50)
    assert res.optimum is None and np.all(np.isnan(res.history["rel_gap"]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(solver="sgd"), "solver='sgd'"), (dict(steps=0), "steps=0"),
    (dict(log_every=0), "log_every=0"), (dict(tol=-1.0), "tol=-1.0"),
])
def test_bad_solver_arguments(kwargs, message):
    prob = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=2)
    with pytest.raises(ValueError, match=message):
        ufm.solve(prob, ufm.Hyper(), **kwargs)


def test_bad_hyper_is_rejected_before_compiling():
    prob = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=2)
    with pytest.raises(ValueError, match="tau=-1"):
        ufm.solve(prob, ufm.Hyper(tau=-1.0))


def test_a_run_can_start_from_a_given_point():
    prob = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=2, dtype="float64")
    hyp = ufm.Hyper(lam_W=1e-2, lam_H=1e-2)
    start = ufm.init(prob, 0)
    from_point = ufm.solve(prob, hyp, start=start, steps=100)
    from_seed = ufm.solve(prob, hyp, key=0, steps=100)
    # init outside jit and inside may round the last bit differently (XLA fusion, jax 0.12)
    np.testing.assert_allclose(from_point.params.W, from_seed.params.W, rtol=1e-12, atol=1e-14)
    starts = jax.tree.map(lambda x: np.stack([np.asarray(x), 2 * np.asarray(x)]), start)
    batch = ufm.solve_batch(prob, hyp, [5, 6], start=starts, steps=100)
    np.testing.assert_allclose(batch.params.W[0], from_seed.params.W, rtol=1e-12, atol=1e-14)
    assert batch.history["objective"][1, 0] != batch.history["objective"][0, 0]


def test_sphere_lbfgs_convergence_is_judged_on_the_riemannian_gradient():
    """L-BFGS on the sphere moves unnormalized V; its Euclidean gradient shrinks like 1/||v||,
    so a start with ||v|| = 1e8 must not count as converged before it reaches f*."""
    prob = ufm.Problem(num_classes=4, feature_dim=6, n_per_class=5, geometry="sphere",
                       dtype="float64")
    start = jax.tree.map(lambda x: 1e8 * np.asarray(x), ufm.init(prob, 0))
    res = ufm.solve(prob, ufm.Hyper(tau=0.5), start=start, solver="lbfgs", steps=3000,
                    log_every=50)
    assert res.status == "converged" and res.steps > 5
    assert abs(res.history["rel_gap"][-1]) < 1e-6


@pytest.mark.parametrize("index", [0, 1, 3, 5, 7, 9, 11])
def test_gradient_descent_on_the_fast_path_reaches_the_closed_form_optimum(index):
    """The closed-form cases above (CE with temperature, LS, focal, MSE with and without bias,
    the sphere) by plain GD, which takes the fast path: the same optimum as L-BFGS finds."""
    case = CLOSED_FORM_CASES[index]
    prob_kw, hyp_kw, zero = getattr(case, "values", case)  # a pytest.param or a tuple
    prob = ufm.Problem(dtype="float64", **prob_kw)
    assert ufm.SolverSettings().fast_path(prob) is not None
    res = ufm.solve(prob, ufm.Hyper(**hyp_kw, lr=0.5), key=7, steps=40_000, log_every=1000)
    assert res.status == "converged", (res.status, res.history["grad_norm"][-1])
    assert abs(res.history["rel_gap"][-1]) <= 1e-6, res.history["rel_gap"][-1]
    if not zero:
        assert res.history["nc1"][-1] < 1e-6


