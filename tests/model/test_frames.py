"""`ufm.model.frames`: the Helmert basis and the simplex ETF, against their definitions."""
import numpy as np
import pytest

from ufm.model import frames


@pytest.mark.parametrize("K", [2, 3, 7])
def test_helmert_basis_is_orthonormal_and_orthogonal_to_ones(K):
    U = frames.helmert_basis(K)
    assert U.shape == (K, K - 1)
    np.testing.assert_allclose(U.T @ U, np.eye(K - 1), atol=1e-14)
    np.testing.assert_allclose(np.ones(K) @ U, np.zeros(K - 1), atol=1e-14)


@pytest.mark.parametrize("K, d", [(3, 2), (4, 3), (5, 8)])
def test_simplex_etf_has_the_etf_gram(K, d):
    M = frames.simplex_etf(K, d)
    assert M.shape == (K, d)
    gram = M @ M.T
    np.testing.assert_allclose(np.diag(gram), np.ones(K), atol=1e-14)  # rows of norm 1
    off = gram[~np.eye(K, dtype=bool)]
    np.testing.assert_allclose(off, np.full(off.shape, -1.0 / (K - 1)), atol=1e-14)
    # the normalized Gram: (I - 11^T/K) / sqrt(K-1), Frobenius norm 1
    E = frames.etf_gram(K)
    np.testing.assert_allclose(E, gram * (K - 1) / K / np.sqrt(K - 1), atol=1e-14)
    assert np.linalg.norm(E) == pytest.approx(1.0, abs=1e-14)


def test_a_simplex_etf_needs_d_at_least_k_minus_one():
    with pytest.raises(ValueError, match="feature_dim=2 is not allowed"):
        frames.simplex_etf(4, 2)
