"""The model room: the UFM itself, nothing that runs it.

`problem` (`Problem` static, `Hyper` traced, `Params`, init, objective, its input checks),
`losses` (per-sample losses and their closed-form logit gradients), `streaming` (softmax losses
streamed over class blocks), `frames` (Helmert basis, simplex ETF), `manifolds` (the search
spaces: Euclidean, oblique, norm balls). Imports only the leaves (`ufm.errors`)."""
import importlib

SUBMODULES = (
    "frames",
    "losses",
    "manifolds",
    "problem",
    "streaming",
)


def __getattr__(name):  # submodules load on first use (PEP 562)
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES))
