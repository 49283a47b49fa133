"""The experiment kinds, one module each (`ufm.running.registry` names them): `grid`,
`landscape` (benign, origin_phase, saddle_escape), `net`, `transfer`."""
import importlib

SUBMODULES = (
    "grid",
    "landscape",
    "net",
    "transfer",
)


def __getattr__(name):  # submodules load on first use (PEP 562)
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES))
