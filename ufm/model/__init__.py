"""The model room: the UFM itself, nothing that runs it.

`problem` (`Problem` static, `Hyper` traced, `Params`, init, objective, its input checks),
`losses` (per-sample losses and their closed-form logit gradients), `streaming` (softmax losses
streamed over class blocks), `frames` (Helmert basis, simplex ETF), `manifolds` (the search
spaces: Euclidean, oblique, norm balls). Imports only the leaves (`ufm.errors`)."""
from ufm import _lazy

SUBMODULES = (
    "frames",
    "losses",
    "manifolds",
    "problem",
    "streaming",
)

# Submodules load on first use.
__getattr__, __dir__ = _lazy.submodules(__name__, SUBMODULES, set(globals()))
