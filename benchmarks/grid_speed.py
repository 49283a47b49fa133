"""Grid speed: ufm's grid runner against the peers a skilled user would write, and against the
hardware floor, side by side in one process.

Arms (float32, CE with bias, plain gradient descent, the same sizes and learning rate; the
arms alternate within each repetition and the median of `--reps` repetitions is reported;
compilation and warm-up are excluded):

  ufm            the grid runner's way: `solve_batch` in chunks of `runner.chunk_size`
                 configurations, vmapped slices of `runner.batch_width` (the fast path)
  ufm-ref        the same on the reference path (`fast=False`: autodiff, every step checked),
                 what ufm ran before the fast path (`--reference`)
  ufm-pallas     the same with plain steps through the one-pass Pallas kernel
                 (`kernel="pallas"`, `ufm.solvers.kernels`; GPUs only)
  torch-loop     PyTorch, one configuration after another, autograd, torch.optim.SGD (timed on
                 up to 4 configurations: its rate does not depend on how many follow)
  torch-bmm      PyTorch, every configuration batched along a leading axis (`baddbmm`, one
                 cross entropy over the batch), autograd, one SGD over the stacked tensors
  torch-compile  torch-bmm with its loss under `torch.compile` (inductor: C++ on a CPU, Triton
                 on a GPU)
  jax-hand       the 15 lines of JAX a user would write instead of ufm:
                 `jit(vmap(lambda p, lam: fori_loop(0, steps, gd_step, p)))`, `jax.grad` of
                 optax's integer-label cross entropy plus the penalties, every configuration
                 in one vmap
  jax-hand-mom   the same with `optax.sgd(lr, momentum=0.9)` updates (momentum's peer; not
                 compared with ufm's GD rate)

On a CPU the process is split into host devices as `ufm run` splits it
(`runner.use_host_devices`: the usable cores, at most 8; `--host-devices 1` for one device):
the runner shards its batch over them, while jax-hand is the user's loop as written, unsharded
(it runs on the first device; splitting the CPU does not change its rate, measured on 2 cores).

ufm is timed twice: `ufm` with the runner's default logging (every NC metric of every
configuration every 100 steps and at the start), and `ufm-ends` with metrics at the start and
the end only (`log_every = steps`), the same work as the peers. The fixed cost of one
`solve_batch` call (start, records, host copies) is reported on its own: the difference of
two ends-only runs of `steps` and `steps // 10` steps gives the per-step time; the rest is
fixed.

The roofline, per configuration-step: FLOPs 6 K d N (Z = W H, G H^T and W^T G; the elementwise
work is O(K N)); bytes 2 d N x 4 (one read and one write of H: the floor of a one-pass step,
where the update of column i needs only W, b and column i's logits, and dW accumulates in the
same sweep). The machine's rates are measured here, on every device at once (a split CPU's
floor is the whole machine's): copy bandwidth as a jitted read-and-write
loop over an array the size of one vmapped slice's H (the working set the runner keeps hot), and
the matmul rate as the three matmuls of a step timed alone at these shapes (the better of
batched and one at a time). "of floor" is the binding floor's time over ufm's time.

    pip install -e ".[bench]"      # torch 2.13.0; the CPU build on a CPU machine (pyproject.toml)
    python benchmarks/grid_speed.py [--quick] [--reference] [--grids 16 64] [--sizes 0 1 2]
    python benchmarks/grid_speed.py --sphere     # the sphere geometry: fast path vs reference

Without torch the PyTorch arms are skipped with a message.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

# JAX and PyTorch share the accelerator in this process: JAX must not take 75% of its memory
# up front (the PyTorch arms ran out of memory beside it on the H200).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import ufm  # noqa: E402
from ufm.solvers import batching as runner  # noqa: E402

# (K, d, n, ufm steps): steps keep each ufm run to seconds on 2 cores (x10 on an accelerator)
SIZES = [(10, 64, 100, 2000), (10, 512, 500, 200), (100, 256, 50, 200)]
LOG_EVERY = 100  # the runner's default: NC metrics of every configuration every 100 steps
LAM, LR = 5e-4, 0.5
TORCH_SECONDS = 1.5  # each PyTorch run is sized to about this long (at least 3 steps)


def _lam_H(n_configs):
    return np.geomspace(LAM, 4 * LAM, n_configs)


# ---- ufm -------------------------------------------------------------------------------------

def ufm_arm(K, d, n, steps, n_configs, fast=True, kernel="xla", geometry="wd",
            log_every=LOG_EVERY):
    """A timed run of the grid runner (compiled and warmed up first); returns a callable that
    runs the whole grid once and gives its seconds, plus the runner's (width, chunk)."""
    prob = ufm.Problem(num_classes=K, feature_dim=d, n_per_class=n, geometry=geometry)
    width = runner.batch_width(prob, n_configs)
    size = runner.chunk_size(prob, n_configs, width)
    hypers = ufm.Hyper(lam_W=np.full(n_configs, LAM), lam_H=_lam_H(n_configs),
                       lam_b=np.full(n_configs, LAM), lr=np.full(n_configs, LR),
                       # on the sphere a temperature sweep; CE at tau = 1 like the peers else
                       tau=np.geomspace(0.1, 1.0, n_configs) if geometry == "sphere" else 1.0)
    kwargs = dict(steps=steps, log_every=min(log_every, steps), tol=0.0, progress=False,
                  width=width, fast=fast, kernel=kernel)

    def chunk(lo):  # padded to the chunk size like the runner's last chunk: no recompilation
        idx = list(range(lo, min(lo + size, n_configs)))
        idx += [idx[-1]] * (size - len(idx))
        return ufm.Hyper(*(np.broadcast_to(v, (n_configs,))[idx] for v in hypers)), idx

    ufm.solve_batch(prob, *chunk(0), **kwargs)  # compile

    def run():
        return sum(ufm.solve_batch(prob, *chunk(lo), **kwargs).seconds
                   for lo in range(0, n_configs, size))

    return run, width, size


def ufm_fixed_cost(K, d, n, steps, n_configs, seconds, geometry="wd"):
    """(seconds of fixed cost per `solve_batch` call, seconds per configuration-step) from the
    ends-only run of `steps` steps (`seconds`, measured by the `ufm-ends` arm) and one of
    `max(1, steps // 10)` steps (median of 3)."""
    short = max(1, steps // 10)
    if short == steps:
        return 0.0, seconds / (steps * n_configs)
    run, _, _ = ufm_arm(K, d, n, short, n_configs, geometry=geometry, log_every=short)
    short_seconds = statistics.median(run() for _ in range(3))
    per_step = (seconds - short_seconds) / (steps - short)
    return max(0.0, short_seconds - short * per_step), per_step / n_configs


# ---- hand-written JAX ------------------------------------------------------------------------

def jax_hand_arm(K, d, n, n_configs, momentum=False):
    """The loop a JAX user writes in a quarter of an hour: `run(steps) -> seconds` (one
    compilation for every step count, excluded from the time)."""
    import optax

    N = K * n
    labels = jnp.repeat(jnp.arange(K), n)
    tx = optax.sgd(LR, momentum=0.9) if momentum else optax.sgd(LR)

    def objective(p, lam_H):
        W, H, b = p
        Z = W @ H + b[:, None]
        ce = optax.softmax_cross_entropy_with_integer_labels(Z.T, labels).mean()
        return ce + LAM / 2 * jnp.sum(W**2) + lam_H / 2 * jnp.sum(H**2) + LAM / 2 * jnp.sum(b**2)

    def run_all(p, lam_H, steps):  # steps traced: one compilation serves every count
        def step(_, carry):
            p, state = carry
            updates, state = tx.update(jax.grad(objective)(p, lam_H), state, p)
            return optax.apply_updates(p, updates), state

        return jax.lax.fori_loop(0, steps, step, (p, tx.init(p)))[0]

    program = jax.jit(jax.vmap(run_all, in_axes=(0, 0, None)))
    key = jax.random.key(0)
    p = (jax.random.normal(key, (n_configs, K, d)) / d**0.5,
         jax.random.normal(key, (n_configs, d, N)) / d**0.5, jnp.zeros((n_configs, K)))
    lam = jnp.asarray(_lam_H(n_configs), jnp.float32)
    jax.block_until_ready(program(p, lam, 1))

    def run(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(program(p, lam, steps))
        return time.perf_counter() - t0

    return run, n_configs


# ---- PyTorch ---------------------------------------------------------------------------------

def _sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def torch_loop_arm(torch, device, K, d, n, n_configs):
    """One configuration at a time, autograd: `run(steps) -> seconds` over up to 4 configs."""
    N = K * n
    labels = torch.arange(K, device=device).repeat_interleave(n)
    lam_H = _lam_H(n_configs)
    timed = min(n_configs, 4)

    def run(steps):
        _sync(torch, device)
        t0 = time.perf_counter()
        for c in range(timed):
            W = (torch.randn(K, d, device=device) / d**0.5).requires_grad_()
            H = (torch.randn(d, N, device=device) / d**0.5).requires_grad_()
            b = torch.zeros(K, device=device, requires_grad=True)
            opt = torch.optim.SGD([W, H, b], lr=LR)
            for _ in range(steps):
                opt.zero_grad()
                Z = W @ H + b[:, None]
                f = (torch.nn.functional.cross_entropy(Z.T, labels) + LAM / 2 * (W**2).sum()
                     + lam_H[c] / 2 * (H**2).sum() + LAM / 2 * (b**2).sum())
                f.backward()
                opt.step()
        _sync(torch, device)
        return time.perf_counter() - t0

    return run, timed


def torch_batched_arm(torch, device, K, d, n, n_configs, compiled=False):
    """Every configuration along a leading axis: `run(steps) -> seconds`."""
    B, N = n_configs, K * n
    labels = torch.arange(K, device=device).repeat_interleave(n).repeat(B)
    lam_H = torch.tensor(_lam_H(B), dtype=torch.float32, device=device)[:, None, None]

    def objective(W, H, b):
        Z = torch.baddbmm(b[:, :, None], W, H)  # (B, K, N)
        loss = torch.nn.functional.cross_entropy(Z.transpose(1, 2).reshape(B * N, K), labels,
                                                 reduction="sum") / N  # sum of per-config means
        return (loss + LAM / 2 * (W**2).sum() + (lam_H / 2 * H**2).sum()
                + LAM / 2 * (b**2).sum())

    if compiled:
        objective = torch.compile(objective)
    W = (torch.randn(B, K, d, device=device) / d**0.5).requires_grad_()
    H = (torch.randn(B, d, N, device=device) / d**0.5).requires_grad_()
    b = torch.zeros(B, K, device=device, requires_grad=True)
    opt = torch.optim.SGD([W, H, b], lr=LR)

    def run(steps):
        _sync(torch, device)
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            objective(W, H, b).backward()
            opt.step()
        _sync(torch, device)
        return time.perf_counter() - t0

    return run, B


def _sized(run, max_steps):
    """Warm up, then the step count that makes a run last about TORCH_SECONDS."""
    run(2)
    per_step = run(3) / 3
    return int(np.clip(TORCH_SECONDS / max(per_step, 1e-9), 3, max_steps))


# ---- the machine's floors ----------------------------------------------------------------------

def _best_seconds(fn, args, reps=10):
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def _every_device(fn, n_args):
    """jit(fn) run by every local device at once on its own shard of arguments whose leading
    axis is a multiple of the device count (the split CPU's floors are the whole machine's)."""
    return jax.jit(runner.over_devices(fn, (0,) * n_args))


def copy_bandwidth(n_bytes: int, passes: int = 50) -> float:
    """Bytes per second of a jitted read-and-write loop over an array of `n_bytes` (float32) on
    every local device at once, `passes` passes in one call: the bandwidth at that working-set
    size."""
    n_dev = jax.local_device_count()
    x = runner.shard_over_devices(jnp.ones((n_dev * max(n_bytes // 4, 1024),), jnp.float32))
    loop = _every_device(lambda x: jax.lax.fori_loop(0, passes, lambda _, y: y * 0.999 + 1e-3, x),
                         1)
    return 2 * x.size * 4 * passes / _best_seconds(loop, (x,))


def matmul_seconds(K, d, N, width, repeats=50):
    """Seconds per configuration of a step's three matmuls (Z = W H, G H^T, W^T G) at
    precision "highest", each timed alone on every local device at once, the better of
    `width` configurations batched and one configuration at a time on each device. Each
    product runs `repeats` times inside one call (a small matmul takes microseconds, less than
    a call's dispatch), its small operand shifted by a scalar the last product's sum gives,
    so that no repeat can be hoisted out of the loop or skipped."""
    key = jax.random.key(0)
    n_dev = jax.local_device_count()
    B = max(width, 1)
    W, H, G = (runner.shard_over_devices(jax.random.normal(key, (n_dev * B,) + shape))
               for shape in ((K, d), (d, N), (K, N)))
    products = [
        (lambda W, H, G, s: jnp.einsum("bkd,bdn->bkn", W + s, H),
         lambda W, H, G, s: (W[0] + s) @ H[0]),
        (lambda W, H, G, s: jnp.einsum("bkn,bdn->bkd", G + s, H),
         lambda W, H, G, s: (G[0] + s) @ H[0].T),
        (lambda W, H, G, s: jnp.einsum("bkd,bkn->bdn", W + s, G),
         lambda W, H, G, s: (W[0] + s).T @ G[0]),
    ]

    def repeated(product):
        def run(W, H, G):
            step = lambda _, s: 1e-30 * jnp.sum(product(W, H, G, s))
            return jax.lax.fori_loop(0, repeats, step, jnp.zeros((), W.dtype))[None]
        return _every_device(run, 3)

    total = 0.0
    with jax.default_matmul_precision("highest"):
        for batched, single in products:
            seconds = min(_best_seconds(repeated(batched), (W, H, G)) / B,
                          _best_seconds(repeated(single), (W, H, G)))
            total += seconds / (repeats * n_dev)
    return total


# ---- the table ---------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smallest size and grid only")
    parser.add_argument("--grids", type=int, nargs="+",
                        help="grid sizes (default: 16 64 on a CPU, 256 1024 4096 on an "
                        "accelerator)")
    parser.add_argument("--sizes", type=int, nargs="+", help="indices into SIZES (default: all)")
    parser.add_argument("--reps", type=int, default=3, help="alternating repetitions (median)")
    parser.add_argument("--reference", action="store_true",
                        help="also time ufm's reference path (autodiff, every step checked)")
    parser.add_argument("--sphere", action="store_true",
                        help="the sphere geometry instead (ufm's fast and reference paths only)")
    parser.add_argument("--steps-scale", type=float, default=None,
                        help="multiply ufm's step counts (default 1 on a CPU, 10 on an "
                        "accelerator)")
    parser.add_argument("--host-devices", type=int, default=None,
                        help="CPU devices to split the process into, as `ufm run "
                        "--host-devices` (default: as `ufm run` chooses)")
    args = parser.parse_args()
    runner.use_host_devices(args.host_devices)  # before anything starts JAX
    accelerator = jax.default_backend() != "cpu"
    try:
        import torch

        device = torch.device("cuda" if accelerator and torch.cuda.is_available() else "cpu")
        print(f"torch {torch.__version__} on {device}, {torch.get_num_threads()} threads")
    except ImportError:
        torch = device = None
        print("torch is not installed: the PyTorch arms are skipped (pip install torch==2.13.0)")
    if args.sphere:
        torch, args.reference = None, True  # PyTorch arms are for the weight-decay UFM
    geometry = "sphere" if args.sphere else "wd"
    jax_device = jax.devices()[0]
    print(f"jax {jax.__version__} on {jax.local_device_count()} x "
          f"{getattr(jax_device, 'device_kind', jax_device)} "
          f"({jax_device.platform}); float32 CE, {geometry} geometry, plain GD; "
          f"median of {args.reps} "
          "alternating repetitions; rates in configuration-steps per second\n")
    sizes = [SIZES[i] for i in args.sizes] if args.sizes else SIZES
    grids = args.grids or ([256, 1024, 4096] if accelerator else [16, 64])
    if args.quick:
        sizes, grids = sizes[:1], grids[:1]
    scale = args.steps_scale or (10 if accelerator else 1)
    rows = []
    for K, d, n, steps in sizes:
        steps = max(1, int(steps * scale))
        N = K * n
        for n_configs in grids:
            arms = {}
            run, width, size = ufm_arm(K, d, n, steps, n_configs, geometry=geometry)
            arms["ufm"] = (lambda run=run: n_configs * steps / run())
            ends_run, _, _ = ufm_arm(K, d, n, steps, n_configs, geometry=geometry,
                                     log_every=steps)
            arms["ufm-ends"] = (lambda run=ends_run: n_configs * steps / run())
            if args.reference:
                ref_run, _, _ = ufm_arm(K, d, n, steps, n_configs, fast=False, geometry=geometry)
                arms["ufm-ref"] = (lambda ref_run=ref_run: n_configs * steps / ref_run())
            if accelerator and not args.sphere:
                try:  # the one-pass kernel; a lowering failure is reported, not fatal
                    kernel_run, _, _ = ufm_arm(K, d, n, steps, n_configs, kernel="pallas")
                    arms["ufm-pallas"] = (lambda k=kernel_run: n_configs * steps / k())
                except Exception as error:  # noqa: BLE001 (any lowering error)
                    print(f"  ufm-pallas skipped: {type(error).__name__}: {str(error)[:300]}")
            if torch is not None:
                peers = [("torch-loop", torch_loop_arm(torch, device, K, d, n, n_configs)),
                         ("torch-bmm", torch_batched_arm(torch, device, K, d, n, n_configs)),
                         ("torch-compile", torch_batched_arm(torch, device, K, d, n,
                                                             n_configs, compiled=True))]
            else:
                peers = []
            if not args.sphere:
                peers += [("jax-hand", jax_hand_arm(K, d, n, n_configs)),
                          ("jax-hand-mom", jax_hand_arm(K, d, n, n_configs, momentum=True))]
            for name, (peer, count) in peers:
                peer_steps = _sized(peer, steps)
                arms[name] = (lambda peer=peer, count=count, s=peer_steps: count * s / peer(s))
            rates = {name: [] for name in arms}
            for _ in range(args.reps):
                for name, arm in arms.items():
                    rates[name].append(arm())
            rate = {name: statistics.median(r) for name, r in rates.items()}
            slice_bytes = max(1, width) * d * N * 4
            bandwidth = copy_bandwidth(slice_bytes)
            mm = matmul_seconds(K, d, N, min(width, 1024 if accelerator else 64))
            flop_floor, byte_floor = mm, 2 * d * N * 4 / bandwidth
            binding = "matmul" if flop_floor >= byte_floor else "bandwidth"
            # GD peers only (the momentum arm is another algorithm)
            peers = {k: v for k, v in rate.items()
                     if k.startswith("torch") or k == "jax-hand"}
            best_peer = max(peers, key=peers.get) if peers else None
            fixed, per_step = ufm_fixed_cost(K, d, n, steps, n_configs,
                                             n_configs * steps / rate["ufm-ends"], geometry)
            rows.append(dict(
                size=(K, d, n), configs=n_configs, width=width, chunk=size, steps=steps,
                rates=rate, best_peer=best_peer,
                ratio=rate["ufm"] / peers[best_peer] if best_peer else None,
                ratio_ends=rate["ufm-ends"] / peers[best_peer] if best_peer else None,
                fixed=fixed, per_step=per_step,
                gflops=6 * K * d * N * rate["ufm"] / 1e9,
                matmul_gflops=6 * K * d * N / mm / 1e9, bandwidth=bandwidth / 1e9,
                of_matmul=flop_floor * rate["ufm"], of_bandwidth=byte_floor * rate["ufm"],
                binding=binding, of_floor=max(flop_floor, byte_floor) * rate["ufm"]))
            _print_row(rows[-1], list(arms))
    print("\nFLOPs per configuration-step 6 K d N; bytes 2 d N x 4 (one read and one write of H)."
          "\nThe matmul rate is a step's three matmuls timed alone at these shapes; the bandwidth a"
          "\nread-and-write loop over one vmapped slice's H (where it lives: cache or memory).")
    if accelerator:
        gaps = precision_check()
        print(f"\nfloat32 CE (10, 32, 50), GD 30k steps, relative gap to f*: "
              f"{gaps['highest']:.1e} (ufm, precision highest), {gaps['default']:.1e} "
              "(JAX default precision: TF32 on recent NVIDIA GPUs)")
    if not accelerator:
        print("\ntime to the optimum (float64 CE, (10, 32, 50), lam = 5e-4, |f - f*| < 1e-6 f*):")
        for solver, (seconds, iteration) in time_to_optimum().items():
            print(f"  {solver:>6}: {seconds:6.2f} s ({iteration} iterations)")


def _print_row(row, arm_names):
    rate = row["rates"]
    print(f"(K, d, n) = {row['size']}, {row['configs']} configurations (slice {row['width']}, "
          f"chunk {row['chunk']}, {row['steps']} ufm steps)")
    print("  " + "  ".join(f"{name}: {rate[name]:,.0f}" for name in arm_names))
    if row["best_peer"]:
        print(f"  ufm / best GD peer ({row['best_peer']}): {row['ratio']:.2f}x default logging, "
              f"{row['ratio_ends']:.2f}x ends only")
    steps_worth = row["fixed"] / max(row["per_step"] * row["configs"], 1e-12)
    print(f"  fixed cost of a solve_batch call: {row['fixed']:.3f} s "
          f"(= {steps_worth:.1f} steps of the whole batch); default logging costs "
          f"{rate['ufm-ends'] / rate['ufm'] - 1:+.1%} against ends only")
    print(f"  ufm {row['gflops']:.1f} GFLOP/s = {row['of_matmul']:.0%} of the matmul rate "
          f"({row['matmul_gflops']:.1f} GFLOP/s); {row['of_bandwidth']:.0%} of the bandwidth "
          f"floor ({row['bandwidth']:.1f} GB/s); binding: {row['binding']}, "
          f"{row['of_floor']:.0%} of it", flush=True)


def time_to_optimum():
    prob = ufm.Problem(num_classes=10, feature_dim=32, n_per_class=50, dtype="float64")
    hyp = ufm.Hyper(lam_W=LAM, lam_H=LAM, lam_b=LAM, lr=1.0)
    out = {}
    for solver, steps, log_every in (("gd", 100_000, 250), ("lbfgs", 2000, 5)):
        ufm.solve(prob, hyp, key=0, steps=steps, log_every=log_every, solver=solver,
                  tol=1e-12)  # compile
        res = ufm.solve(prob, hyp, key=0, steps=steps, log_every=log_every, solver=solver,
                        tol=1e-12)
        below = np.nonzero(np.abs(res.history["rel_gap"]) < 1e-6)[0]
        if len(below):
            # The run goes on to tol; charge only the share of its time up to the first log
            # point within 1e-6 (steps cost the same throughout).
            it = res.history["iteration"][below[0]]
            out[solver] = (res.seconds * it / max(res.steps, 1), int(it))
        else:
            out[solver] = (float("nan"), None)
    return out


def precision_check():
    """float32 CE at (10, 32, 50), lam = 5e-4, GD: relative gap to f* with ufm's full-precision
    matmuls and with JAX's default precision (TF32 on recent NVIDIA GPUs), the reason ufm
    forces "highest"."""
    prob = ufm.Problem(num_classes=10, feature_dim=32, n_per_class=50)
    hyp = ufm.Hyper(lam_W=LAM, lam_H=LAM, lam_b=LAM, lr=1.0)
    steps = 30_000
    out = {
        "highest": float(ufm.solve(prob, hyp, steps=steps, log_every=steps).history["rel_gap"][-1])
    }
    run = jax.jit(ufm.make_run(prob, steps=steps, log_every=steps, tol=1e-6))
    f_star = ufm.analysis.theory.optimum(prob, hyp).objective
    with jax.default_matmul_precision("default"):  # outside ufm's scope: JAX's default
        _, history, _, _ = run(hyp.astype(jnp.float32), jax.random.key(0), jnp.float32(f_star))
    out["default"] = float(history["rel_gap"][-1])
    return out


if __name__ == "__main__":
    main()
