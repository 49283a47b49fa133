"""Curvature of the UFM objective: charts of the tangent space (`charts`), Hessian-vector
products and dense Hessians (`hessian`), eigensolvers (`eigensolvers`) and `probe` (`probes`),
which classifies a point as a strict saddle, a local or a certified global minimum (docs/science.md,
section 5). The landscape experiments, which run solvers, are `ufm.running.landscapes`.

Coordinates. The Hessian acts on the trained variables only: W (unless the classifier is a fixed
ETF), H, and b (when the problem has a bias). On the sphere it is the Riemannian Hessian of the
oblique manifold written in an orthonormal tangent basis (a Householder basis of w_k^perp and of
h_i^perp), with the curvature (Weingarten) term of Absil, Mahony & Trumpf (2013):

    Hess f(X)[V] = P_X(ehess f(X)[V]) - V ddiag(X^T egrad f(X)).

Probes run in float64 and symmetrize, whatever the problem's dtype.
"""
from ufm.analysis.landscape.charts import (
    DENSE_MAX_DIM,
    Coordinates,
    coordinates,
)
from ufm.analysis.landscape.eigensolvers import (
    Extremes,
    LanczosResult,
    extreme_eigenvalues,
    lanczos,
    robust_eigh,
)
from ufm.analysis.landscape.hessian import (
    constraint_activity,
    dense_hessian,
    gradient,
    hessian_operator,
    hvp,
    riemannian_hvp,
)
from ufm.analysis.landscape.probes import (
    GLOBAL_MIN,
    LOCAL_MIN,
    NOT_CRITICAL,
    STRICT_SADDLE,
    VERDICTS,
    Probe,
    probe,
    probe_batch,
    spectrum,
    symmetry_dimension,
)

__all__ = [
    "Coordinates",
    "DENSE_MAX_DIM",
    "Extremes",
    "GLOBAL_MIN",
    "LOCAL_MIN",
    "LanczosResult",
    "NOT_CRITICAL",
    "Probe",
    "STRICT_SADDLE",
    "VERDICTS",
    "constraint_activity",
    "coordinates",
    "dense_hessian",
    "extreme_eigenvalues",
    "gradient",
    "hessian_operator",
    "hvp",
    "lanczos",
    "probe",
    "probe_batch",
    "riemannian_hvp",
    "robust_eigh",
    "spectrum",
    "symmetry_dimension",
]
