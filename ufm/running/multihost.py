"""Several hosts: JAX's multi-controller runtime for grids (docs/architecture.md: scaling out).

Every process runs the same program: it builds the same grid, runs its share of the chunks on
its local devices, and the finished chunks are gathered to every process after each round;
process 0 alone writes the results folder. Start it with `ufm run --distributed` (or from
Python, `ufm.running.multihost.initialize()` before anything else touches JAX), on each host:

- SLURM and Cloud TPU pod slices: no arguments; `jax.distributed.initialize()` reads the
  cluster from the environment.
- Anywhere else: `--coordinator HOST:PORT --num-processes N --process-id I`, or the
  environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.

Gathering uses `jax.experimental.multihost_utils` (device collectives; gloo on CPUs), so no
shared filesystem is needed.
"""
from __future__ import annotations

import io as _io
import json
import os
from typing import Any

import jax
import numpy as np

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def requested_by_environment() -> bool:
    """True when the environment names a coordinator (JAX_COORDINATOR_ADDRESS)."""
    return bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """`jax.distributed.initialize` with explicit values, else the JAX_* environment variables,
    else JAX's own cluster detection (SLURM, TPU pod slices, ...). Call once per process,
    before any computation; a second call is a no-op."""
    if getattr(initialize, "_done", False):
        return
    env = os.environ
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = _env_int("JAX_NUM_PROCESSES", minimum=1)
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = _env_int("JAX_PROCESS_ID", minimum=0)
    if coordinator is not None and (num_processes is None or process_id is None):
        raise ValueError(f"coordinator={coordinator!r} needs num_processes and process_id too "
                         "(--num-processes/--process-id or JAX_NUM_PROCESSES/JAX_PROCESS_ID)")
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} is not allowed: 0 <= process_id < "
                         f"num_processes={num_processes}")
    kwargs = {k: v for k, v in (("coordinator_address", coordinator),
                                ("num_processes", num_processes), ("process_id", process_id))
              if v is not None}
    jax.distributed.initialize(**kwargs)
    initialize._done = True


def _env_int(name: str, minimum: int) -> int:
    value = os.environ[name]
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{name}={value!r} is not allowed: an integer >= {minimum}")
    return number


def count() -> int:
    return jax.process_count()


def index() -> int:
    return jax.process_index()


def is_main() -> bool:
    """Process 0: the one that writes files and draws progress."""
    return jax.process_index() == 0


def allgather_bytes(blob: bytes) -> list[bytes]:
    """Every process's `blob`, in process order, on every process."""
    if jax.process_count() == 1:
        return [blob]
    from jax.experimental import multihost_utils

    lengths = np.asarray(multihost_utils.process_allgather(np.array([len(blob)], np.int64)))
    lengths = lengths.reshape(-1)
    buffer = np.zeros(int(lengths.max()) or 1, np.uint8)
    buffer[:len(blob)] = np.frombuffer(blob, np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(buffer)).reshape(len(lengths), -1)
    return [gathered[p, :int(n)].tobytes() for p, n in enumerate(lengths)]


def broadcast_json(value: Any) -> Any:
    """Process 0's JSON-serializable `value`, on every process."""
    if jax.process_count() == 1:
        return value
    blob = json.dumps(value).encode() if is_main() else b""
    return json.loads(allgather_bytes(blob)[0].decode())


def pack_arrays(arrays: dict) -> bytes:
    buffer = _io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack_arrays(blob: bytes) -> dict:
    with np.load(_io.BytesIO(blob), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
