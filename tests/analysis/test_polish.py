"""`ufm.analysis.polish`: the Tammes polish reaches KKT points to round-off from constructed
near-optimal codes, with the known values, and certifies them (multipliers, residual)."""
import numpy as np
import pytest

from ufm.analysis import polish

PHI = (1 + 5 ** 0.5) / 2


def _icosahedron():
    W = np.array([[0, a, b * PHI] for a in (1, -1) for b in (1, -1)]
                 + [[a, b * PHI, 0] for a in (1, -1) for b in (1, -1)]
                 + [[b * PHI, 0, a] for a in (1, -1) for b in (1, -1)], float)
    return W / np.linalg.norm(W, axis=1, keepdims=True)


def _antiprism(n, h):
    top = [[np.cos(2 * np.pi * k / n), np.sin(2 * np.pi * k / n), h] for k in range(n)]
    bottom = [[np.cos(2 * np.pi * (k + 0.5) / n), np.sin(2 * np.pi * (k + 0.5) / n), -h]
              for k in range(n)]
    return np.array(top + bottom)


def _check(cert, K):
    """The certificate holds: unit rows, s is the largest inner product and every active pair
    sits at it, multipliers nonnegative summing to one, stationarity to round-off."""
    W = cert.W
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 1.0, atol=1e-14)
    gram = W @ W.T
    off = gram[np.triu_indices(K, 1)]
    assert off.max() == pytest.approx(cert.s, abs=1e-14)
    assert np.abs(gram[cert.active[:, 0], cert.active[:, 1]] - cert.s).max() < 1e-13
    assert cert.mu.min() > -1e-12 and cert.mu.sum() == pytest.approx(1.0, abs=1e-13)
    stationarity = 2 * cert.nu[:, None] * W
    for (i, j), m in zip(cert.active, cert.mu):
        stationarity[i] += m * W[j]
        stationarity[j] += m * W[i]
    assert np.abs(stationarity).max() < 1e-12
    assert cert.kkt_residual < 1e-12
    assert cert.distance == pytest.approx(np.sqrt(2 - 2 * cert.s), abs=1e-15)


@pytest.mark.parametrize("eps", [1e-6, 1e-3, 1e-2])
def test_a_perturbed_icosahedron_polishes_back_to_it(eps):
    rng = np.random.default_rng(1)
    cert = polish.polish_tammes(_icosahedron() + eps * rng.normal(size=(12, 3)))
    _check(cert, 12)
    assert cert.distance == pytest.approx(np.sqrt(2 - 2 / np.sqrt(5)), abs=1e-14)  # 1.0514622242
    assert len(cert.active) == 30 and cert.inactive_max < cert.s - 0.1  # every edge, clearly


def test_a_perturbed_square_antiprism_reaches_the_eight_point_optimum():
    """Tammes N = 8 (Schuette & van der Waerden 1951): the square antiprism with
    cos = (sqrt 8 - 1) / 7, chordal distance 1.2155625241."""
    rng = np.random.default_rng(2)
    cert = polish.polish_tammes(_antiprism(4, 0.6) + 1e-3 * rng.normal(size=(8, 3)))
    _check(cert, 8)
    assert cert.s == pytest.approx((np.sqrt(8) - 1) / 7, abs=1e-14)
    assert len(cert.active) == 16  # the 16 edges of the antiprism (multipliers not unique)


@pytest.mark.parametrize("K, d, distance", [
    (4, 3, np.sqrt(8 / 3)),  # the regular simplex
    (6, 3, np.sqrt(2)),  # the octahedron
    (8, 4, np.sqrt(2)),  # the cross-polytope in R^4
])
def test_constructed_optima_polish_to_their_known_values(K, d, distance):
    rng = np.random.default_rng(3)
    start = {4: lambda: np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float),
             6: lambda: np.vstack([np.eye(3), -np.eye(3)]),
             8: lambda: np.vstack([np.eye(4), -np.eye(4)])}[K]()
    cert = polish.polish_tammes(start + 1e-4 * rng.normal(size=start.shape))
    _check(cert, K)
    assert cert.distance == pytest.approx(distance, abs=1e-13)


def test_polish_refuses_what_it_cannot_certify():
    with pytest.raises(ValueError, match="K=1 points is not allowed"):
        polish.polish_tammes(np.ones((1, 3)))
