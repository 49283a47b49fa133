"""`ufm.solvers.batching`: points mapped in groups equal one vmap, a history independent of the
points per call, slice widths that follow the problem size."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.solvers import batching


def test_map_points_in_groups_equals_one_vmap():
    xs = (jnp.arange(21.0).reshape(7, 3), jnp.arange(7.0))
    f = lambda p: {"s": jnp.sum(p[0]) * p[1], "v": p[0] * 2.0}
    whole = jax.vmap(f)(xs)
    for width in (1, 2, 3, 7, 50):  # 7 = 2 groups of 3 + 1 padded, ..., wider than the points
        got = ufm.solvers.batching.map_points(f, xs, width)
        for key in whole:
            np.testing.assert_array_equal(got[key], whole[key])


@pytest.mark.parametrize("steps,tol", [(700, 0.0), (3000, 1e-6)], ids=["to_max", "early"])
def test_history_does_not_depend_on_how_many_points_a_call_keeps(monkeypatch, steps, tol):
    """One log point per compiled call (a trace budget of one point) gives the history of the
    default chunking: every point, the final one of a batch that stopped early included."""
    prob = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=2, dtype="float64")
    hypers = ufm.Hyper(lam_W=0.05, lam_H=0.05, lr=jnp.array([0.5, 0.8]))
    kw = dict(steps=steps, log_every=100, tol=tol)
    default = ufm.solve_batch(prob, hypers, [0, 1], **kw)
    monkeypatch.setattr(ufm.solvers.batching, "TRACE_MEMORY_FRACTION", 1e-30)
    assert ufm.solvers.batching.logs_per_call(prob, 31, 2) == (1, 31)
    one_by_one = ufm.solve_batch(prob, hypers, [0, 1], **kw)
    assert list(default.status) == list(one_by_one.status)
    assert (set(default.status) == {"converged"}) == (tol > 0)
    np.testing.assert_array_equal(default.steps, one_by_one.steps)
    np.testing.assert_array_equal(default.history["iteration"], one_by_one.history["iteration"])
    for key in ("objective", "nc1", "grad_norm"):
        np.testing.assert_allclose(one_by_one.history[key], default.history[key], rtol=1e-12,
                                   err_msg=key)
    if tol > 0:  # stopped early: the history ends at the first log point past the last step
        assert default.history["iteration"][-1] < steps
        assert default.history["iteration"][-1] >= default.steps.max()


def test_batch_width_follows_problem_size(monkeypatch):
    from ufm.model.problem import Problem

    small = Problem(num_classes=10, feature_dim=32, n_per_class=50)
    large = Problem(num_classes=10, feature_dim=64, n_per_class=100)
    assert batching.batch_width(small, 16) == 3  # slices of 3 (6 of them: 2 padded)
    assert batching.batch_width(small, 12) == 3  # ~0.3 MB a configuration: equal slices of 3
    assert batching.batch_width(small, 2) == 2
    assert batching.batch_width(large, 16) == 1  # ~1.1 MB: one at a time on a CPU
    assert (batching.config_bytes(large) > batching.CPU_BATCH_BYTES
            > 3 * batching.config_bytes(small))
    # Chunks: whole groups while memory allows (a multiple of the width), cut beyond it.
    assert batching.chunk_size(small, 10, width=4) == 12  # whole group, padded to the width
    assert batching.chunk_size(small, 10**6) == 4082  # 245 equal chunks of at most MAX_CHUNK
    assert (batching.chunk_size(large, 10**6) * batching.config_bytes(large)
            <= batching._memory_bytes(None))
    large_bytes = batching.config_bytes(large)
    monkeypatch.setattr(batching, "_memory_bytes", lambda device: 5.5 * large_bytes)
    assert batching.chunk_size(large, 100) == 5 and batching.chunk_size(large, 100, width=2) == 4
