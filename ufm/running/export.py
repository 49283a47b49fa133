"""A results folder's histories in the formats other tools browse: TensorBoard event files
(`ufm export DIR --tensorboard`; view them with `tensorboard --logdir DIR/tensorboard`, from
`pip install "ufm[tensorboard]"`).

One TensorBoard run per row of the table (a configuration and seed; its folder named by the row
and the configuration values that vary), one scalar per logged metric at every logged step
(NaN padding after an early stop left out). The files are written here, without TensorFlow:
TFRecord framing (length, masked CRC-32C of the length, an `Event` protocol buffer, masked
CRC-32C of the data) with the fields TensorBoard reads (wall_time, step, file_version, summary
values of tag and simple_value), as tensorboard/compat/proto/event.proto defines them;
simple_value is float32, so a float64 value beyond its range is written as +-inf.
"""
from __future__ import annotations

import re
import socket
import struct
import time
from pathlib import Path

import numpy as np

from ufm._atomic import replace_atomically
from ufm.errors import InputError
from ufm.running import results
from ufm.running.tables import series_labels


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli, reflected
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord files."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 as protobuf writes it
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


def event(wall_time: float, step: int, *, file_version: str | None = None,
          scalars: dict[str, float] | None = None) -> bytes:
    """An `Event` message: wall_time (1, double), step (2, int64), file_version (3, string) or
    summary (5) of values with tag (1, string) and simple_value (2, float)."""
    out = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(int(step)))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        with np.errstate(over="ignore"):  # beyond float32's range (a diverging run): +-inf
            as_float32 = {tag: float(np.float32(value)) for tag, value in scalars.items()}
        values = b"".join(_bytes_field(1, _bytes_field(1, tag.encode())
                                       + _field(2, 5, struct.pack("<f", value)))
                          for tag, value in as_float32.items())
        out += _bytes_field(5, values)
    return out


def record(data: bytes) -> bytes:
    """One TFRecord: the length, its masked CRC, the data, its masked CRC."""
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", _masked(crc32c(length))) + data
            + struct.pack("<I", _masked(crc32c(data))))


def _run_name(row: int, label: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", label.replace(", ", ",")).strip("_")
    return f"row{row:04d}" + (f"_{safe[:120]}" if safe and safe != "run" else "")


def tensorboard(directory: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write TensorBoard event files of every logged metric of the results folder `directory`
    into `out` (default DIR/tensorboard/), one run per row; returns the files written."""
    directory = Path(directory)
    table_path, history_path = directory / results.RESULTS, directory / results.HISTORY
    if not table_path.is_file():
        raise InputError(f"{directory} is not a results folder ({results.RESULTS} is missing)")
    if not history_path.is_file():
        raise InputError(f"{directory} has no histories ({results.HISTORY}): this kind logs "
                         "no trajectories, only its table")
    table = results.read_table(table_path)
    history = results.read_history(history_path, rows=len(table["row"]))
    steps = np.asarray(history.pop("iteration"))
    labels, _ = series_labels(table)
    if "seed" in table:
        labels = [f"{label}, seed={seed}" if label != "run" else f"seed={seed}"
                  for label, seed in zip(labels, table["seed"])]
    out = directory / "tensorboard" if out is None else Path(out)
    written = []
    now = time.time()
    for i, row in enumerate(table["row"]):
        run = out / _run_name(int(row), labels[i])
        run.mkdir(parents=True, exist_ok=True)
        events = [record(event(now, 0, file_version="brain.Event:2"))]
        for t, step in enumerate(steps):
            scalars = {key: float(values[i, t]) for key, values in history.items()
                       if np.isfinite(values[i, t])}
            if scalars:
                events.append(record(event(now, int(step), scalars=scalars)))
        path = run / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.ufm"
        blob = b"".join(events)
        replace_atomically(path, lambda tmp, blob=blob: tmp.write_bytes(blob))
        for old in run.glob("events.out.tfevents.*.ufm"):  # an earlier export, now replaced
            if old != path:
                old.unlink()
        written.append(path)
    return written
