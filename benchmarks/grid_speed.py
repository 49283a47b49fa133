"""Grid speed: ufm's vmapped, scanned grid against the way UFM experiments are usually run
(PyTorch on the CPU, autograd, one configuration after another in a Python loop), side by side
in one process, same losses (CE), sizes, step counts and float32.

For each (K, d, n) and grid size it prints configuration-steps per second for both, their ratio,
and ufm's achieved GFLOP/s (6 K d N flops per gradient step: Z = W H and the two gradient
matmuls) as a fraction of a plain jitted matmul's GFLOP/s at the same shapes, measured here.
Then "time to the optimum": float64 CE, (K, d, n) = (10, 32, 50), lam = 5e-4, seconds until
the gap to the closed-form f* is below 1e-6 relative, for plain GD and for L-BFGS.

Compilation is excluded from ufm's timings (each arm is run once to compile, then timed); the
PyTorch arm is skipped with a message where torch is missing (`pip install torch==2.13.0`).

    python benchmarks/grid_speed.py [--quick]
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import ufm

# (K, d, n, steps): fewer steps for the large shapes keep each arm to seconds on 2 cores.
SIZES = [(10, 64, 100, 2000), (10, 512, 500, 40), (100, 256, 50, 20)]
GRIDS = [16, 64]
LAM, LR = 5e-4, 0.5


def _hypers(n_configs):
    return ufm.Hyper(lam_W=np.full(n_configs, LAM), lam_H=np.geomspace(LAM, 4 * LAM, n_configs),
                     lam_b=np.full(n_configs, LAM), lr=np.full(n_configs, LR))


def time_ufm(K, d, n, steps, n_configs):
    """The grid runner's way: chunks of `grid.chunk_size` configurations, each one compiled call
    over vmapped slices of `grid.batch_width` (lax.map over the slices)."""
    from ufm import grid

    prob = ufm.Problem(num_classes=K, feature_dim=d, n_per_class=n)
    width = grid.batch_width(prob, n_configs)
    size = grid.chunk_size(prob, n_configs, width)
    hypers = _hypers(n_configs)
    kwargs = dict(steps=steps, log_every=steps, tol=0.0, progress=False, width=width)

    def chunk(lo):  # padded to the chunk size like the runner's last chunk: no recompilation
        idx = list(range(lo, min(lo + size, n_configs)))
        idx += [idx[-1]] * (size - len(idx))
        return ufm.Hyper(*(np.broadcast_to(v, (n_configs,))[idx] for v in hypers)), idx

    ufm.solve_batch(prob, *chunk(0), **kwargs)  # compile
    seconds = sum(ufm.solve_batch(prob, *chunk(lo), **kwargs).seconds
                  for lo in range(0, n_configs, size))
    return seconds, width, size


def time_torch(K, d, n, steps, n_configs):
    import torch

    torch.manual_seed(0)
    N = K * n
    labels = torch.arange(K).repeat_interleave(n)
    lam_H = np.geomspace(LAM, 4 * LAM, n_configs)
    t0 = time.perf_counter()
    for c in range(n_configs):
        W = (torch.randn(K, d) / d**0.5).requires_grad_()
        H = (torch.randn(d, N) / d**0.5).requires_grad_()
        b = torch.zeros(K, requires_grad=True)
        opt = torch.optim.SGD([W, H, b], lr=LR)
        for _ in range(steps):
            opt.zero_grad()
            Z = W @ H + b[:, None]
            loss = torch.nn.functional.cross_entropy(Z.T, labels)
            f = loss + LAM / 2 * (W**2).sum() + lam_H[c] / 2 * (H**2).sum() + LAM / 2 * (b**2).sum()
            f.backward()
            opt.step()
    return time.perf_counter() - t0


def matmul_gflops(K, d, n, n_configs, precision="highest"):
    """GFLOP/s of a plain jitted matmul W H at the same shapes (float32, at the precision ufm
    uses, "highest": no TF32 on GPUs; "default" gives the TF32 rate where there is one):
    the better of one batched einsum over all configurations and one configuration at a time
    (a batched matmul can be far slower than the plain one on a CPU)."""
    N = K * n
    key = jax.random.key(0)
    batch = min(n_configs, max(1, int(2**31 // (4 * (K * d + d * N + K * N)))))
    W = jax.random.normal(key, (batch, K, d))
    H = jax.random.normal(key, (batch, d, N))
    rates = []
    with jax.default_matmul_precision(precision):
        rates = _matmul_rates(K, d, N, W, H, batch)
    return max(rates)


def _matmul_rates(K, d, N, W, H, batch):
    rates = []
    for f, count in ((jax.jit(lambda W, H: jnp.einsum("bkd,bdn->bkn", W, H)), batch),
                     (jax.jit(lambda W, H: W[0] @ H[0]), 1)):
        f(W, H).block_until_ready()
        reps = max(3, int(2e9 / (2 * K * d * N * count)))
        t0 = time.perf_counter()
        for _ in range(reps):
            out = f(W, H)
        out.block_until_ready()
        rates.append(2 * K * d * N * count * reps / (time.perf_counter() - t0) / 1e9)
    return rates


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
    matmuls and with JAX's default precision (TF32 on recent NVIDIA GPUs)."""
    prob = ufm.Problem(num_classes=10, feature_dim=32, n_per_class=50)
    hyp = ufm.Hyper(lam_W=LAM, lam_H=LAM, lam_b=LAM, lr=1.0)
    steps = 30_000
    out = {"highest": float(ufm.solve(prob, hyp, steps=steps, log_every=steps).history["rel_gap"][-1])}
    run = jax.jit(ufm.solvers.make_run(prob, steps=steps, log_every=steps, tol=1e-6))
    f_star = ufm.theory.optimum(prob, hyp).objective
    with jax.default_matmul_precision("default"):  # outside ufm's scope: JAX's default
        _, history, _, _ = run(hyp.astype(jnp.float32), jax.random.key(0), jnp.float32(f_star))
    out["default"] = float(history["rel_gap"][-1])
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smallest size and grid only")
    parser.add_argument("--grids", type=int, nargs="+", help="grid sizes (default: 16 64 on "
                        "a CPU, 256 1024 4096 on an accelerator)")
    parser.add_argument("--sizes", type=int, nargs="+", help="indices into SIZES to run "
                        "(default: all)")
    parser.add_argument("--steps-scale", type=float, default=None,
                        help="multiply every size's step count (default 1 on a CPU, 10 on an "
                        "accelerator, where steps are fast)")
    args = parser.parse_args()
    accelerator = jax.default_backend() != "cpu"
    try:
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads()))
        has_torch = True
    except ImportError:
        has_torch = False
        print("torch is not installed: the PyTorch arm is skipped (pip install torch==2.13.0)")
    device = jax.devices()[0]
    print(f"device: {getattr(device, 'device_kind', device)} ({device.platform}), float32, CE, GD; "
          "matmuls at precision 'highest' (ufm's setting) in both ufm and the matmul reference")
    print(f"{'(K, d, n)':>15} {'configs':>7} {'width':>5} {'chunk':>5} {'steps':>5} "
          f"{'ufm cfg-steps/s':>15} "
          f"{'torch cfg-steps/s':>17} {'ratio':>6} {'ufm GFLOP/s':>11} {'of matmul':>9}")
    sizes = [SIZES[i] for i in args.sizes] if args.sizes else SIZES
    sizes = sizes[:1] if args.quick else sizes
    grids = args.grids or ([256, 1024, 4096] if accelerator else GRIDS)
    grids = grids[:1] if args.quick else grids
    scale = args.steps_scale or (10 if accelerator else 1)
    for K, d, n, steps in sizes:
        steps = max(1, int(steps * scale))
        for n_configs in grids:
            seconds, width, size = time_ufm(K, d, n, steps, n_configs)
            rate = n_configs * steps / seconds
            gflops = 6 * K * d * K * n * rate / 1e9
            peak = matmul_gflops(K, d, n, n_configs)
            if has_torch and not accelerator:
                torch_rate = n_configs * steps / time_torch(K, d, n, steps, n_configs)
                torch_text, ratio = f"{torch_rate:17.0f}", f"{rate / torch_rate:6.1f}"
            else:
                torch_text, ratio = f"{'-':>17}", f"{'-':>6}"
            print(f"{str((K, d, n)):>15} {n_configs:>7} {width:>5} {size:>5} {steps:>5} "
                  f"{rate:15.0f} {torch_text} "
                  f"{ratio} {gflops:11.1f} {gflops / peak:9.0%}", flush=True)
        if accelerator:
            print(f"{'':>15} matmul GFLOP/s at these shapes: {peak:.0f} (highest), "
                  f"{matmul_gflops(K, d, n, n_configs, 'default'):.0f} (default, TF32 where "
                  "the card has it)", flush=True)
    if accelerator:
        gaps = precision_check()
        print(f"\nfloat32 CE (10, 32, 50), GD 30k steps, relative gap to f*: "
              f"{gaps['highest']:.1e} (ufm, precision highest), {gaps['default']:.1e} "
              "(JAX default precision)")
    print("\ntime to the optimum (float64 CE, (10, 32, 50), lam = 5e-4, |f - f*| < 1e-6 f*):")
    for solver, (seconds, iteration) in time_to_optimum().items():
        print(f"  {solver:>6}: {seconds:6.2f} s ({iteration} iterations)")


if __name__ == "__main__":
    main()
