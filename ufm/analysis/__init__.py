"""The analysis room: what is measured and what is known, never a solver run.

`nc` (the jittable NC metrics), `host_metrics` (float64 metrics after a run: GNC with the exact
margin QP, minority collapse, compression, layers), `theory` (closed forms), `oracle` (the
convex oracle of imbalanced classes), `codes` (softmax and Tammes codes), `landscape`
(charts, Hessian products, eigensolvers, the probe). Imports the model room only."""
import importlib

SUBMODULES = (
    "codes",
    "host_metrics",
    "landscape",
    "nc",
    "oracle",
    "theory",
)


def __getattr__(name):  # submodules load on first use (PEP 562)
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES))
