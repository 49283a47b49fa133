"""Many classes: the softmax losses streamed over class blocks equal the dense logits' to
round-off (value, gradient, Hessian-vector products), the switch is automatic, the metrics never
form K x K matrices whole, and the pruned one-vs-rest margin equals the full QP's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.analysis import gnc, landscape
from ufm.analysis import nc as metrics
from ufm.model import losses, streaming

K, D, N_PER = 37, 6, 2  # 37 classes in blocks of 8: five blocks, the last one padded


@pytest.fixture
def streamed(monkeypatch):
    """Make every problem above 100 logits stream, in blocks of 8 classes."""
    monkeypatch.setattr(streaming, "STREAM_ABOVE", 100)
    monkeypatch.setattr(streaming, "block_size", lambda num_classes, num_samples: 8)


def test_the_switch_is_automatic_and_the_objective_and_probes_follow(streamed):
    prob = ufm.Problem(num_classes=K, feature_dim=D, n_per_class=N_PER, loss="ls",
                       dtype="float64")
    assert ufm.model.problem.streams(prob)
    # MSE has no log-sum-exp
    assert not ufm.model.problem.streams(ufm.Problem(num_classes=K, feature_dim=D,
                                                     n_per_class=N_PER, loss="mse"))
    hyp = ufm.Hyper(alpha=0.1, tau=0.5, lam_W=1e-2, lam_H=1e-2)
    params = ufm.init(prob, 0)
    with ufm.model.problem.x64_scope("float64"):
        hyper = hyp.astype(jnp.float64)
        Z = (params.W @ params.H + params.b[:, None]) / hyper.tau
        dense = jnp.mean(losses.label_smoothing(Z, prob.targets(), hyper))
        streamed = float(ufm.model.problem.mean_loss(prob, hyper, params))
        assert streamed == pytest.approx(float(dense), rel=1e-14)
        tangent = jax.tree.map(jnp.ones_like, params)
        hvp = landscape.hvp(prob, hyper, params, tangent)  # reverse-over-reverse here
    # The same problem dense (the threshold back up): the same Hessian-vector product.
    streaming.STREAM_ABOVE = 1 << 24
    assert not ufm.model.problem.streams(prob)
    with ufm.model.problem.x64_scope("float64"):
        dense_hvp = landscape.hvp(prob, hyper, params, tangent)
    for got, exact in zip(jax.tree.leaves(hvp), jax.tree.leaves(dense_hvp)):
        np.testing.assert_allclose(got, exact, rtol=1e-11, atol=1e-13)


def test_a_streamed_problem_solves_to_its_closed_form(streamed):
    prob = ufm.Problem(num_classes=K, feature_dim=K + 1, n_per_class=N_PER, dtype="float64")
    assert ufm.model.problem.streams(prob)
    res = ufm.solve(prob, ufm.Hyper(lam_W=1e-3, lam_H=1e-3, lam_b=1e-3), key=0, steps=400,
                    solver="lbfgs", tol=1e-10)
    assert res.status == "converged"
    assert res.history["rel_gap"][-1] == pytest.approx(0.0, abs=1e-10)


def test_metrics_in_row_blocks_equal_one_block(monkeypatch, x64):
    rng = np.random.default_rng(1)
    W, H = jnp.asarray(rng.normal(size=(K, D))), jnp.asarray(rng.normal(size=(D, 3 * K)))
    labels = jnp.asarray(np.arange(3 * K) % K)
    b = jnp.asarray(rng.normal(size=K))
    whole = metrics._nc_metrics(W, H, labels, b, "class_means")
    monkeypatch.setattr(metrics, "CHUNK_ENTRIES", 3 * D)  # blocks of a few rows
    blocked = metrics._nc_metrics(W, H, labels, b, "class_means")
    for name in metrics.METRIC_NAMES:
        assert float(blocked[name]) == pytest.approx(float(whole[name]), rel=1e-12, abs=1e-15)


def _full_margins(W, classes):
    """The one-vs-rest QP against every other class, no pruning."""
    return np.array([np.linalg.norm(gnc.min_norm_point(
        (np.delete(W, k, axis=0) - W[k]).T)[0]) for k in classes])


@pytest.mark.parametrize("K, d", [(40, 3), (300, 8), (2000, 16)])
def test_pruned_margins_equal_the_full_qp(K, d):
    rng = np.random.default_rng(K)
    W = rng.normal(size=(K, d))
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    pruned = gnc.one_vs_rest_margins(W)
    classes = np.arange(K) if K <= 300 else rng.choice(K, 5, replace=False)
    np.testing.assert_allclose(pruned[classes], _full_margins(W, classes), rtol=1e-10,
                               atol=1e-14)
    if K <= 300:  # too few neighbours to hold the answer: the check enlarges them until it does
        np.testing.assert_allclose(gnc.one_vs_rest_margins(W, neighbours=2),
                                   pruned, rtol=1e-10, atol=1e-14)


def test_margin_zero_inside_the_hull_and_the_simplex_etf():
    W = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.1, 0.1]])
    margins = gnc.one_vs_rest_margins(W, neighbours=1)
    assert margins[4] < 1e-15 and np.all(margins[:4] > 0.5)
    etf = ufm.analysis.theory.simplex_etf(6, 5)
    np.testing.assert_allclose(gnc.one_vs_rest_margins(etf, neighbours=1), 6 / 5,
                               rtol=1e-12)


def test_records_metrics_at_fifty_thousand_classes_fit_in_blocks():
    """K = 5 x 10^4 in d = 4: K (K - 1) pairs exceed 2^31 (a Python int there used to
    overflow int32 when traced), and the records' NC1 uses the d x d Gram (the K x K one
    would take 90 GiB); XLA's own account of the program's scratch memory, nothing run."""
    K, d = 50_000, 4
    S = jax.ShapeDtypeStruct
    compiled = jax.jit(metrics.run_metrics).lower(
        S((K, d), jnp.float32), S((d, K), jnp.float32), S((K,), jnp.int32),
        S((K,), jnp.float32)).compile()
    scratch = compiled.memory_analysis().temp_size_in_bytes
    assert scratch < 64 * metrics.CHUNK_ENTRIES * 4 + 64 * K * d * 4, scratch
