"""Submodules loaded on first attribute access (PEP 562), for the rooms' `__init__.py`: a room
lists its submodules and `import ufm` stays light. A leaf: it imports nothing from ufm."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def submodules(package: str, names: tuple[str, ...], public: set[str] = frozenset()
               ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(`__getattr__`, `__dir__`) for `package`: `package.name` imports `package.name` for each
    of `names`; `public` (the names the package defines itself) is listed by `dir` too."""

    def __getattr__(name: str):
        if name in names:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(names) | set(public))

    return __getattr__, __dir__
