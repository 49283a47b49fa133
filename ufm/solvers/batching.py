"""The run machinery under every solver call and grid: configurations mapped over a leading
axis (vmap, or lax.map over vmapped slices), padding to whole slices, sharding over local
devices, the host loop's chunking, the sizes of slices and compiled calls from the problem and
the device, and progress bars. Nothing here knows a solver's step or state
(`ufm.solvers.reference`, `loop`).
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ufm.model.problem import Problem, check_memory


def over_batch(fn: Callable, in_axes: tuple, width: int | None) -> Callable:
    """`fn` over a leading configuration axis: one vmap over all of it (`width` None), or
    `lax.map` over slices of `width` configurations, each slice vmapped (width > 1) or run
    unbatched (width 1). On a CPU a vmapped matmul with a batch dimension of large operands runs
    several times slower than the unbatched one (measured: 19.5 vs 3.8 ms per GD step at
    (K, d, n) = (10, 512, 500)), so large problems go one at a time inside ONE compiled call.
    The batch must be a multiple of `width` (callers pad)."""
    if width is None:
        return jax.vmap(fn, in_axes=in_axes)
    inner = fn if width == 1 else jax.vmap(fn, in_axes=in_axes)

    def mapped(*args):
        batched = [a for a, ax in zip(args, in_axes) if ax is not None]
        batch = jax.tree.leaves(batched)[0].shape[0]
        split = (lambda x: x) if width == 1 else (
            lambda x: x.reshape((batch // width, width) + x.shape[1:]))

        def one(sliced):
            it = iter(sliced)
            return inner(*(next(it) if ax is not None else a for a, ax in zip(args, in_axes)))

        out = jax.lax.map(one, jax.tree.map(split, batched))
        merge = (lambda x: x) if width == 1 else (lambda x: x.reshape((batch,) + x.shape[2:]))
        return jax.tree.map(merge, out)

    return mapped


def chunking(num_logs: int, target_chunks: int = 10,
             max_per_chunk: int | None = None) -> tuple[int, int]:
    """(logs per chunk, chunks): about `target_chunks` equal chunks with the least overshoot,
    at most `max_per_chunk` logs each."""
    best = None
    for n_chunks in range(max(1, math.ceil(0.7 * target_chunks)), target_chunks + 4):
        per = math.ceil(num_logs / n_chunks)
        if max_per_chunk is not None:
            per = max(1, min(per, max_per_chunk))
        chunks = math.ceil(num_logs / per)
        waste = per * chunks - num_logs
        if best is None or waste < best[0]:
            best = (waste, per, chunks)
    return best[1], best[2]


def map_points(fn: Callable, xs: Any, width: int) -> Any:
    """`fn` over the leading axis of the pytree `xs` (P points), `width` points vmapped at a
    time (`lax.map` over groups; padded with copies of the last point to whole groups, which
    are dropped again): the working set of one group, not of all P, is live at once."""
    n = jax.tree.leaves(xs)[0].shape[0]
    width = max(1, min(width, n))
    if width == n:
        return jax.vmap(fn)(xs)
    groups = -(-n // width)
    pad = groups * width - n

    def grouped(x):
        if pad:
            x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)])
        return x.reshape((groups, width) + x.shape[1:])

    out = jax.lax.map(jax.vmap(fn), jax.tree.map(grouped, xs))
    return jax.tree.map(lambda y: y.reshape((groups * width,) + y.shape[2:])[:n], out)


def pad_batch(tree: Any, batch: int, multiple: int) -> Any:
    """Pad the leading (configuration) axis to a multiple of `multiple` by repeating the last
    configuration; callers drop the copies."""
    padded = -(-batch // multiple) * multiple
    if padded == batch:
        return tree
    return jax.tree.map(
        lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], padded - batch, axis=0)]), tree)


def _grid_mesh():
    """A 1-D mesh "grid" over this process's devices (with several hosts each process shards
    its own chunk)."""
    return jax.make_mesh((jax.local_device_count(),), ("grid",),
                         (jax.sharding.AxisType.Auto,), devices=jax.local_devices())


def over_devices(fn: Callable, in_axes: tuple) -> Callable:
    """`fn` over a leading configuration axis sharded over the local devices, each device
    running `fn` on its own shard (`jax.shard_map`): a vmapped run loop whose test is batched
    ends on each device when that device's runs have ended, and the devices never wait for
    each other (no collective inside the loop; under automatic partitioning its test was an
    all-reduce at every turn). Arguments with axis None are replicated. One device: `fn`."""
    if jax.local_device_count() == 1:
        return fn
    spec = jax.sharding.PartitionSpec
    in_specs = tuple(spec() if ax is None else spec("grid") for ax in in_axes)
    return jax.shard_map(fn, mesh=_grid_mesh(), in_specs=in_specs, out_specs=spec("grid"),
                         check_vma=False)


def over_configurations(fn: Callable, in_axes: tuple, width: int | None) -> Callable:
    """`fn` over a leading configuration axis as every batched program runs: sharded over the
    local devices (`over_devices`), each device's share in slices of `width` (`over_batch`)."""
    return over_devices(over_batch(fn, in_axes, width), in_axes)


def shard_over_devices(tree: Any) -> Any:
    """Shard the leading (configuration) axis, already a multiple of the local device count,
    over a 1-D mesh "grid" (docs/architecture.md: scaling out). One device: unchanged."""
    n_dev = jax.local_device_count()
    if n_dev == 1:
        return tree
    sharding = jax.sharding.NamedSharding(_grid_mesh(), jax.sharding.PartitionSpec("grid"))
    return jax.device_put(tree, sharding)


# Devices the `ufm` command splits a CPU into at most (`use_host_devices`): measured only on a
# 2-core machine, where two devices ran 2.6x the configuration-steps of one at (K, d, n) =
# (10, 64, 100), one configuration at a time on each (benchmarks/RESULTS.md); the cap is a
# guess, not measured on larger machines.
MAX_HOST_DEVICES = 8


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def use_host_devices(count: int | None = None) -> int | None:
    """Split the CPU into `count` JAX devices (default: the usable cores, at most
    MAX_HOST_DEVICES) so that batches are sharded over them, each device running its share
    (`over_devices`). On one device a small problem's vmapped step leaves cores idle (XLA
    parallelizes inside an operation, and at (10, 64, 100) there is too little work in one:
    1.5 of 2 cores busy), while two devices run two shares at once. Returns the count set, or
    None where the choice is not ufm's to make: JAX has already started its backends, or the
    count is already set (`jax_num_cpu_devices`, or --xla_force_host_platform_device_count in
    XLA_FLAGS). An accelerator's devices are not affected."""
    if count is None:
        count = min(usable_cores(), MAX_HOST_DEVICES)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"host devices={count!r} is not allowed: an integer >= 1")
    if ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
            or jax.config.jax_num_cpu_devices > 0):
        return None
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # "should be updated before backends are initialized"
        return None
    return count


def notice(message: str) -> None:
    """Tell the user that a setting was adjusted (one line on stderr, process 0 only)."""
    if jax.process_index() == 0:
        print(f"ufm: {message}", file=sys.stderr)


# A progress bar written to a file or a CI log prints a line at most this often.
LOG_SECONDS = 10.0


class _Lines:
    """A stream for tqdm that is not a terminal: each refresh becomes one line (no carriage
    returns)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self):
        self.stream.flush()


def progress_bar(progress: bool | Any | None, total: int, desc: str) -> Any:
    """A tqdm bar on stderr, or None. `progress` None: a bar on a terminal, none elsewhere;
    True: a bar, which off a terminal prints one line every LOG_SECONDS."""
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit="step", unit_scale=True, leave=False)
    return tqdm(total=total, desc=desc, unit="step", unit_scale=True, file=_Lines(sys.stderr),
                mininterval=LOG_SECONDS, maxinterval=LOG_SECONDS, ascii=True, leave=True)


# ---------------------------------------------------------------- sizes of slices and calls

# Working set of one vmapped slice on a CPU device: about one core's L2 cache. Measured on the
# 2-core development machine (Zen 4, 1 MB L2 a core) split into two host devices, 64
# configurations, GD, configuration-steps/s for slices of 1/2/4/8/16 (benchmarks/RESULTS.md):
# (K, d, n) = (4, 8, 10), 0.01 MB a configuration: 0.53/0.81/1.11/1.39/1.48 M;
# (10, 32, 50), 0.31 MB: 73/82/83/71/55 k; (10, 64, 100), 1.1 MB: 23.1/21.0/14.6/12.4/13.1 k;
# (10, 128, 200), 4.2 MB: 4.4/3.4/3.2/2.8/2.0 k. On one device (10, 64, 100) also ran fastest
# one at a time (9.3 k against 7.2 k in slices of 8). Larger slices leave the cache; smaller
# ones pay each operation's fixed cost once per configuration.
CPU_BATCH_BYTES = 2**20
# Working set of the log points whose metrics are computed at once on a CPU (`points_width`).
CPU_RECORDS_BYTES = 10 * 2**20
# Share of memory one compiled call may fill with configurations' state: host memory on a CPU,
# device memory on an accelerator (the rest is for XLA's temporaries and the histories).
HOST_MEMORY_FRACTION = 0.25
ACCELERATOR_MEMORY_FRACTION = 0.5
# Share of that memory the log points one call hands back may fill (their metrics are computed
# after the call, all points of a call at once where they fit: `logs_per_call`).
TRACE_MEMORY_FRACTION = 0.25
# Log points one compiled call keeps at least, where the run has them: every call costs the host
# a round trip and its records a dispatch. Measured on 2 host devices, (10, 64, 100), 16
# configurations, 400 steps logged every 100: 11% slower than ends-only in 5 calls, 5% in 1.
MIN_POINTS_PER_CALL = 8
# Configurations per compiled call at most, whatever the memory: one chunk is also one
# checkpoint, so this bounds the work an interruption can lose.
MAX_CHUNK = 4096


def config_bytes(problem: Problem) -> int:
    """Approximate bytes one configuration touches per step: W, H, b with their gradients and
    two optimizer moments, plus the logits, probabilities and dL/dZ (K x N each)."""
    K, d, N = problem.num_classes, problem.feature_dim, problem.num_samples
    itemsize = 8 if problem.dtype == "float64" else 4
    return itemsize * (4 * (K * d + d * N + K) + 3 * K * N)


def accelerator(device: jax.Device) -> bool:
    return device.platform != "cpu"


def _memory_bytes(device=None) -> float:
    """Memory one compiled call may use on `device` (default: the host; see the fractions)."""
    if device is not None and accelerator(device):
        stats = device.memory_stats() or {}
        return ACCELERATOR_MEMORY_FRACTION * stats.get("bytes_limit", 8 * 2**30)
    try:
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        host = 8 * 2**30
    return HOST_MEMORY_FRACTION * host


def point_bytes(problem: Problem) -> int:
    """Bytes of one logged point (W, H, b; the optimizer's variables)."""
    K, d, N = problem.num_classes, problem.feature_dim, problem.num_samples
    itemsize = 8 if problem.dtype == "float64" else 4
    layers = (problem.depth - 1) * d * d
    return itemsize * (K * d + d * N + K + layers)


def check_in_flight(problem: Problem, width: int, n_configs: int, fix: str) -> None:
    """Refuse, before anything compiles, a batch whose configurations computed at the same time
    on a CPU (`width` per vmapped slice on each local device with a share of the `n_configs`)
    need more than the available memory together (`Problem.working_set` each;
    `ufm.model.problem.check_memory`). On an accelerator `chunk_size` and `batch_width` already size
    the batch to the device's memory."""
    if accelerator(jax.local_devices()[0]):
        return
    width = max(1, min(width, n_configs))
    devices = min(jax.local_device_count(), -(-n_configs // width))
    at_once = width * devices
    if at_once > 1:
        check_memory(at_once * problem.working_set(),
                     f"{at_once} configurations at once ({width} per vmapped slice on each of "
                     f"{devices} devices; num_classes={problem.num_classes}, "
                     f"feature_dim={problem.feature_dim}, N={problem.num_samples})", fix)


def logs_per_call(problem: Problem, n_points: int, n_configs: int) -> tuple[int, int]:
    """(log points per compiled call, calls) for a run of `n_points` log points over
    `n_configs` configurations: about ten calls (a progress bar advances, a finished batch stops
    early) of at least MIN_POINTS_PER_CALL points (fewer calls for a short run), and the points
    one call hands back (`n_configs` x points x `point_bytes`) within TRACE_MEMORY_FRACTION of
    the memory the call may use."""
    device = jax.local_devices()[0]
    budget = TRACE_MEMORY_FRACTION * _memory_bytes(device) * jax.local_device_count()
    cap = max(1, int(budget // (max(1, n_configs) * point_bytes(problem))))
    calls = min(10, -(-n_points // MIN_POINTS_PER_CALL))
    return chunking(n_points, target_chunks=calls, max_per_chunk=cap)


def points_width(problem: Problem, configs_at_once: int, n_points: int) -> int:
    """Log points whose metrics are computed at once (vmapped) for each of `configs_at_once`
    configurations: on a CPU within the cache-sized CPU_RECORDS_BYTES, on an accelerator within
    the memory one call may use (each point needs about `config_bytes` of temporaries)."""
    device = jax.local_devices()[0]
    budget = _memory_bytes(device) if accelerator(device) else CPU_RECORDS_BYTES
    fits = int(budget // (max(1, configs_at_once) * config_bytes(problem)))
    return max(1, min(n_points, fits))


def batch_width(problem: Problem, n_configs: int) -> int:
    """Configurations per vmapped slice on each local device (each device runs its share of a
    batch, `over_devices`). CPU: as many as fit the cache-sized working-set budget (1 for
    large problems: one at a time, the fast way there); accelerator: the device's whole share
    of the chunk (vmap fills the device)."""
    device = jax.local_devices()[0]
    n_dev = jax.local_device_count()
    if accelerator(device):
        return -(-chunk_size(problem, n_configs) // n_dev)
    share = -(-n_configs // n_dev)
    widest = max(1, min(share, int(CPU_BATCH_BYTES // config_bytes(problem))))
    return -(-share // -(-share // widest))  # equal slices: the least padding


def chunk_size(problem: Problem, n_configs: int, width: int = 1) -> int:
    """Configurations per compiled call (and per checkpoint): as many as fit the memory of the
    local devices, at most MAX_CHUNK, a multiple of `width` times the local device count (whole
    slices on every device); a grid larger than memory runs as several chunks."""
    device = jax.local_devices()[0]
    unit = width * jax.local_device_count()
    fits = int(_memory_bytes(device) * jax.local_device_count() // config_bytes(problem))
    fits = max(unit, min(fits, MAX_CHUNK) // unit * unit)
    n_chunks = -(-n_configs // fits)
    per_chunk = -(-n_configs // n_chunks)  # equal chunks: the least padding
    return -(-per_chunk // unit) * unit
