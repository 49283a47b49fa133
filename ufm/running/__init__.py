"""The running room: experiments from a file to a results folder.

`config` (the one config engine), `results` (the results folder), `multihost` (JAX's
multi-controller runtime), `kind` (what a kind is) and `registry` (the kinds by name), `kinds/`
(one module per kind), `experiment` (`run`: any kind into a folder), `tables` and `figures`,
`landscapes` (the landscape experiments: critical points built, run from, probed; they call
solvers).
Imports every room below it; only `ufm.cli` imports it."""
from ufm import _lazy

SUBMODULES = (
    "config",
    "experiment",
    "figures",
    "kind",
    "kinds",
    "landscapes",
    "multihost",
    "registry",
    "results",
    "tables",
)

# Submodules load on first use.
__getattr__, __dir__ = _lazy.submodules(__name__, SUBMODULES, set(globals()))
