"""JAX's persistent compilation cache, on by default: a program compiled once is read back by
every later process (a small solve's first call is mostly compilation). A leaf: imports nothing
from ufm; `import ufm` calls `enable()` before anything compiles.

    UFM_CACHE_DIR=/path          the folder (default: $XDG_CACHE_HOME/ufm/jax, else
                                 ~/.cache/ufm/jax)
    UFM_COMPILATION_CACHE=0      off (also "off", "false", "no")
    JAX_COMPILATION_CACHE_DIR    a folder set for JAX itself wins, and is left as it is

Programs that compile in under `MIN_COMPILE_SECONDS` are not stored (reading an entry back
costs a few milliseconds; JAX's own default of 1 s would leave out most of the UFM's programs).
Entries are a few hundred kB (the folder is not capped, which JAX ties to the `filelock`
package: delete it to reclaim the space, a later run compiles again). JAX writes each entry
atomically, so processes sharing the folder (a grid over hosts, a job array) are safe.
`ufm.compilation_cache(folder | None)` changes it from Python, before the first compilation.
"""
from __future__ import annotations

import os
from pathlib import Path

DIR_VARIABLE = "UFM_CACHE_DIR"
SWITCH_VARIABLE = "UFM_COMPILATION_CACHE"
OFF = ("0", "off", "false", "no")
MIN_COMPILE_SECONDS = 0.1

_state = {"folder": None}


def default_folder() -> Path:
    """Where the cache lives unless told: UFM_CACHE_DIR, else the user's cache folder."""
    if os.environ.get(DIR_VARIABLE):
        return Path(os.environ[DIR_VARIABLE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ufm" / "jax"


def folder() -> Path | None:
    """The folder in use (None: the cache is off, or JAX's own setting is in charge)."""
    return _state["folder"]


def enable() -> Path | None:
    """Turn the cache on in the default folder, unless it is switched off or JAX has a folder
    of its own. A folder that cannot be made leaves the cache off (nothing else changes)."""
    import jax

    if os.environ.get(SWITCH_VARIABLE, "").strip().lower() in OFF:
        return None
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return None  # the user's (or the test suite's) own choice
    return compilation_cache(default_folder())


def compilation_cache(path: str | Path | None) -> Path | None:
    """Use `path` for JAX's persistent compilation cache (None: off). Takes effect for programs
    compiled after the first one only if called before it, as every JAX cache setting."""
    import jax

    if path is None:
        jax.config.update("jax_compilation_cache_dir", None)
        _state["folder"] = None
        return None
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # else JAX's reading
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    _state["folder"] = path
    return path
