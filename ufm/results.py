"""The results folder, one for every experiment kind (docs/architecture.md):

    DIR/config.toml         the resolved experiment, every default written out
    DIR/results.csv         one row per (configuration, seed) (or per start, probe, ...)
    DIR/history.npz         per-row trajectories: KEY -> (rows, log points), plus "iteration"
    DIR/*.npz               a kind's other arrays (e.g. spectra.npz)
    DIR/manifest.json       package versions, devices, wall time, git revision if any
    DIR/*.png               figures
    DIR/checkpoints/        one file per finished unit of work (a chunk of a grid, a
                            configuration of a landscape or network experiment), and a unit's
                            own progress (a network's training state) while it runs

`ResultsFolder` claims a folder (refusing another configuration's), checkpoints finished units,
reads them back on a rerun (a damaged one is named in a warning and its unit recomputed), keeps
results.csv growing as units finish, and writes the final files. Every file is written under a
temporary name and renamed into place, so nothing the user has is removed before its
replacement is complete. Files are numpy archives and JSON, read without pickle: data files
never execute code.
"""
from __future__ import annotations

import csv
import datetime
import hashlib
import importlib.metadata
import io
import json
import math
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from ufm.config import InputError

CONFIG, RESULTS, HISTORY, MANIFEST = "config.toml", "results.csv", "history.npz", "manifest.json"
CHECKPOINTS = "checkpoints"


class ResultsFolderError(InputError):
    """The output folder holds something that is not this experiment's results."""


class DifferentConfiguration(ResultsFolderError):
    """The folder holds another configuration's results (`old_text`: its config.toml); a kind
    that can extend finished results (a grid given new seeds or axis values) may adopt it."""

    def __init__(self, message: str, old_text: str):
        super().__init__(message)
        self.old_text = old_text


def replace_atomically(path: Path, write) -> None:
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


def _cell(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value)
    return str(value)


def _columns(rows: list[dict]) -> list[str]:
    """Every key of every row, in first-seen order (rows of different problems may carry
    different extra columns, e.g. GNC or imbalance metrics); a missing cell is empty."""
    return list(dict.fromkeys(key for row in rows for key in row))


def write_table(path: Path, rows: list[dict]) -> None:
    """rows as CSV (atomically: see `replace_atomically`)."""
    columns = _columns(rows)

    def write(tmp):
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for row in rows:
                writer.writerow([_cell(row.get(c)) for c in columns])

    replace_atomically(path, write)


def write_history(path: Path, histories: list[dict]) -> None:
    """Stack per-row histories (dicts of 1-D arrays, possibly of different lengths: a batch that
    finished early logged fewer points) into (rows, T) arrays padded with NaN."""
    length = max(len(h["iteration"]) for h in histories)
    iteration = max((h["iteration"] for h in histories), key=len)
    arrays = {"iteration": np.asarray(iteration)}
    for key in dict.fromkeys(k for h in histories for k in h):  # NaN where a row lacks a key
        if key == "iteration":
            continue
        stacked = np.full((len(histories), length), np.nan)
        for i, h in enumerate(histories):
            if key in h:
                stacked[i, : len(h[key])] = h[key]
        arrays[key] = stacked
    write_arrays(path, arrays)


def write_arrays(path: Path, arrays: dict) -> None:
    """A compressed numpy archive, atomically."""
    def write(tmp):
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    replace_atomically(path, write)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def manifest(wall_seconds: float, **extra) -> dict:
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in ("ufm", "jax", "jaxlib", "optax", "flax", "numpy",
                                                "matplotlib")},
        "devices": [str(d) for d in jax.devices()],
        "backend": jax.default_backend(),
        "wall_seconds": wall_seconds,
        "git_revision": git_revision(),
        "command": sys.argv,
        **extra,
    }


def write_results(out, config_text: str, rows: list[dict], histories: list[dict] | None,
                  manifest_dict: dict, arrays: dict[str, dict] | None = None) -> Path:
    """Write a results folder (each file atomically); `arrays` maps extra file names (e.g.
    "spectra.npz") to dicts of arrays."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / CONFIG, config_text)
    write_table(out / RESULTS, rows)
    if histories:
        write_history(out / HISTORY, histories)
    for name, content in (arrays or {}).items():
        write_arrays(out / name, content)
    write_text(out / MANIFEST, json.dumps(manifest_dict, indent=2) + "\n")
    return out


def _parse(text: str):
    if text == "":
        return None
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def read_table(path) -> dict:
    """results.csv as a dict of numpy columns (numbers typed, text kept as str). A damaged file
    (empty, not UTF-8, a line with the wrong number of cells) raises ResultsFolderError naming
    the file and the line."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            columns = next(reader, None)
            if not columns:
                raise ResultsFolderError(f"{path} is empty or damaged: it has no header line; "
                                         "rerun the experiment into this folder to rebuild it")
            cells = []
            for row in reader:
                if len(row) != len(columns):
                    raise ResultsFolderError(
                        f"{path} is damaged: line {reader.line_num} has {len(row)} cells, the "
                        f"header {len(columns)}; rerun the experiment into this folder to "
                        "rebuild it from its checkpoints")
                cells.append([_parse(c) for c in row])
    except (UnicodeDecodeError, csv.Error) as err:
        raise ResultsFolderError(f"{path} is damaged ({err}); rerun the experiment into this "
                                 "folder to rebuild it from its checkpoints") from None
    table = {}
    for j, name in enumerate(columns):
        values = [row[j] for row in cells]
        if all(isinstance(v, bool) for v in values):
            table[name] = np.array(values, dtype=bool)
        elif all((isinstance(v, (int, float)) and not isinstance(v, bool)) or v is None
                 for v in values) and any(v is not None for v in values):
            table[name] = np.array([math.nan if v is None else v for v in values])
            if all(isinstance(v, int) for v in values):
                table[name] = table[name].astype(np.int64)
        else:
            table[name] = np.array(["" if v is None else str(v) for v in values], dtype=object)
    return table


def float_column(table: dict, key: str) -> np.ndarray:
    """A column of a `read_table` table as floats, NaN for empty cells (a column that is empty
    throughout reads back as text) or when the table has no such column."""
    n = len(table["row"])
    values = table.get(key)
    if values is None:
        return np.full(n, np.nan)
    return np.array([np.nan if v in ("", None) else float(v) for v in values])


# Text columns read as pandas categories (a few distinct values each).
CATEGORY_COLUMNS = ("status",)


def load_results(directory):
    """(table, history) of a results folder of any kind.

    table: a pandas DataFrame when pandas is installed (`pip install pandas`; the dev extra has
    it), one row per results.csv row, typed: numbers as int64 / float64 (an empty cell is
    NaN, a column empty throughout is float NaN), true/false as bool, `status` as a category,
    other text as strings. Without pandas, a dict of numpy columns (`read_table`).
    history: a dict KEY -> (rows, T) array from history.npz (empty when the kind logs no
    trajectories), row i of each array belonging to row i of the table; "iteration" (T,)."""
    directory = Path(directory)
    if not (directory / RESULTS).is_file():
        raise FileNotFoundError(f"{directory} is not a results folder: {RESULTS} is missing")
    table = read_table(directory / RESULTS)
    try:
        import pandas
    except ImportError:
        pass
    else:
        table = pandas.DataFrame({name: _typed(pandas, name, column)
                                  for name, column in table.items()})
    history = {}
    if (directory / HISTORY).is_file():
        with np.load(directory / HISTORY, allow_pickle=False) as data:
            history = {k: data[k] for k in data.files}
    return table, history


def _typed(pandas, name: str, column: np.ndarray):
    """A `read_table` column as a typed pandas Series."""
    if column.dtype != object:
        return pandas.Series(column)
    if all(v == "" for v in column):
        return pandas.Series(np.full(len(column), np.nan))
    if name in CATEGORY_COLUMNS:
        return pandas.Series(column).astype("category")
    return pandas.Series(column).astype("string")


# ---------------------------------------------------------------- units of work and checkpoints


class UnitResult(NamedTuple):
    """What one unit of work produced: table rows (each with its "row" index), their histories
    (one per row, or none) and named arrays for the folder's other files
    ({"spectra.npz": {key: array}})."""

    rows: list
    histories: list
    arrays: dict


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, np.ndarray)):
        return list(value)
    raise TypeError(f"cannot write {value!r} to a checkpoint")


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def pack_unit(tag: str, result: UnitResult) -> bytes:
    """A unit's result as the bytes of an uncompressed numpy archive (no pickle): its tag and
    rows as JSON, histories as h/<i>/<key>, arrays as a/<file>/<key>. The same bytes travel
    between processes and are the checkpoint file."""
    arrays = {"unit": np.frombuffer(json.dumps(
        {"tag": tag, "rows": result.rows, "histories": len(result.histories)},
        default=_json_default).encode(), np.uint8)}
    for i, history in enumerate(result.histories):
        arrays.update({f"h/{i}/{k}": np.asarray(v) for k, v in history.items()})
    for name, content in result.arrays.items():
        arrays.update({f"a/{name}/{k}": np.asarray(v) for k, v in content.items()})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack_unit(blob: bytes) -> tuple[str, UnitResult]:
    """(tag, result) of `pack_unit`'s bytes; raises ValueError (or the archive's error) when the
    bytes are damaged. List cells come back as tuples."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        files = {k: data[k] for k in data.files}
    head = json.loads(files.pop("unit").tobytes().decode())
    rows = [{k: _tuples(v) for k, v in row.items()} for row in head["rows"]]
    histories = [{} for _ in range(head["histories"])]
    arrays: dict = {}
    for key, value in files.items():
        part, rest = key.split("/", 1)
        if part == "h":
            i, name = rest.split("/", 1)
            histories[int(i)][name] = value
        else:
            name, inner = rest.split("/", 1)
            arrays.setdefault(name, {})[inner] = value
    if histories and len(histories) != len(rows):
        raise ValueError(f"{len(histories)} histories for {len(rows)} rows")
    return head["tag"], UnitResult(rows, histories, arrays)


class ResultsFolder:
    """A results folder being written by a run (see the module docstring). Only the writing
    process (process 0 of a multi-process run) makes one."""

    def __init__(self, path, config_text: str):
        self.path = Path(path)
        self.config_text = config_text
        self.checkpoints = self.path / CHECKPOINTS

    def claim(self) -> None:
        """Refuse a folder that holds another configuration's results or other files; write
        config.toml first, so an interrupted run is recognised and resumed."""
        existing = self.path / CONFIG
        if self.path.exists() and not self.path.is_dir():
            raise ResultsFolderError(f"{self.path} is a file, not a folder; choose another --out")
        if existing.is_file():
            old = existing.read_text()
            if old != self.config_text:
                diff = next((f"{a!r} != {b!r}" for a, b in zip(old.splitlines(),
                                                                 self.config_text.splitlines())
                             if a != b), "different length")
                raise DifferentConfiguration(
                    f"{self.path} holds results of a different configuration (first difference: "
                    f"{diff}); choose another --out or remove the folder", old)
        elif self.path.is_dir() and any(self.path.iterdir()):
            raise ResultsFolderError(f"{self.path} is not empty and is not a ufm results folder "
                                     f"({CONFIG} is missing); choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(existing, self.config_text)

    def adopt(self) -> None:
        """Make this configuration the folder's (after its finished results were carried over
        to it: `ufm.experiment.run`)."""
        write_text(self.path / CONFIG, self.config_text)

    @property
    def config_id(self) -> str:
        """A short digest of the configuration, naming files that belong to it alone."""
        return hashlib.sha256(self.config_text.encode()).hexdigest()[:12]

    def unit_path(self, tag: str) -> Path:
        return self.checkpoints / f"{tag}.npz"

    def scratch(self, tag: str) -> Path:
        """A folder for a unit's own progress while it runs (removed once the unit is done)."""
        return self.checkpoints / tag

    def save_unit(self, tag: str, blob: bytes) -> None:
        """Checkpoint a finished unit (`pack_unit`'s bytes), atomically; then drop its scratch."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        replace_atomically(self.unit_path(tag), lambda tmp: tmp.write_bytes(blob))
        scratch = self.scratch(tag)
        if scratch.is_dir():
            for file in sorted(scratch.rglob("*"), reverse=True):
                file.unlink() if file.is_file() else file.rmdir()
            scratch.rmdir()

    def load_unit(self, tag: str, expected_rows=None) -> UnitResult | None:
        """A finished unit's result, or None when it has not finished. A damaged checkpoint (cut
        short, unreadable, another unit's, other rows than expected) is named in a warning and
        left in place to be overwritten when its unit has been recomputed."""
        path = self.unit_path(tag)
        if not path.is_file():
            return None
        try:
            found, result = unpack_unit(path.read_bytes())
            if found != tag:
                raise ValueError(f"it holds unit {found!r}")
            if expected_rows is not None and [r["row"] for r in result.rows] != list(expected_rows):
                raise ValueError("its rows are not this unit's")
        except Exception as err:  # noqa: BLE001 (any damage means: recompute)
            warnings.warn(f"{path}: damaged checkpoint ({type(err).__name__}: {err}); its unit is "
                          "recomputed", stacklevel=2)
            return None
        return result

    def read_json(self, name: str):
        """A small JSON file of the run (e.g. a grid's plan) from checkpoints/, or None when
        missing or damaged (with a warning)."""
        path = self.checkpoints / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            warnings.warn(f"{path}: damaged ({err}); made again", stacklevel=2)
            return None

    def write_json(self, name: str, value) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        write_text(self.checkpoints / name, json.dumps(value))

    def write_rows(self, rows: list[dict]) -> None:
        """results.csv with the rows finished so far (replaced whole, atomically)."""
        if rows:
            write_table(self.path / RESULTS, rows)
