"""`ufm.analysis.polish`: the Tammes polish reaches KKT points to round-off from constructed
near-optimal codes, with the known values, and certifies them (multipliers, residual)."""
import numpy as np
import pytest

from ufm.analysis import gnc, polish

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


def _check_softmax(cert, K):
    """The softmax certificate holds, checked from W and H alone: unit rows, every gap
    (w_k - w_j).h_k at least the margin and the active ones at it, multipliers nonnegative
    summing to one, stationarity in W and in H to round-off, and the margin equal to the exact
    QP's."""
    W, H = cert.W, cert.H
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 1.0, atol=1e-14)
    np.testing.assert_allclose(np.linalg.norm(H, axis=1), 1.0, atol=1e-14)
    gaps = np.einsum("kd,kd->k", W, H)[:, None] - H @ W.T  # gaps[k, j] = (w_k - w_j).h_k
    np.fill_diagonal(gaps, np.inf)
    assert gaps.min() == pytest.approx(cert.margin, abs=1e-13)
    k, j = cert.active[:, 0], cert.active[:, 1]
    assert np.abs(gaps[k, j] - cert.margin).max() < 1e-13
    assert cert.mu.min() > -1e-12 and cert.mu.sum() == pytest.approx(1.0, abs=1e-13)
    # the Lagrangian's gradient: constraint (k, j) is (w_j - w_k).h_k <= -t
    grad_W = 2 * cert.nu[:K, None] * W
    grad_H = 2 * cert.nu[K:, None] * H
    for (a, b), m in zip(cert.active, cert.mu):
        grad_W[b] += m * H[a]
        grad_W[a] -= m * H[a]
        grad_H[a] += m * (W[b] - W[a])
    assert max(np.abs(grad_W).max(), np.abs(grad_H).max()) < 1e-12
    assert cert.kkt_residual < 1e-12
    assert cert.qp_margin == pytest.approx(cert.margin, abs=1e-13)


@pytest.mark.parametrize("eps", [1e-6, 1e-3, 1e-2])
def test_a_perturbed_icosahedron_polishes_back_to_the_softmax_optimum(eps):
    """The icosahedron's margin: 1 - 1/sqrt 5 = d_min^2 / 2 (0.5527864045), every class active
    on the five neighbours of its QP's face (60 active constraints)."""
    rng = np.random.default_rng(4)
    cert = polish.polish_softmax(_icosahedron() + eps * rng.normal(size=(12, 3)))
    _check_softmax(cert, 12)
    assert cert.margin == pytest.approx(1 - 1 / np.sqrt(5), abs=1e-14)
    assert len(cert.active) == 60 and cert.inactive_min > cert.margin + 0.5


def test_a_perturbed_square_antiprism_reaches_the_eight_point_softmax_margin():
    """The square antiprism's margin is d_min^2 / 2 = 1 - (sqrt 8 - 1) / 7 (0.7387961250)."""
    rng = np.random.default_rng(5)
    cert = polish.polish_softmax(_antiprism(4, 0.6) + 1e-3 * rng.normal(size=(8, 3)))
    _check_softmax(cert, 8)
    assert cert.margin == pytest.approx(1 - (np.sqrt(8) - 1) / 7, abs=1e-14)


@pytest.mark.parametrize("start, margin", [
    (np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float), 4 / 3),  # simplex
    (np.vstack([np.eye(4), -np.eye(4)]), 1.0),  # the cross-polytope in R^4 (degenerate faces)
])
def test_constructed_softmax_optima_polish_to_their_known_margins(start, margin):
    rng = np.random.default_rng(6)
    for eps in (1e-6, 1e-3):
        cert = polish.polish_softmax(start + eps * rng.normal(size=start.shape))
        _check_softmax(cert, len(start))
        assert cert.margin == pytest.approx(margin, abs=1e-13)


def test_the_softmax_polish_never_returns_a_worse_critical_point():
    """Newton on too small an active set wanders to another KKT point (margin 0 from the
    perturbed cross-polytope, before the wider sets were tried): the polish keeps only a point
    not worse than its descent's."""
    rng = np.random.default_rng(7)
    start = np.vstack([np.eye(4), -np.eye(4)]) + 1e-3 * rng.normal(size=(8, 4))
    before = float(np.min(gnc.one_vs_rest_margins(start / np.linalg.norm(start, axis=1,
                                                                            keepdims=True))))
    assert polish.polish_softmax(start).margin >= before - 1e-12
