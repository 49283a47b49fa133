"""`ufm.solvers.lbfgs`: the compact preconditioner is optax's two-loop recursion to rounding, a
point
not left writes no pair, a frozen run's line search ends at once, and the reference path's
grouped steps leave steps and statuses as they were."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ufm
from ufm.model.problem import objective
from ufm.solvers import lbfgs, loop, reference


def _problem_and_start(seed=1):
    problem = ufm.Problem(num_classes=4, feature_dim=6, n_per_class=5, dtype="float64")
    hyper = ufm.Hyper(lam_W=5e-4, lam_H=5e-4, lam_b=5e-4)
    with jax.enable_x64(True):
        start = reference.initial_state(problem, "lbfgs", hyper, jax.random.key(seed),
                                       1.0).variables
    return problem, hyper, start


def _iterates(tx, value_fn, x, iterations):
    @jax.jit
    def iteration(x, state):
        value, grad = optax.value_and_grad_from_state(value_fn)(x, state=state)
        updates, state = tx.update(grad, state, x, value=value, grad=grad, value_fn=value_fn)
        return optax.apply_updates(x, updates), state

    with jax.enable_x64(True):
        state, out = tx.init(x), []
        for _ in range(iterations):
            x, state = iteration(x, state)
            out.append(x)
        return out, state


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(p - q))) for p, q in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.parametrize("memory_size", [3, 10])
def test_compact_lbfgs_follows_optax_two_loop_recursion(memory_size):
    # 25 iterations: the ring of pairs wraps (memory 3) or fills (10); float64 CE with bias.
    problem, hyper, x = _problem_and_start()
    value_fn = lambda v: objective(problem, hyper, v)
    ref, _ = _iterates(optax.lbfgs(memory_size=memory_size), value_fn, x, 25)
    two_loop, _ = _iterates(lbfgs.lbfgs(memory_size, compact=False), value_fn, x, 25)
    got, state = _iterates(lbfgs.lbfgs(memory_size), value_fn, x, 25)
    for a, b, c in zip(ref, got, two_loop, strict=True):
        assert _max_diff(a, b) < 1e-11
        assert _max_diff(a, c) == 0.0  # the same optax parts, unchanged
    # The products it keeps are those of its memory.
    pre = state[0]
    S, Y = (np.stack([np.concatenate([np.asarray(leaf[i]).ravel()
                                      for leaf in jax.tree.leaves(stack)])
                      for i in range(memory_size)]) for stack in (pre.s, pre.y))
    np.testing.assert_allclose(pre.sy, S @ Y.T, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(pre.yy, Y @ Y.T, rtol=1e-12, atol=1e-15)


def test_a_point_not_left_writes_no_pair_and_a_frozen_search_ends_at_once():
    problem, hyper, x = _problem_and_start(seed=2)
    value_fn = lambda v: objective(problem, hyper, v)
    tx = lbfgs.lbfgs()
    frozen = jax.jit(lambda grad, state, x, value: tx.update(
        grad, state, x, value=value, grad=grad, value_fn=value_fn, moving=False))
    with jax.enable_x64(True):
        xs, state = _iterates(tx, value_fn, x, 4)
        x = xs[-1]
        value, grad = jax.value_and_grad(value_fn)(x)
        # The first call at this point writes the pair that ends at it; a second writes none.
        _, once = frozen(grad, state, x, value)
        updates, twice = frozen(grad, once, x, value)
    assert int(once[0].count) == int(state[0].count) + 1
    assert int(twice[0].count) == int(once[0].count)
    assert _max_diff((once[0].s, once[0].y, once[0].sy), (twice[0].s, twice[0].y,
                                                           twice[0].sy)) == 0.0
    # Not moving: a zero direction, so no update and a line search of one evaluation.
    assert _max_diff(updates, jax.tree.map(jnp.zeros_like, updates)) == 0.0
    assert int(twice[2].info.num_linesearch_steps) <= 1


def test_grouped_reference_steps_leave_steps_and_statuses_as_they_were(monkeypatch):
    # A batch whose runs end at different steps, none a multiple of 10 (GD: out of steps,
    # converged and diverged at lr 40; L-BFGS: converged at 16, 18 and 26): the
    # reference path tested after every step and after every tenth gives the same table.
    problem = ufm.Problem(num_classes=4, feature_dim=6, n_per_class=5, dtype="float64")
    hypers = ufm.Hyper(lam_W=np.full(3, 5e-2), lam_H=np.array([5e-2, 1e-1, 2e-1]),
                       lam_b=np.full(3, 5e-2), lr=np.array([0.5, 1.0, 40.0]))
    results = {}
    for per_test in (1, 10):
        monkeypatch.setattr(loop, "REFERENCE_STEPS_PER_TEST", per_test)
        loop.compiled_chunk.cache_clear()
        runs = [ufm.solve_batch(problem, hypers, [0, 1, 2], steps=157, log_every=50,
                                tol=1e-5, solver=name, fast=False, progress=False)
                for name in ("gd", "lbfgs")]
        results[per_test] = [(np.asarray(r.steps), list(r.status), r.history["objective"])
                             for r in runs]
    for (steps1, status1, obj1), (steps10, status10, obj10) in zip(results[1], results[10],
                                                                   strict=True):
        np.testing.assert_array_equal(steps1, steps10)
        assert status1 == status10
        np.testing.assert_allclose(obj1, obj10, rtol=1e-12, equal_nan=True)
    assert results[10][0][1] == ["max_steps", "converged", "diverged"]
    assert len(set(results[10][1][0].tolist())) == 3  # L-BFGS: three different stops


def test_vmapped_and_one_at_a_time_lbfgs_give_the_same_runs():
    # Under vmap the compact preconditioner, one run at a time (width 1) optax's two-loop
    # recursion: the same directions to rounding, so the same runs up to where rounding
    # decides the last iterations (the tests compile without XLA's optimizations, which
    # changes roundings between the two programs).
    problem = ufm.Problem(num_classes=4, feature_dim=6, n_per_class=5, dtype="float64")
    hypers = ufm.Hyper(lam_W=np.full(4, 5e-3), lam_H=np.geomspace(5e-3, 4e-2, 4),
                       lam_b=np.full(4, 5e-3))
    runs = [ufm.solve_batch(problem, hypers, [0, 1, 2, 3], steps=200, log_every=10, tol=1e-6,
                            solver="lbfgs", width=width, progress=False) for width in (None, 1)]
    assert list(runs[0].status) == list(runs[1].status) == ["converged"] * 4
    assert np.max(np.abs(runs[0].steps - runs[1].steps)) <= 3
    # (The iterates are held to optax's at the optimizer's level above; here the line
    # search's discrete choices let rounding grow.) Both end at the same optimum.
    np.testing.assert_allclose(runs[0].history["objective"][:, -1],
                               runs[1].history["objective"][:, -1], rtol=1e-9)
