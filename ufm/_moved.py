"""Module names of release 0.1 (a flat package) that moved into rooms: each old name still
imports for one release, and every name read from it comes from its new home with a
`DeprecationWarning` that says where that is (`from ufm.theory import optimum` warns "moved to
ufm.analysis.theory.optimum"). A leaf: the new modules are imported only when an old name is
used. Installed by `ufm/__init__.py` as an import hook (`sys.meta_path`), so no file of the old
layout is left in the tree."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

# old module -> the modules its names live in now (searched in order)
MOVED = {
    "ufm.problem": ("ufm.model.problem",),
    "ufm.losses": ("ufm.model.losses",),
    "ufm.streaming": ("ufm.model.streaming",),
    "ufm.frames": ("ufm.model.frames",),
    "ufm.manifolds": ("ufm.model.manifolds",),
    "ufm.metrics": ("ufm.analysis.nc", "ufm.analysis.gnc", "ufm.analysis.imbalance"),
    "ufm.host_metrics": ("ufm.analysis.gnc", "ufm.analysis.imbalance", "ufm.analysis.compression",
                         "ufm.analysis.layerwise"),
    "ufm.theory": ("ufm.analysis.theory", "ufm.analysis.codes", "ufm.model.frames",
                   "ufm.running.landscapes"),
    "ufm.oracle": ("ufm.analysis.oracle",),
    "ufm.codes": ("ufm.analysis.codes",),
    "ufm.landscape": ("ufm.analysis.landscape", "ufm.running.landscapes"),
    "ufm.fused": ("ufm.solvers.fast_step",),
    "ufm.kernels": ("ufm.solvers.kernels",),
    "ufm.lbfgs": ("ufm.solvers.lbfgs",),
    "ufm.runner": ("ufm.solvers.batching",),
    "ufm.config": ("ufm.running.config",),
    "ufm.results": ("ufm.running.results",),
    "ufm.multihost": ("ufm.running.multihost",),
    "ufm.kind": ("ufm.running.kind",),
    "ufm.kinds": ("ufm.running.registry",),
    "ufm.experiment": ("ufm.running.experiment",),
    "ufm.tables": ("ufm.running.tables",),
    "ufm.plots": ("ufm.running.figures", "ufm.running.kinds.grid", "ufm.running.kinds.landscape",
                  "ufm.running.kinds.net", "ufm.running.kinds.transfer"),
    "ufm.points": ("ufm.running.landscapes",),
    "ufm.grid": ("ufm.running.kinds.grid",),
    "ufm.landscape_kinds": ("ufm.running.kinds.landscape",),
    "ufm.nets.experiment": ("ufm.running.kinds.net",),
    "ufm.nets.transfer_kind": ("ufm.running.kinds.transfer",),
}


def new_home(old_module: str, name: str) -> str | None:
    """The module that serves `old_module.name` now, or None."""
    for module in MOVED[old_module]:
        if hasattr(importlib.import_module(module), name):
            return module
    return None


def forwarding_module(old_module: str) -> types.ModuleType:
    """A stand-in for `old_module`: each attribute read is served from its new home, warning."""
    module = types.ModuleType(old_module, f"Moved: see {', '.join(MOVED[old_module])}.")

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        home = new_home(old_module, name)
        if home is None:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r} (it moved to "
                                 f"{' / '.join(MOVED[old_module])})")
        warnings.warn(f"{old_module}.{name} moved to {home}.{name}; the old name goes in the "
                      "next release", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(home), name)

    def __dir__():
        return sorted({n for m in MOVED[old_module]
                       for n in dir(importlib.import_module(m)) if not n.startswith("__")})

    module.__getattr__ = __getattr__
    module.__dir__ = __dir__
    return module


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old module names (no file has them) and loads their forwarding stand-ins."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        return forwarding_module(spec.name)

    def exec_module(self, module):
        pass


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
