"""Where the grid runner's time goes on an accelerator: the same vmapped GD run with the
default logging (NC metrics every 100 steps), with logging only at the ends, and with sparser
checks; plus one vmapped NC-metrics evaluation alone.

    python benchmarks/gpu_overhead.py
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

import ufm


def timed(fn):
    fn()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main():
    print("jax", jax.__version__, jax.devices())
    B = int(__import__("os").environ.get("B", 1024))
    for K, d, n, steps in [(10, 64, 100, 4000), (10, 512, 500, 400)]:
        prob = ufm.Problem(num_classes=K, feature_dim=d, n_per_class=n)
        hypers = ufm.Hyper(lam_W=np.full(B, 5e-4), lam_H=np.geomspace(5e-4, 2e-3, B),
                           lam_b=np.full(B, 5e-4), lr=np.full(B, 0.5))
        seeds = list(range(B))
        for label, kw in [("log 100, check 25", dict(log_every=100, check_every=25)),
                          ("log at ends, check 25", dict(log_every=steps, check_every=25)),
                          ("log at ends, check 200", dict(log_every=steps, check_every=200)),
                          ("log 100, check 200", dict(log_every=100, check_every=200))]:
            run = lambda: ufm.solve_batch(prob, hypers, seeds, steps=steps, tol=0.0,
                                          progress=False, **kw)
            seconds, res = timed(run)
            print(f"(K, d, n) = ({K}, {d}, {n}) {label}: {B * steps / seconds:,.0f} cfg-steps/s "
                  f"({seconds:.3f} s; result's own seconds {res.seconds:.3f})", flush=True)
        Y = prob.labels
        params = ufm.init(prob, jax.random.key(0))
        W = jnp.broadcast_to(params.W, (B,) + params.W.shape)
        H = jnp.broadcast_to(params.H, (B,) + params.H.shape)
        b = jnp.broadcast_to(params.b, (B,) + params.b.shape)
        f = jax.jit(jax.vmap(lambda W, H, b: ufm.nc_metrics(W, H, Y, b)))
        seconds, _ = timed(lambda: jax.block_until_ready(f(W, H, b)))
        print(f"  one vmapped nc_metrics over {B}: {seconds * 1e3:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
