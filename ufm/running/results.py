"""The results folder, one for every experiment kind (docs/architecture.md):

    DIR/config.toml         the resolved experiment, every default written out
    DIR/results.csv         one row per (configuration, seed) (or per start, probe, ...)
    DIR/history.npz         per-row trajectories: KEY -> (rows, log points), plus "iteration"
    DIR/*.npz               a kind's other arrays (e.g. spectra.npz)
    DIR/manifest.json       package versions (and every installed one), devices, wall time,
                            git revision and whether the tree was dirty, the numerics settings
                            (x64, matmul precision, XLA_FLAGS, JAX_* variables), the command
    DIR/*.png               figures
    DIR/checkpoints/        one file per finished unit of work (a chunk of a grid, a
                            configuration of a landscape or network experiment), each with the
                            digest of the configuration it was computed for; a unit's own
                            progress (a network's training state) while it runs; config.toml,
                            a second copy of the claimed configuration
    DIR/.lock               held (an OS file lock, and the holder's host, pid and heartbeat)
                            by the one process writing the folder
    DIR/shards/ID/I-of-N/   the folder of shard I of N of a job array (`ShardFolder`: its own
                            lock, config.toml and checkpoints), ID the configuration's id;
                            DIR/shards/ID/*.json the plan the shards share

`ResultsFolder` locks a folder (one writer at a time), claims it (refusing another
configuration's), checkpoints finished units, reads them back on a rerun (a damaged one, or one
computed for another configuration, is named in a warning and its unit recomputed), keeps
results.csv growing as units finish, and writes the final files. Every file is written under a
temporary name and renamed into place, so nothing the user has is removed before its
replacement is complete. Files are numpy archives and JSON, read without pickle: data files
never execute code.
"""
from __future__ import annotations

import csv
import datetime
import errno
import hashlib
import importlib.metadata
import io
import json
import math
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import tomllib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from ufm._atomic import replace_atomically, write_arrays, write_text
from ufm.errors import InputError

try:  # POSIX; elsewhere the lock is the holder's record and heartbeat alone
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

CONFIG, RESULTS, HISTORY, MANIFEST = "config.toml", "results.csv", "history.npz", "manifest.json"
CHECKPOINTS, LOCK, SHARDS = "checkpoints", ".lock", "shards"
# The lock's holder rewrites its heartbeat this often; a holder on another host silent for
# STALE_SECONDS is taken to be dead (a shared filesystem that does not pass OS locks between
# hosts). On one host the OS lock alone decides: it ends with its process.
HEARTBEAT_SECONDS, STALE_SECONDS = 30.0, 180.0


class ResultsFolderError(InputError):
    """The output folder holds something that is not this experiment's results."""


class FolderBusy(ResultsFolderError):
    """Another process is writing the folder."""


class DifferentConfiguration(ResultsFolderError):
    """The folder holds another configuration's results (`old_text`: its config.toml); a kind
    that can extend finished results (a grid given new seeds or axis values) may adopt it."""

    def __init__(self, message: str, old_text: str):
        super().__init__(message)
        self.old_text = old_text


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


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(folder: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=folder)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(folder: str | Path | None = None) -> tuple[str | None, bool | None]:
    """(revision, dirty) of the git checkout holding `folder` (default: this package's):
    dirty when a tracked file differs from the revision (untracked files do not count); (None,
    None) outside a checkout (an installed wheel) or without git."""
    folder = Path(__file__).parent if folder is None else Path(folder)
    revision = _git(folder, "rev-parse", "HEAD")
    if not revision:
        return None, None
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    return revision.strip(), None if status is None else bool(status.strip())


def git_revision() -> str | None:
    return git_state()[0]


# Settings that change the numbers a run computes, recorded in every manifest.
NUMERICS_CONFIG = ("jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_rank_promotion",
                   "jax_default_prng_impl", "jax_threefry_partitionable", "jax_platforms")


def numerics() -> dict:
    """What besides the configuration sets a run's numbers: JAX's numerics settings, XLA_FLAGS
    and every JAX_* / XLA_* environment variable."""
    settings = {}
    for name in NUMERICS_CONFIG:
        try:
            value = getattr(jax.config, name)
        except AttributeError:  # a setting this JAX does not have
            continue
        settings[name] = value if isinstance(value, (bool, int, float, str, type(None))) \
            else str(value)
    environment = {k: v for k, v in sorted(os.environ.items())
                   if k.startswith(("JAX_", "XLA_", "TF_CPP_")) or k == "XLA_FLAGS"}
    # ufm's own solves run inside `Problem.x64_scope`: float64 where the problem asks for it and
    # matmuls at "highest" precision whatever the global setting (never TF32).
    return {"jax_config": settings, "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "environment": environment, "ufm_matmul_precision": "highest"}


def installed_packages() -> dict[str, str]:
    """Every installed distribution and its version (what `pip freeze` would list)."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            found.setdefault(name, dist.version)
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def manifest(wall_seconds: float, **extra) -> dict:
    revision, dirty = git_state()
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in ("ufm", "jax", "jaxlib", "optax", "flax", "numpy",
                                                "matplotlib")},
        "devices": [str(d) for d in jax.devices()],
        "backend": jax.default_backend(),
        "wall_seconds": wall_seconds,
        "git_revision": revision,
        "git_dirty": dirty,
        "numerics": numerics(),
        "command": sys.argv,
        "installed": installed_packages(),
        **extra,
    }


def write_results(out: str | Path, config_text: str, rows: list[dict], histories: list[dict] | None,
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


def read_table(path: str | Path) -> dict:
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


def load_results(directory: str | Path) -> tuple[dict, dict]:
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
    rows = len(table["row"]) if "row" in table else None
    try:
        import pandas
    except ImportError:
        pass
    else:
        table = pandas.DataFrame({name: _typed(pandas, name, column)
                                  for name, column in table.items()})
    history = read_history(directory / HISTORY, rows) if (directory / HISTORY).is_file() else {}
    return table, history


def read_history(path: str | Path, rows: int | None = None) -> dict:
    """history.npz as {key: array}; ResultsFolderError naming the file when it is damaged (cut
    short, not an archive, arrays of other lengths than the table's `rows`)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            history = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise ResultsFolderError(f"{path} is missing; rerun the experiment into its folder "
                                 "(finished units are read back, not recomputed)") from None
    except Exception as err:  # noqa: BLE001 (zipfile, numpy and OS errors alike)
        raise ResultsFolderError(f"{path} is damaged ({type(err).__name__}: {err}); rerun the "
                                 "experiment into its folder to write it again (finished units "
                                 "are read back, not recomputed)") from None
    if rows is not None:
        for key, value in history.items():
            if key != "iteration" and (value.ndim != 2 or len(value) != rows):
                raise ResultsFolderError(f"{path}: {key} has shape {value.shape}, not one "
                                         f"trajectory per row of the {rows}-row table; rerun "
                                         "the experiment into its folder to write it again")
    return history


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


def config_digest(config_text: str) -> str:
    """The SHA-256 of a configuration's config.toml: what a checkpoint was computed for."""
    return hashlib.sha256(config_text.encode()).hexdigest()


def pack_unit(tag: str, result: UnitResult, digest: str = "") -> bytes:
    """A unit's result as the bytes of an uncompressed numpy archive (no pickle): its tag, the
    digest of the configuration it was computed for (`config_digest`) and its rows as JSON,
    histories as h/<i>/<key>, arrays as a/<file>/<key>. The same bytes travel between
    processes and are the checkpoint file."""
    arrays = {"unit": np.frombuffer(json.dumps(
        {"tag": tag, "config": digest, "rows": result.rows, "histories": len(result.histories)},
        default=_json_default).encode(), np.uint8)}
    for i, history in enumerate(result.histories):
        arrays.update({f"h/{i}/{k}": np.asarray(v) for k, v in history.items()})
    for name, content in result.arrays.items():
        arrays.update({f"a/{name}/{k}": np.asarray(v) for k, v in content.items()})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack_unit(blob: bytes, digest: str | None = None) -> tuple[str, UnitResult]:
    """(tag, result) of `pack_unit`'s bytes; raises ValueError (or the archive's error) when the
    bytes are damaged, or when `digest` is given and the unit was computed for another
    configuration. List cells come back as tuples."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        files = {k: data[k] for k in data.files}
    head = json.loads(files.pop("unit").tobytes().decode())
    if digest is not None and head.get("config") != digest:
        found = head.get("config") or "none"
        raise ValueError(f"it was computed for another configuration (digest {found[:12]}, "
                         f"this one {digest[:12]})")
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


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class FolderLock:
    """The one-writer lock of a results folder: `DIR/.lock`, held with an OS lock (flock) for
    the whole run and holding the holder's record (host, pid, command, start, heartbeat) as
    JSON, so a refusal can name it.

    A second writer refuses in one line naming the holder. A dead holder's lock is taken over:
    on one host the OS releases a lock with its process (and a record naming a dead pid is
    stale); on a shared filesystem that does not pass OS locks between hosts, a holder on
    another host is dead once its heartbeat (rewritten every HEARTBEAT_SECONDS by a thread) is
    STALE_SECONDS old. The file is never removed (removing a locked file lets two processes
    lock two different files); a released lock's record says so."""

    def __init__(self, folder):
        self.path = Path(folder) / LOCK
        self._fd = None
        self._record: dict = {}
        self._stop = threading.Event()
        self._thread = None

    def _read(self) -> dict:
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return {}
        return record if isinstance(record, dict) else {}

    @staticmethod
    def describe(record: dict) -> str:
        if not record.get("pid"):
            return "another process"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("started", 0)))
        command = f" ({record['command']})" if record.get("command") else ""
        return (f"process {record['pid']} on host {record.get('host', '?')}, "
                f"started {when}{command}")

    def _write(self) -> None:
        self._record["heartbeat"] = time.time()
        data = json.dumps(self._record).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def acquire(self) -> None:
        """Take the lock or raise FolderBusy naming its holder; a stale lock is taken over
        with a warning naming the dead holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        os_locked = False
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    os_locked = True
                except BlockingIOError:
                    raise FolderBusy(f"{self.path.parent} is being written by "
                                     f"{self.describe(self._read())}; wait for it to finish, "
                                     "or choose another --out") from None
                except OSError as err:  # a filesystem without OS locks: the record decides
                    if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                        raise
            held = self._read()
            if held.get("state") == "running" and held.get("pid"):
                self._check_holder(held, os_locked)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._record = {"state": "running", "host": socket.gethostname(), "pid": os.getpid(),
                        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
                        if sys.argv and sys.argv[0] else "",
                        "started": time.time()}
        self._write()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="ufm-lock")
        self._thread.start()

    def _check_holder(self, held: dict, os_locked: bool) -> None:
        """The record names a running holder although the OS lock was free: refuse while it
        may be alive, or warn and take over. On this host a free OS lock proves the holder
        ended (its pid may since name another process)."""
        if held.get("host") == socket.gethostname():
            if not os_locked and held["pid"] != os.getpid() and _alive(int(held["pid"])):
                raise FolderBusy(f"{self.path.parent} is being written by "
                                 f"{self.describe(held)} (this filesystem does not pass OS "
                                 "locks); wait for it to finish, or choose another --out")
            why = "it has ended"
        else:
            silent = time.time() - float(held.get("heartbeat", 0))
            if silent < STALE_SECONDS:
                raise FolderBusy(
                    f"{self.path.parent} is being written by {self.describe(held)}, alive "
                    f"{silent:.0f} s ago; wait for it to finish, or choose another --out (a "
                    f"holder silent for {STALE_SECONDS:.0f} s is taken to be dead and its lock "
                    "taken over)")
            why = f"silent for {silent:.0f} s"
        warnings.warn(f"{self.path}: a stale lock of {self.describe(held)} taken over ({why})",
                      stacklevel=3)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._write()
            except OSError:  # a full disk: the OS lock still holds; the next beat retries
                pass

    def release(self) -> None:
        if self._fd is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._record["state"] = "released"
            self._write()
        except OSError:
            pass
        finally:
            os.close(self._fd)  # releases the OS lock
            self._fd = None


def _valid_unit(path: Path, digest: str) -> bool:
    """Whether `path` holds a whole finished unit of the configuration with `digest`, under its
    own tag."""
    if not path.is_file():
        return False
    try:
        tag, _ = unpack_unit(path.read_bytes(), digest)
    except Exception:  # noqa: BLE001
        return False
    return tag == path.stem


def _read_json(path: Path, shape=None) -> Any:
    """A small JSON file, or None when missing or damaged (with a warning)."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
        wrong = shape(value) if shape is not None else None
        if wrong:
            raise ValueError(wrong)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        warnings.warn(f"{path}: damaged ({err}); made again", stacklevel=3)
        return None
    return value


class ResultsFolder:
    """A results folder being written by a run (see the module docstring). Only the writing
    process (process 0 of a multi-process run) makes one.

    `check(text)` raises ValueError when a config.toml's text is not a whole configuration (the
    kind's schema decides; by default: UTF-8 TOML ending in a newline)."""

    def __init__(self, path, config_text: str, check=None):
        self.path = Path(path)
        self.config_text = config_text
        self.checkpoints = self.path / CHECKPOINTS
        self.check = check
        self.lock = FolderLock(self.path)
        self.previous_text = None  # the other configuration found by `claim`
        self.damage = ""  # what claim found damaged on the way ("config.toml is damaged ...")

    @property
    def digest(self) -> str:
        return config_digest(self.config_text)

    def _whole(self, path: Path) -> tuple[str | None, str | None]:
        """(text, None) of a whole config file, (None, why) of a damaged one, (None, None) of
        a missing one."""
        if not path.is_file():
            return None, None
        try:
            text = path.read_bytes().decode()
            tomllib.loads(text)
            if not text.endswith("\n"):
                raise ValueError("it ends in the middle of a line")
            if self.check is not None:
                self.check(text)
        except (UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError, InputError) as err:
            return None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        return text, None

    def _own_checkpoint(self) -> Path | None:
        """A checkpoint computed for this configuration, if the folder holds one."""
        for path in sorted(self.checkpoints.glob("*.npz")):
            try:
                unpack_unit(path.read_bytes(), self.digest)
                return path
            except Exception:  # noqa: BLE001 (a damaged or foreign file proves nothing)
                continue
        return None

    def _holds_files(self) -> bool:
        """Whether the folder holds anything besides its lock and its shards' folders."""
        return self.path.is_dir() and any(p.name not in (LOCK, SHARDS)
                                          for p in self.path.iterdir())

    def open(self) -> None:
        """Lock the folder (one writer at a time: `FolderLock`), then claim it."""
        if self.path.exists() and not self.path.is_dir():
            raise ResultsFolderError(f"{self.path} is a file, not a folder; choose another --out")
        if not (self.path / CONFIG).exists() and not self.checkpoints.is_dir() and \
                self._holds_files():
            raise ResultsFolderError(f"{self.path} is not empty and is not a ufm results folder "
                                     f"({CONFIG} is missing); choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            self.claim()
        except BaseException:
            self.lock.release()
            raise

    def close(self) -> None:
        self.lock.release()

    def claim(self) -> None:
        """Make the folder this configuration's, or raise: DifferentConfiguration when it
        holds another configuration's results, ResultsFolderError when it is not a results
        folder or its configuration is damaged beyond repair. config.toml is written first
        (and its copy checkpoints/config.toml), so an interrupted run is recognised and
        resumed; a damaged or missing config.toml is restored from the copy, or from the
        checkpoints' digests, when they show it was this configuration. Call with the lock
        held (`open`): that makes the check-then-write atomic."""
        main_path, copy_path = self.path / CONFIG, self.checkpoints / CONFIG
        text, damage = self._whole(main_path)
        if text == self.config_text:
            self._write_config(copy_only=True)
            return
        if text is not None:
            self._different(text, "")
        copy, _ = self._whole(copy_path)
        state = f"{CONFIG} is damaged ({damage})" if damage else f"{CONFIG} is missing"
        if copy == self.config_text or (copy is None and self._own_checkpoint() is not None):
            if damage or self._holds_files():
                source = copy_path if copy is not None else "the digests of its checkpoints"
                warnings.warn(f"{self.path}: {state}; restored from {source}, and the run "
                              "resumes", stacklevel=2)
            self._write_config()
            return
        if copy is not None:
            self._different(copy, f"{state}; its copy {copy_path} says it ")
        if damage is None and not self._holds_files():
            self._write_config()  # a new folder
            return
        raise ResultsFolderError(
            f"{self.path}: {state}, and nothing in the folder shows that it held this "
            f"configuration (no copy in {copy_path}, no checkpoint with this configuration's "
            "digest); resume with the experiment that made it, or choose another --out")

    def _different(self, old: str, prefix: str):
        self.previous_text, self.damage = old, prefix
        diff = next((f"{a!r} != {b!r}" for a, b in zip(old.splitlines(),
                                                         self.config_text.splitlines())
                     if a != b), "different length")
        raise DifferentConfiguration(
            f"{self.path}: {prefix}{'holds' if not prefix else 'held'} results of a different "
            f"configuration (first difference: {diff}); choose another --out or remove the "
            "folder", old)

    def _write_config(self, copy_only: bool = False) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        if not copy_only:
            write_text(self.path / CONFIG, self.config_text)
        copy = self.checkpoints / CONFIG
        if not copy.is_file() or copy.read_bytes() != self.config_text.encode():
            write_text(copy, self.config_text)

    def adopt(self) -> None:
        """Make this configuration the folder's (after its finished results were carried over
        to it: `ufm.running.experiment.run`)."""
        self._write_config()

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

    def load_unit(self, tag: str, expected_rows: int | None = None) -> UnitResult | None:
        """A finished unit's result, or None when it has not finished. A damaged checkpoint (cut
        short, unreadable, another unit's, other rows than expected) is named in a warning and
        left in place to be overwritten when its unit has been recomputed."""
        path = self.unit_path(tag)
        if not path.is_file():
            return None
        try:
            found, result = unpack_unit(path.read_bytes(), self.digest)
            if found != tag:
                raise ValueError(f"it holds unit {found!r}")
            if expected_rows is not None and [r["row"] for r in result.rows] != list(expected_rows):
                raise ValueError("its rows are not this unit's")
        except Exception as err:  # noqa: BLE001 (any damage means: recompute)
            warnings.warn(f"{path}: damaged checkpoint ({type(err).__name__}: {err}); its unit is "
                          "recomputed", stacklevel=2)
            return None
        return result

    def read_json(self, name: str, shape: type | None = None) -> Any:
        """A small JSON file of the run (e.g. a grid's plan) from checkpoints/, or None when
        missing or damaged (with a warning); `shape(value)` returns what is wrong with a parsed
        value of the wrong shape (or None when it is right)."""
        return _read_json(self.checkpoints / name, shape)

    def write_json(self, name: str, value: Any) -> Any:
        """Keep `value` as checkpoints/NAME; returns the value kept (a shard's folder may keep
        another shard's: `ShardFolder.write_json`)."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        write_text(self.checkpoints / name, json.dumps(value))
        return value

    def import_shards(self) -> int:
        """Take in what the shards of a job array left for this configuration
        (DIR/shards/ID/): their shared plan where the folder has none, and every finished
        unit the folder lacks (each checked against this configuration's digest). Returns how
        many units came in; the shards' files stay where they are."""
        area = self.path / SHARDS / self.config_id
        if not area.is_dir():
            return 0
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        for shared in sorted(area.glob("*.json")):
            if not (self.checkpoints / shared.name).is_file():
                write_text(self.checkpoints / shared.name, shared.read_text())
        taken = 0
        for path in sorted(area.glob(f"*/{CHECKPOINTS}/*.npz")):
            if _valid_unit(self.unit_path(path.stem), self.digest):
                continue
            blob = path.read_bytes()
            try:
                tag, _ = unpack_unit(blob, self.digest)
            except Exception:  # noqa: BLE001 (damaged or another configuration's: not taken)
                continue
            if tag == path.stem:
                replace_atomically(self.unit_path(tag), lambda tmp, b=blob: tmp.write_bytes(b))
                taken += 1
        return taken


    def write_rows(self, rows: list[dict]) -> None:
        """results.csv with the rows finished so far (replaced whole, atomically)."""
        if rows:
            write_table(self.path / RESULTS, rows)


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" (shard I of N, 0 <= I < N) as (I, N); InputError naming what is allowed."""
    index, slash, count = str(text).partition("/")
    if slash and index.strip().isdigit() and count.strip().isdigit():
        i, n = int(index), int(count)
        if 0 <= i < n:
            return i, n
    raise InputError(f"--shard {text!r} is not allowed: I/N with integers 0 <= I < N (shard I "
                     "of N, e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")


class ShardFolder(ResultsFolder):
    """Shard I of N of a job array writing into the shared results folder OUT: independent
    processes, no coordinator. Its own folder OUT/shards/ID/I-of-N/ (its own lock, config.toml
    and checkpoints, so shards never write the same file and two copies of one shard refuse
    each other); the plan every shard must cut the work by is shared as OUT/shards/ID/NAME,
    created once (the first shard's; the others read it); a unit already finished in OUT itself
    counts as done. OUT's own files are written by whoever assembles the table
    (`ResultsFolder.import_shards`, under OUT's lock)."""

    def __init__(self, out, config_text: str, index: int, count: int, check=None):
        self.main = ResultsFolder(out, config_text, check)
        self.area = Path(out) / SHARDS / self.main.config_id
        super().__init__(self.area / f"{index}-of-{count}", config_text, check)
        self.index, self.count = index, count

    def open(self) -> None:
        main = self.main.path
        if main.exists() and not main.is_dir():
            raise ResultsFolderError(f"{main} is a file, not a folder; choose another --out")
        if main.is_dir() and not (main / CONFIG).exists() and not self.main.checkpoints.is_dir() \
                and self.main._holds_files():
            raise ResultsFolderError(f"{main} is not empty and is not a ufm results folder "
                                     f"({CONFIG} is missing); choose another --out")
        text, _ = self.main._whole(main / CONFIG)
        if text is not None and text != self.config_text:
            self.main._different(text, "")
        super().open()

    def _main_holds_this(self) -> bool:
        return self.main._whole(self.main.path / CONFIG)[0] == self.config_text

    def read_json(self, name: str, shape: type | None = None) -> Any:
        """OUT's own file where OUT holds this configuration (a plan made before the shards
        came), else the shards' shared one."""
        if self._main_holds_this():
            value = self.main.read_json(name, shape)
            if value is not None:
                return value
        return _read_json(self.area / name, shape)

    def write_json(self, name: str, value: Any) -> Any:
        """Share `value` as OUT/shards/ID/NAME unless a shard did first; returns the value the
        shards share (the first one's: every shard must cut the work the same way)."""
        self.area.mkdir(parents=True, exist_ok=True)
        target = self.area / name
        tmp = self.area / f".{name}.{os.getpid()}.{socket.gethostname()}.tmp"
        tmp.write_text(json.dumps(value))
        try:
            os.link(tmp, target)  # atomic and exclusive: the first shard's file stays
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: the last writer's (same plan)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        kept = _read_json(target)
        return value if kept is None else kept

    def load_unit(self, tag: str, expected_rows: Sequence[int] | None = None
                  ) -> UnitResult | None:
        """This shard's checkpoint of the unit, else OUT's (a unit finished before sharding)."""
        found = super().load_unit(tag, expected_rows)
        if found is None and self._main_holds_this() and self.main.unit_path(tag).is_file():
            found = self.main.load_unit(tag, expected_rows)
        return found

    def landed(self, tag: str) -> bool:
        """Whether the unit has finished anywhere: OUT or any shard's folder."""
        candidates = [self.main.unit_path(tag)] + sorted(self.area.glob(f"*/{CHECKPOINTS}/"
                                                                        f"{tag}.npz"))
        return any(_valid_unit(path, self.digest) for path in candidates)
