"""Many classes: the streamed softmax losses against the dense logits, and the exact GNC margin.

    python benchmarks/many_classes.py                     # K = 10^3, 10^4 (this CPU's goals)
    python benchmarks/many_classes.py --classes 100000    # a GPU's size

For each K (d = 64, one sample per class, CE, float32, weight decay), in one process per arm
(so each arm's peak memory is its own, read from ru_maxrss / the device's peak stats):

- ufm: one GD step of `ufm.solve` on the reference path, which streams the logits over class
  blocks once K N > `ufm.model.streaming.STREAM_ABOVE` (`ufm.model.problem.streams`). Step time =
  (time of
  a run of 2 S steps - time of a run of S steps) / S, so compilation, the start and the records
  cancel.
- ufm-dense: the same objective with the K x N logits formed whole (`ufm.model.losses`), jitted
  value and gradient plus the update: what the stream replaces.
- torch: what a PyTorch user writes: logits = W @ H + b, F.cross_entropy, backward, an SGD
  step; autograd keeps the K x N logits and their softmax.
- floor: the step's four matmuls timed alone (the stream recomputes the logits in its backward
  pass: 8 K d N FLOPs against the dense path's 6).
- margin: `ufm.analysis.gnc.one_vs_rest_margins` (pruned to nearest classifiers, checked
  against all) of K random unit classifiers in d = 64, exact.

Prints one table row per (K, arm): seconds per step, peak memory (GB), the ratio to ufm.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

D = 64


def _peak_gb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _arm_ufm(K: int, steps: int) -> dict:
    import ufm
    prob = ufm.Problem(num_classes=K, feature_dim=D, n_per_class=1, loss="ce")
    hyp = ufm.Hyper(lr=0.5)
    ufm.solve(prob, hyp, key=0, steps=2, log_every=2)  # compile
    times = []
    for total in (steps, 2 * steps):
        start = time.perf_counter()
        ufm.solve(prob, hyp, key=0, steps=total, log_every=total)
        times.append(time.perf_counter() - start)
    return {"step_s": (times[1] - times[0]) / steps, "peak_gb": _peak_gb(),
            "streams": bool(ufm.model.problem.streams(prob))}


def _arm_dense(K: int, steps: int) -> dict:
    import jax
    import jax.numpy as jnp

    import ufm
    prob = ufm.Problem(num_classes=K, feature_dim=D, n_per_class=1, loss="ce")
    hyp = ufm.Hyper()
    params = ufm.init(prob, 0)
    Y = prob.targets()

    def objective(p):
        Z = p.W @ p.H + p.b[:, None]
        loss = jnp.mean(ufm.model.losses.cross_entropy(Z, Y))
        return loss + ufm.model.problem.penalty(prob, hyp, p)

    @jax.jit
    def step(p):
        grad = jax.grad(objective)(p)
        return jax.tree.map(lambda x, g: x - 0.5 * g, p, grad)

    params = jax.block_until_ready(step(params))
    start = time.perf_counter()
    for _ in range(steps):
        params = step(params)
    jax.block_until_ready(params)
    return {"step_s": (time.perf_counter() - start) / steps, "peak_gb": _peak_gb()}


def _arm_torch(K: int, steps: int) -> dict:
    import torch
    torch.manual_seed(0)
    W = (torch.randn(K, D) / D**0.5).requires_grad_()
    H = (torch.randn(D, K) / D**0.5).requires_grad_()
    b = torch.zeros(K, requires_grad=True)
    labels = torch.arange(K)
    opt = torch.optim.SGD([W, H, b], lr=0.5, weight_decay=0.0)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy((W @ H + b[:, None]).T, labels) + 2.5e-4 * (
            W.square().sum() + H.square().sum() + b.square().sum())
        loss.backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return {"step_s": (time.perf_counter() - start) / steps, "peak_gb": _peak_gb()}


def _arm_floor(K: int, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    W = jnp.ones((K, D)) / D
    H = jnp.ones((D, K)) / D
    block = 208

    @jax.jit
    def four(W, H):  # the stream's matmuls, a block of classes at a time (logits never whole)
        def body(acc, W_c):
            S = W_c @ H
            S2 = W_c @ H  # the backward pass's recompute
            return acc + W_c.T @ S2, (S @ H.T).sum() + S.sum()
        return jax.lax.scan(body, jnp.zeros_like(H), W[: K // block * block].reshape(-1, block, D))

    jax.block_until_ready(four(W, H))
    start = time.perf_counter()
    for _ in range(steps):
        out = four(W, H)
    jax.block_until_ready(out)
    return {"step_s": (time.perf_counter() - start) / steps, "peak_gb": _peak_gb()}


def _arm_margin(K: int, steps: int) -> dict:
    import numpy as np

    from ufm.analysis import gnc
    rng = np.random.default_rng(0)
    W = rng.normal(size=(K, D))
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    start = time.perf_counter()
    margins = gnc.one_vs_rest_margins(W)
    return {"step_s": time.perf_counter() - start, "peak_gb": _peak_gb(),
            "margin": float(margins.min())}


ARMS = {"ufm": _arm_ufm, "ufm-dense": _arm_dense, "torch": _arm_torch, "floor": _arm_floor,
        "margin": _arm_margin}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--arms", nargs="+", default=list(ARMS))
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # child process: one arm
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(ARMS[args.arm](args.k, args.steps)))
        return
    print(f"{'K':>7}  {'arm':<10} {'s/step':>9} {'peak GB':>8} {'x ufm':>6}  notes")
    for K in args.classes:
        found = {}
        for arm in args.arms:
            proc = subprocess.run([sys.executable, __file__, "--arm", arm, "--k", str(K),
                                   "--steps", str(args.steps)], capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{K:>7}  {arm:<10} {'failed':>9}  {tail[:80]}")
                continue
            found[arm] = json.loads(proc.stdout.strip().splitlines()[-1])
            row = found[arm]
            ratio = (row["step_s"] / found["ufm"]["step_s"]
                     if "ufm" in found and arm not in ("ufm", "margin") else float("nan"))
            note = {"ufm": f"streams={row.get('streams')}",
                    "margin": f"exact min margin {row.get('margin', float('nan')):.6f} "
                              f"(seconds for all K QPs)"}.get(arm, "")
            print(f"{K:>7}  {arm:<10} {row['step_s']:>9.4f} {row['peak_gb']:>8.2f} "
                  f"{ratio:>6.2f}  {note}", flush=True)


if __name__ == "__main__":
    main()
