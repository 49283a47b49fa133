"""Names that moved to another module keep working from the old one for one release, with a
DeprecationWarning that says where they live now (PEP 562 module `__getattr__`)."""
from __future__ import annotations

import importlib
import warnings


def forward(old_module: str, moved: dict[str, str]):
    """A module `__getattr__` for `old_module` that serves each name of `moved` (name -> its
    new module) from there, warning once per access; other names raise AttributeError."""

    def __getattr__(name: str):
        if name not in moved:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        warnings.warn(f"{old_module}.{name} moved to {moved[name]}.{name}; the old name goes "
                      "in the next release", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(moved[name]), name)

    return __getattr__
