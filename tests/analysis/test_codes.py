"""`ufm.analysis.codes`: the softmax and Tammes codes against configurations known exactly, and
searches that name a bad line search."""

import numpy as np
import pytest

from ufm.analysis import codes, gnc


def _icosahedron():
    p = (1 + np.sqrt(5)) / 2
    V = np.array([[0, s1, s2 * p] for s1 in (1, -1) for s2 in (1, -1)]
                 + [[s1, s2 * p, 0] for s1 in (1, -1) for s2 in (1, -1)]
                 + [[s2 * p, 0, s1] for s1 in (1, -1) for s2 in (1, -1)], float)
    return V / np.linalg.norm(V, axis=1, keepdims=True)


def _margin(W):
    return float(np.min(gnc.one_vs_rest_margins(np.asarray(W, float))))


@pytest.mark.parametrize("K,d,margin", [(4, 3, 4 / 3), (5, 2, 1 - np.cos(2 * np.pi / 5)),
                                        (6, 3, 1.0)])
def test_softmax_code_is_the_known_optimum(K, d, margin):
    code = codes.softmax_code(K, d, starts=4)
    assert code.margin == pytest.approx(margin, rel=1e-6)
    gram = code.W @ code.W.T
    if K <= d + 1:  # the simplex ETF
        np.testing.assert_allclose(gram, (K / (K - 1)) * (np.eye(K) - 1 / K), atol=1e-5)
    if (K, d) == (6, 3):  # the octahedron: every pair orthogonal or antipodal
        off = np.abs(gram[~np.eye(6, dtype=bool)])
        assert np.all((off < 1e-4) | (off > 1 - 1e-4))


def test_softmax_code_beyond_the_simplex_reaches_the_constructions():
    """K > d + 1 in d = 3: every margin at least the best construction's, certified by the
    exact QP (an earlier search stopped at its first temperature: 0.99228 at (5, 3) and
    0.738730 at (8, 3), below the codes here)."""
    bipyramid = np.array([[0, 0, 1], [0, 0, -1], [1, 0, 0], [-0.5, np.sqrt(3) / 2, 0],
                          [-0.5, -np.sqrt(3) / 2, 0]])
    assert _margin(bipyramid) == pytest.approx(1.0, abs=1e-12)
    assert _margin(codes.softmax_code(5, 3, starts=8).W) > 1.0 - 1e-6
    tammes = codes.tammes_code(8, 3, starts=16)
    assert _margin(tammes.W) == pytest.approx(0.7387958, abs=1e-6)
    assert _margin(codes.softmax_code(8, 3, starts=8).W) >= _margin(tammes.W) - 1e-9
    icosahedron = _margin(_icosahedron())
    assert icosahedron == pytest.approx(0.5527864045, abs=1e-9)
    code = codes.softmax_code(12, 3, starts=4)
    assert code.margin == _margin(code.W) >= icosahedron - 1e-9  # the margin reported is exact


def test_tammes_code_for_twelve_points_is_the_icosahedron():
    code = codes.tammes_code(12, 3, starts=16)
    angle = 2 * np.arcsin(code.tammes / 2)
    assert angle == pytest.approx(np.arctan(2.0), abs=1e-6)
    # Every point has five nearest neighbours at that angle.
    cos = code.W @ code.W.T
    assert np.all(np.sum(np.abs(cos - np.cos(angle)) < 1e-4, axis=1) == 5)


def test_code_searches_name_a_bad_line_search():
    for search in (codes.softmax_code, codes.tammes_code):
        with pytest.raises(ValueError, match="linesearch='newton' is not allowed: one of"):
            search(5, 3, linesearch="newton")


def test_the_margin_is_at_least_half_the_squared_minimum_distance():
    """dist(w_k, conv{w_j}) >= d_min^2 / 2 for unit vectors (`codes.margin_bound_gap`), on random
    codes and on optimal ones, where the Tammes optima checked meet it with equality."""
    rng = np.random.default_rng(0)
    for K, d in [(5, 3), (12, 3), (20, 3), (9, 4), (30, 5), (7, 2)]:
        for _ in range(5):
            assert codes.margin_bound_gap(rng.normal(size=(K, d))) >= -codes.MARGIN_BOUND_SLACK
    from tests.analysis.test_polish import _icosahedron

    assert codes.margin_bound_gap(_icosahedron()) == pytest.approx(0.0, abs=1e-12)
    tammes = codes.tammes_code(8, 3, starts=8)
    assert tammes.margin >= tammes.tammes ** 2 / 2 - codes.MARGIN_BOUND_SLACK
    softmax = codes.softmax_code(8, 3, starts=8)
    assert softmax.margin >= softmax.tammes ** 2 / 2 - codes.MARGIN_BOUND_SLACK


def test_softmax_codes_are_returned_certified():
    """The softmax search's best end point is polished to a KKT point of the margin problem:
    the certified margin equals the exact QP's, and the icosahedron's 1 - 1/sqrt 5 at K = 12."""
    code = codes.softmax_code(12, 3, starts=4)
    assert code.certificate is not None and code.certificate.kkt_residual < 1e-12
    assert code.margin == pytest.approx(1 - 1 / np.sqrt(5), abs=1e-13)
    assert code.certificate.qp_margin == pytest.approx(code.margin, abs=1e-13)


def test_polished_code_names_a_bad_objective():
    with pytest.raises(ValueError, match="objective='energy' is not allowed: one of"):
        codes.polished_code(np.eye(3), "energy")
    tetrahedron = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float)
    code = codes.polished_code(tetrahedron + 1e-3 * np.arange(12).reshape(4, 3), "tammes")
    assert code.tammes == pytest.approx(np.sqrt(8 / 3), abs=1e-13)
    assert code.certificate.kkt_residual < 1e-12


def test_a_given_start_is_a_candidate_as_it_is():
    """The temperature schedule starts hot and can carry a start out of its basin; a
    configuration passed in starts_from is polished as it is too, so a search given the
    icosahedron returns it even when its own iterations (5 per temperature) go nowhere."""
    code = codes.tammes_code(12, 3, starts=1, steps=5, known=False,
                             starts_from=_icosahedron()[None])
    assert code.tammes == pytest.approx(np.sqrt(2 - 2 / np.sqrt(5)), abs=1e-14)
    assert code.certificate is not None
