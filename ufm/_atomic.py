"""Files written under a temporary name and renamed into place: a reader (or a crash) never
sees a half-written file, and the old file stays until the new one is whole. A leaf shared by
the results folder (`ufm.running.results`) and a network's training checkpoints
(`ufm.nets.training`)."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temporary_path)`, then rename the temporary file onto `path`: a reader (or a
    crash) never sees a half-written file, and the old file stays until the new one is whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: Path, text: str) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text(text))


def write_arrays(path: Path, arrays: dict) -> None:
    """A compressed numpy archive, atomically."""
    def write(tmp):
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    replace_atomically(path, write)
