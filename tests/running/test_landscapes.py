"""`ufm.running.landscapes`: critical points of rank r solved for, the constructed saddles never
certified global."""
import functools
import math

import pytest

import ufm
from ufm.analysis import landscape, theory
from ufm.running import landscapes as points

from ..analysis.test_landscape import _hyper, _problem

_rank_point = functools.lru_cache(maxsize=None)(points.rank_r_critical_point)

K, D, N_PER = 4, 5, 3
LAM_W, LAM_H = 1e-2, 2e-2
LAM_BAR, DLAM = (LAM_W + LAM_H) / 2, (LAM_W - LAM_H) / 2


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_no_constructed_saddle_is_certified_global(dtype):
    """The origin far below the threshold (lam = 5e-4 against sigma_1(G) = 1/(K sqrt n) =
    0.144: a strict saddle with 15 negative eigenvalues) and every rank-r point: the certificate
    sigma_1(G) <= sqrt(lam_W lam_H) fails at each, and the verdict is a strict saddle."""
    prob = ufm.Problem(num_classes=K, feature_dim=D, n_per_class=N_PER, dtype=dtype)
    hyp = ufm.Hyper(lam_W=5e-4, lam_H=5e-4, lam_b=5e-4)
    saddles = points.constructed_saddles(prob, hyp)
    assert [name for name, _ in saddles] == ["origin", "rank 1", "rank 2"]
    for name, point in saddles:
        p = landscape.probe(prob, hyp, point)
        assert not p.certified_global, name
        assert p.verdict == "strict saddle", name
        assert p.sigma_G > 1.5 * math.sqrt(5e-4 * 5e-4), name
    p = landscape.probe(prob, hyp, saddles[0][1])
    assert p.sigma_G == pytest.approx(1 / (K * math.sqrt(N_PER)), rel=1e-12)
    assert p.n_negative == D * (K - 1)


@pytest.mark.parametrize("loss", ["ce", "ls", "focal", "mse"])
@pytest.mark.parametrize("rank", [1, 2])
def test_rank_r_critical_points(loss, rank):
    prob, hyp = _problem(loss), _hyper(loss)
    point = _rank_point(prob, hyp, rank)
    p = landscape.probe(prob, hyp, point)
    m = K - 1
    assert p.verdict == "strict saddle"
    assert p.n_negative == (D - rank) * (K - 1 - rank)
    extra_mse = rank * (m - rank) if loss == "mse" else 0
    assert p.n_zero == p.n_symmetry == rank * (2 * D - rank - 1) // 2 + extra_mse
    _, curvature = theory.negative_curvature_direction(prob, hyp, point)
    assert p.eig_min == pytest.approx(LAM_BAR - math.sqrt(DLAM**2 + p.sigma_G**2), rel=1e-8)
    assert p.eig_min == pytest.approx(curvature, rel=1e-8)
