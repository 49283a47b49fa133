"""The results folder (docs/design.md):

    DIR/config.toml     the resolved experiment, every default written out
    DIR/results.csv     one row per (configuration, seed)
    DIR/history.npz     per-row trajectories: KEY -> (rows, log points), plus "iteration"
    DIR/manifest.json   package versions, devices, wall time, git revision if any
    DIR/*.png           figures (ufm.plots)
"""
from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import math
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from ufm.problem import Hyper

CONFIG, RESULTS, HISTORY, MANIFEST = "config.toml", "results.csv", "history.npz", "manifest.json"
PROBLEM_COLUMNS = ("num_classes", "feature_dim", "n_per_class", "class_counts", "loss",
                   "geometry", "bias", "classifier", "dtype", "label_sets", "set_counts",
                   "depth", "activation")
# The columns of results.csv that describe a configuration (besides its seed).
CONFIG_COLUMNS = PROBLEM_COLUMNS + Hyper._fields + ("solver",)


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
    columns = _columns(rows)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])


def append_table(path: Path, rows: list[dict]) -> None:
    """Append rows to a CSV table, writing the header when the file is new (a running grid's
    table: columns first seen later are added when the finished table is rewritten)."""
    if not rows:
        return
    new = not path.is_file()
    if new:
        columns = _columns(rows)
    else:
        with open(path, newline="") as handle:
            columns = next(csv.reader(handle), [])
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])


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
    np.savez_compressed(path, **arrays)


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
    import jax

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
    """Write a results folder; `arrays` maps extra file names (e.g. "spectra.npz") to dicts of
    arrays."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(config_text)
    write_table(out / RESULTS, rows)
    if histories:
        write_history(out / HISTORY, histories)
    for name, content in (arrays or {}).items():
        np.savez_compressed(out / name, **content)
    (out / MANIFEST).write_text(json.dumps(manifest_dict, indent=2) + "\n")
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
    """results.csv as a dict of numpy columns (numbers typed, text kept as str)."""
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        columns = next(reader)
        cells = [[_parse(c) for c in row] for row in reader]
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


def load_results(directory):
    """(table, history) of a results folder: the table as a pandas DataFrame when pandas is
    installed, else a dict of numpy columns; history as a dict KEY -> (rows, T) array."""
    directory = Path(directory)
    if not (directory / RESULTS).is_file():
        raise FileNotFoundError(f"{directory} is not a results folder: {RESULTS} is missing")
    table = read_table(directory / RESULTS)
    try:
        import pandas
    except ImportError:
        pass
    else:
        table = pandas.DataFrame(table)
    history = {}
    if (directory / HISTORY).is_file():
        with np.load(directory / HISTORY) as data:
            history = {k: data[k] for k in data.files}
    return table, history
