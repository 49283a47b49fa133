"""The analysis room: what is measured and what is known, never a solver run.

Metrics by concept: `nc` (NC1..NC4 and the multi-label metrics, jittable: what a run records);
on the host in float64, after a run, `gnc` (generalized NC with the exact margin QP),
`imbalance` (minority collapse), `compression` (coding rate, effective rank) and `layerwise`
(collapse through a network's layers), gathered by `end_points` into the columns a batch of
end points reports. What is known: `theory` (closed forms), `oracle` (the convex oracle of
imbalanced classes), `codes` (softmax and Tammes codes). Curvature: `landscape` (charts,
Hessian products, eigensolvers, the probe). Imports the model room only."""
from ufm import _lazy

SUBMODULES = (
    "codes",
    "compression",
    "end_points",
    "gnc",
    "imbalance",
    "layerwise",
    "landscape",
    "nc",
    "oracle",
    "theory",
)

# Submodules load on first use.
__getattr__, __dir__ = _lazy.submodules(__name__, SUBMODULES, set(globals()))
