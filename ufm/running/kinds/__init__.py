"""The experiment kinds, one module each (`ufm.running.registry` names them): `grid`,
`landscape` (benign, origin_phase, saddle_escape), `net`, `transfer`."""
from ufm import _lazy

SUBMODULES = (
    "grid",
    "landscape",
    "net",
    "transfer",
)

# Submodules load on first use.
__getattr__, __dir__ = _lazy.submodules(__name__, SUBMODULES, set(globals()))
