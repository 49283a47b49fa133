"""`ufm.analysis.layerwise`: the geometric-decay fit of NC1 over layers recovers a known rate."""
import jax.numpy as jnp
import numpy as np
import pytest

from ufm.analysis import layerwise
from ufm.analysis import nc as metrics


def test_geometric_decay_fit_recovers_a_known_rate():
    """Layer features with the same class means and within-class noise (of mean zero in each
    class) scaled by ratio^(l/2): NC1 scales with the noise's square, so NC1_l = NC1_0 ratio^l
    exactly."""
    rng = np.random.default_rng(0)
    K, d, n, ratio = 5, 12, 20, 0.35
    labels = np.repeat(np.arange(K), n)
    means = 4.0 * rng.standard_normal((d, K))
    noise = rng.standard_normal((d, K * n))
    for k in range(K):  # the noise has mean zero in every class: the class means stay `means`
        noise[:, labels == k] -= noise[:, labels == k].mean(axis=1, keepdims=True)
    nc1 = [float(metrics.nc1(jnp.asarray(means[:, labels] + ratio ** (layer / 2) * noise),
                             jnp.asarray(labels), K)) for layer in range(6)]
    fit = layerwise.geometric_decay(nc1)
    assert fit["ratio"] == pytest.approx(ratio, rel=1e-5)
    assert fit["rate"] == pytest.approx(-np.log(ratio), rel=1e-5) and fit["r2"] > 1 - 1e-9
    noisy = np.array(nc1) * np.exp(0.3 * rng.standard_normal(6))
    assert layerwise.geometric_decay(noisy)["r2"] < fit["r2"]
    assert np.isnan(layerwise.geometric_decay([1.0, 0.0, 0.1])["ratio"])
