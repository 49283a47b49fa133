"""Cost of the Hessian probe: Hessian-vector products and seconds until Lanczos has the
smallest eigenvalue to 1e-6 relative, for UFMs of about 1e3 to 1e6 parameters (float64).

The point probed is a rank-1 critical point of the CE UFM (a strict saddle), whose smallest
eigenvalue is known in closed form, lam_bar - sqrt(dlam^2 + sigma_1(G)^2) (docs/science.md
section 5), so convergence is measured against the truth, not against a longer run.

Lanczos after j steps is the leading j x j block of its tridiagonal T: one run of m steps gives
the estimate after every j <= m, hence the HVP count; the seconds are then timed on a fresh run
of exactly that many steps (compiled first, timed on the second call; full reorthogonalization
included, which dominates at large sizes). For the smallest size the
dense path (all eigenvalues) is timed too. Run:  python benchmarks/probe_cost.py [--max-params N]
"""
from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

import ufm
from ufm.analysis import landscape
from ufm.running import landscapes as points

SIZES = [(10, 16, 6), (10, 32, 30), (10, 64, 150), (10, 128, 780)]  # (K, d, n)
HYPER = ufm.Hyper(lam_W=1e-3, lam_H=1e-3, lam_b=1e-3)  # origin a strict saddle at every size
RTOL = 1e-6


def _timed(fn, *args):
    jax.block_until_ready(fn(*args))  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def measure(K, d, n, max_iters):
    prob = ufm.Problem(num_classes=K, feature_dim=d, n_per_class=n, dtype="float64")
    point = points.rank_r_critical_point(prob, HYPER, 1, steps=2000)
    with jax.enable_x64(True):
        point = jax.tree.map(jnp.asarray, point)
        hyper = HYPER.astype(jnp.float64)
        G = ufm.model.problem.logit_gradient(prob, hyper, point)
        sigma = float(jnp.linalg.norm(G, 2))
        lam_W, lam_H = float(HYPER.lam_W), float(HYPER.lam_H)
        target = (lam_W + lam_H) / 2 - math.sqrt(((lam_W - lam_H) / 2) ** 2 + sigma**2)
        chart, matvec = landscape.hessian_operator(prob, hyper, point)
        v0 = jax.random.normal(jax.random.key(0), (chart.dim,), jnp.float64)
        m = min(max_iters, chart.dim)
        res = jax.jit(lambda v: landscape.lanczos(matvec, v, m))(v0)
        alphas, betas = np.asarray(res.alphas), np.asarray(res.betas)
        needed = None
        for j in range(1, m + 1):
            T = np.diag(alphas[:j]) + np.diag(betas[: j - 1], 1) + np.diag(betas[: j - 1], -1)
            if abs(np.linalg.eigvalsh(T)[0] - target) <= RTOL * abs(target):
                needed = j
                break
        seconds = float("nan")
        if needed is not None:
            seconds = _timed(jax.jit(lambda v: landscape.lanczos(matvec, v, needed).ritz_values[0]),
                             v0)
        hvp_seconds = _timed(jax.jit(matvec), v0)
        dense_seconds = None
        if chart.dim <= 2000:
            dense_seconds = _timed(jax.jit(lambda p: jnp.linalg.eigvalsh(
                landscape.dense_hessian(prob, hyper, p))[0]), point)
    return dict(params=chart.dim, target=target, hvps=needed, seconds=seconds,
                hvp_ms=1e3 * hvp_seconds, dense_seconds=dense_seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-params", type=float, default=1.1e6)
    parser.add_argument("--max-iters", type=int, default=400)
    args = parser.parse_args()
    print(f"device: {jax.devices()[0]}  (float64, CE, lam = 1e-3, rank-1 saddle)")
    print(f"{'params':>9} {'eig_min (exact)':>16} {'HVPs to 1e-6':>13} {'seconds':>9} "
          f"{'ms/HVP':>8} {'dense s':>8}")
    for K, d, n in SIZES:
        if K * d + d * K * n + K > args.max_params:
            continue
        r = measure(K, d, n, args.max_iters)
        dense = "-" if r["dense_seconds"] is None else f"{r['dense_seconds']:.2f}"
        hvps = "> max" if r["hvps"] is None else str(r["hvps"])
        print(f"{r['params']:>9} {r['target']:>16.10f} {hvps:>13} {r['seconds']:>9.3f} "
              f"{r['hvp_ms']:>8.3f} {dense:>8}")


if __name__ == "__main__":
    main()
