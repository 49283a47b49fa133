"""The running room: experiments from a file to a results folder.

`config` (the one config engine), `results` (the results folder), `multihost` (JAX's
multi-controller runtime), `kind` (what a kind is) and `registry` (the kinds by name), `kinds/`
(one module per kind), `experiment` (`run`: any kind into a folder), `tables` and `figures`,
`landscapes` (the landscape experiments: critical points built, run from, probed; they call
solvers).
Imports every room below it; only `ufm.cli` imports it."""
import importlib

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


def __getattr__(name):  # submodules load on first use (PEP 562)
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES))
