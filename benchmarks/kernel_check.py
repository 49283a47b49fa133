"""The one-pass Pallas GD step (`ufm.solvers.kernels`) against the XLA fast step
(`ufm.solvers.fast_step`) on a GPU:
agreement after one step (float32, relative to the largest entry) and configuration-steps per
second of each, vmapped over a batch, with the bandwidth floor (one read and one write of H per
step, 2 d N x 4 bytes) and each one's fraction of it. Run it where a GPU is lent; on a CPU it
only checks agreement at a small size in interpret mode.

    python benchmarks/kernel_check.py [--configs 1024] [--steps 200]
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

import ufm
from ufm.solvers import fast_step as fused
from ufm.solvers import kernels

SIZES = [(10, 64, 100), (10, 512, 500), (100, 256, 50)]


def _batch(problem, n_configs):
    keys = jax.random.split(jax.random.key(0), n_configs)
    return jax.vmap(lambda k: ufm.model.problem.init_traced(problem, k))(keys)


def _runner(problem, hyper, steps, use_kernel, interpret):
    tx = optax.sgd(hyper.lr)
    Y = fused.targets(problem, problem.jnp_dtype)

    def one(params):
        def step(_, p):
            if use_kernel:
                return kernels.gd_step(problem, hyper, p, interpret=interpret)
            return fused.plain_step(problem, hyper, tx, Y, p, tx.init(fused.trained(problem, p)))[0]
        return jax.lax.fori_loop(0, steps, step, params)

    return jax.jit(jax.vmap(one))


def _bandwidth(n_bytes):
    x = jnp.ones((n_bytes // 4,), jnp.float32)
    loop = jax.jit(lambda x: jax.lax.fori_loop(0, 20, lambda _, y: y * 0.999 + 1e-3, x))
    jax.block_until_ready(loop(x))
    t0 = time.perf_counter()
    jax.block_until_ready(loop(x))
    return 2 * x.size * 4 * 20 / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    gpu = jax.default_backend() == "gpu"
    sizes = SIZES if gpu else [(4, 16, 5)]
    n_configs = args.configs if gpu else 2
    steps = args.steps if gpu else 3
    print(f"jax {jax.__version__} on {jax.devices()[0]}; {n_configs} configurations, "
          f"{steps} steps, float32" + ("" if gpu else " (CPU: interpret mode, agreement only)"))
    hyper = ufm.Hyper(lam_W=5e-4, lam_H=5e-4, lam_b=5e-4, lr=0.5).astype(jnp.float32)
    with ufm.model.problem.x64_scope("float32"):
        for K, d, n in sizes:
            problem = ufm.Problem(num_classes=K, feature_dim=d, n_per_class=n)
            params = _batch(problem, n_configs)
            one_xla = _runner(problem, hyper, 1, False, not gpu)(params)
            one_kernel = _runner(problem, hyper, 1, True, not gpu)(params)
            error = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                        for a, b in zip(one_kernel[:3], one_xla[:3]))
            line = f"(K, d, n) = {(K, d, n)}: one step, kernel vs XLA, max relative {error:.1e}"
            if gpu:
                N = K * n
                floor = _bandwidth(n_configs * d * N * 4) / (2 * d * N * 4)
                rates = {}
                for name, use_kernel in (("xla", False), ("pallas", True)):
                    run = _runner(problem, hyper, steps, use_kernel, False)
                    jax.block_until_ready(run(params))
                    t0 = time.perf_counter()
                    jax.block_until_ready(run(params))
                    rates[name] = n_configs * steps / (time.perf_counter() - t0)
                line += "".join(f"; {k} {v:,.0f} cfg-steps/s ({v / floor:.0%} of the floor)"
                                for k, v in rates.items())
                line += f"; floor {floor:,.0f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
