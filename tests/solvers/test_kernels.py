"""`ufm.solvers.kernels`: the one-pass Pallas GD step (interpret mode on the CPU) equals the XLA
fast step, and whole runs through it equal the XLA fast path."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ufm
from ufm.solvers import fast_step as fused
from ufm.solvers import kernels

from .test_fast_step import _assert_same_iterates, _hypers


@pytest.mark.parametrize("loss, bias, classifier, counts", [
    ("ce", True, "learned", (5, 5, 5, 5)),
    ("ls", False, "fixed_etf", (7, 3, 6, 4)),
    ("focal", True, "learned", (4, 6, 5, 5)),
    ("mse", False, "learned", (5, 5, 5, 5)),
    ("mse_rescaled", True, "fixed_etf", (6, 5, 4, 5)),
])
def test_pallas_kernel_step_equals_the_xla_step_in_interpret_mode(x64, loss, bias, classifier,
                                                                 counts):
    """The one-pass kernel (`ufm.solvers.kernels`, Pallas interpret mode on the CPU): one GD step
    equals
    `fused.plain_step` to round-off, with K padded to 16, a last block of columns shifted back
    over the previous one (N = 20, blocks of 16) and every loss and option."""
    problem = ufm.Problem(num_classes=4, feature_dim=16, class_counts=counts, loss=loss,
                          bias=bias, classifier=classifier, dtype="float64")
    assert kernels.supports(problem, "gd")
    hyper = ufm.Hyper(lam_W=0.02, lam_H=0.01, lam_b=0.01, tau=0.7, alpha=0.2, gamma=1.5,
                      kappa=2.0, M=1.5, lr=0.3).astype(jnp.float64)
    point = ufm.init(problem, 1)
    if bias:
        point = point._replace(b=jnp.asarray(np.random.default_rng(0).normal(size=4)))
    tx = optax.sgd(hyper.lr)
    expected, _ = fused.plain_step(problem, hyper, tx, fused.targets(problem, jnp.float64), point,
                                   tx.init(fused.trained(problem, point)))
    got = kernels.gd_step(problem, hyper, point, interpret=True)
    for name in ("W", "H", "b"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), rtol=1e-13,
                                   atol=1e-15)


def test_runs_through_the_pallas_kernel_equal_the_xla_fast_path():
    """`kernel="pallas"` through solve_batch (vmapped kernel, interpret mode): the same iterates
    as the XLA fast path after 60 steps, float64."""
    problem = ufm.Problem(num_classes=3, feature_dim=16, n_per_class=6, dtype="float64")
    hypers = _hypers(dict(lr=[0.5, 0.3]))
    kwargs = dict(steps=60, log_every=30, tol=0.0)
    pallas = ufm.solve_batch(problem, hypers, [0, 1], kernel="pallas", **kwargs)
    xla = ufm.solve_batch(problem, hypers, [0, 1], kernel="xla", **kwargs)
    _assert_same_iterates(pallas, xla)
