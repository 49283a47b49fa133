"""`ufm.solvers.loop`: `make_run`, the whole run as one pure function, vmapped over a batch,
equals `solve_batch` (the host loop over compiled chunks) on the same settings."""
import jax
import jax.numpy as jnp
import numpy as np

import ufm
from ufm.solvers import driver


def test_the_pure_run_equals_the_host_loop(x64):
    problem = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=3, dtype="float64")
    hypers = ufm.Hyper(lam_W=np.array([1e-2, 3e-2]), lam_H=np.array([1e-2, 2e-2]), lr=0.5)
    settings = ufm.SolverSettings(steps=120, log_every=40, tol=1e-9)
    run = jax.jit(jax.vmap(ufm.make_run(problem, settings)))
    _, f_star = driver.optimum_values(problem, hypers)
    keys = jax.vmap(jax.random.key)(jnp.asarray([0, 1], jnp.uint32))
    pure = run(hypers.broadcast(2, jnp.float64), keys, jnp.asarray(f_star))
    hosted = ufm.solve_batch(problem, hypers, [0, 1], settings, progress=False)
    np.testing.assert_allclose(pure.params.H, hosted.params.H, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(pure.steps, hosted.steps)
    assert [ufm.solvers.STATUSES[int(s)] for s in pure.status] == hosted.status
    np.testing.assert_allclose(pure.history["objective"], hosted.history["objective"],
                               rtol=1e-12)
