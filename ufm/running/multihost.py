"""Several hosts: JAX's multi-controller runtime for grids (docs/architecture.md: scaling out).

Every process runs the same program: it builds the same grid, runs its share of the chunks on
its local devices, and the finished chunks are gathered to every process after each round;
process 0 alone writes the results folder. Start it with `ufm run --distributed` (or from
Python, `ufm.running.multihost.initialize()` before anything else touches JAX), on each host:

- SLURM and Cloud TPU pod slices: no arguments; `jax.distributed.initialize()` reads the
  cluster from the environment. On SLURM, ufm also passes the local accelerators that match the
  allocation (`slurm_local_device_ids`): JAX alone gives every task the one device numbered by
  its SLURM_LOCALID, so one task per node with 8 GPUs would drive one of them (jax issue
  16788).
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
# What JAX's SLURM detection needs (jax._src.clusters.slurm_cluster), and where SLURM and the
# GPU runtimes say which accelerators a task may use.
SLURM_ENV = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
             "SLURM_LOCALID")
VISIBLE_DEVICES = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
# How this process joined (for the run's first line and the manifest).
_state: dict = {"cluster": None, "local_device_ids": None}


def _tasks_per_node(text: str) -> list[int]:
    """SLURM's compressed tasks-per-node list ("4(x2),2" is 4, 4, 2) as one count per node."""
    counts = []
    for part in text.split(","):
        count, _, repeat = part.partition("(x")
        counts += [int(count)] * (int(repeat.rstrip(")")) if repeat else 1)
    return counts


def slurm_local_device_ids(env: dict | None = None) -> list[int] | None:
    """The local accelerator ids this SLURM task should drive, or None (not SLURM, no GPUs
    known, or a layout this cannot read: JAX's own choice then).

    The GPUs a task sees are CUDA_VISIBLE_DEVICES (ROCR_/HIP_ on AMD), numbered 0.. in that
    order, else SLURM_GPUS_ON_NODE of them. One task on its node, or a task bound to its own
    GPUs (--gpus-per-task, --gpu-bind: it sees fewer than the node's SLURM_GPUS_ON_NODE, or
    SLURM_GPUS_PER_TASK of them): all it sees. Tasks sharing the node's GPUs (one task per GPU
    without binding): an equal share, the SLURM_LOCALID-th."""
    env = os.environ if env is None else env
    if not all(k in env for k in SLURM_ENV):
        return None
    visible = next((env[k] for k in VISIBLE_DEVICES if env.get(k)), None)
    if visible is not None and visible.strip().lower() not in ("", "nodevfiles"):
        n = len([d for d in visible.split(",") if d.strip()])
    elif env.get("SLURM_GPUS_ON_NODE", "").isdigit():
        n = int(env["SLURM_GPUS_ON_NODE"])
    else:
        return None
    if n == 0:
        return None
    try:
        per_node = _tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE")
                                   or env.get("SLURM_TASKS_PER_NODE") or "")
        node = int(env.get("SLURM_NODEID", 0))
        tasks_here = per_node[node] if node < len(per_node) else int(
            env.get("SLURM_NTASKS_PER_NODE", "1"))
        local = int(env["SLURM_LOCALID"])
    except ValueError:
        return None
    on_node = int(env["SLURM_GPUS_ON_NODE"]) if env.get("SLURM_GPUS_ON_NODE", "").isdigit() \
        else None
    per_task = env.get("SLURM_GPUS_PER_TASK", "")
    bound = (per_task.isdigit() and int(per_task) == n) or (on_node is not None and n < on_node)
    if tasks_here <= 1 or bound:
        return list(range(n))
    if n % tasks_here or not 0 <= local < tasks_here:
        return None
    share = n // tasks_here
    return list(range(local * share, (local + 1) * share))


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
    slurm = coordinator is None and all(k in env for k in SLURM_ENV)
    if slurm and not env.get("JAX_LOCAL_DEVICE_IDS"):
        ids = slurm_local_device_ids()
        if ids is not None:
            kwargs["local_device_ids"] = ids
    jax.distributed.initialize(**kwargs)
    _state.update(cluster="slurm" if slurm else "explicit" if coordinator else "detected",
                  local_device_ids=kwargs.get("local_device_ids"))
    initialize._done = True


def joined() -> dict:
    """How this process joined: the cluster ("slurm", "explicit" for a coordinator given,
    "detected" for JAX's own detection; None: one process) and the local device ids passed."""
    return dict(_state)


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
