"""`ufm.analysis.constructions`: each known configuration has its documented inner products,
and the starts it gives have the requested shape."""
import numpy as np
import pytest

from ufm.analysis import constructions, gnc


def _inner(P):
    return np.unique(np.round((P @ P.T)[np.triu_indices(len(P), 1)], 12))


@pytest.mark.parametrize("make, shape, inner", [
    (lambda: constructions.simplex(4), (5, 4), [-0.25]),
    (lambda: constructions.cross_polytope(3), (6, 3), [-1.0, 0.0]),
    (constructions.icosahedron, (12, 3), [-1.0, -1 / np.sqrt(5), 1 / np.sqrt(5)]),
    (constructions.cell24, (24, 4), [-1.0, -0.5, 0.0, 0.5]),
    (lambda: constructions.half_cube(5), (16, 5), [-0.6, 0.2]),
])
def test_constructions_have_their_inner_products(make, shape, inner):
    P = make()
    assert P.shape == shape
    np.testing.assert_allclose(np.linalg.norm(P, axis=1), 1.0, atol=1e-15)
    np.testing.assert_allclose(_inner(P), np.round(inner, 12), atol=1e-12)


def test_the_snub_cube_is_a_24_point_code_with_five_neighbours_each():
    """Robinson's optimal 24-point code: t is the tribonacci constant, every vertex has five
    nearest neighbours (four at one edge type in the exact snub cube: all edges equal)."""
    t = 1.8392867552141612
    assert t ** 3 == pytest.approx(t ** 2 + t + 1, abs=1e-14)
    P = constructions.snub_cube()
    gram = P @ P.T
    np.fill_diagonal(gram, -2)
    s = gram.max()
    assert np.all(np.sum(np.abs(gram - s) < 1e-12, axis=1) == 5)
    assert gnc.min_pairwise_distance(P) == pytest.approx(np.sqrt(2 - 2 * s), abs=1e-15)


def test_antiprisms_have_equal_edges():
    for n in (3, 4, 5, 8):
        P = constructions.antiprism(n)
        gram = P @ P.T
        np.fill_diagonal(gram, -2)
        assert np.all(np.sum(np.abs(gram - gram.max()) < 1e-12, axis=1) == 4)


def test_starts_are_constructions_and_their_subsets():
    assert constructions.starts(12, 3).shape[1:] == (12, 3)
    assert any(np.allclose(W, constructions.icosahedron()) for W in constructions.starts(12, 3))
    assert constructions.starts(40, 3).shape == (0, 40, 3)  # nothing that large in R^3
    assert constructions.starts(7, 4).shape[1:] == (7, 4)  # from the cross-polytope, 24-cell
