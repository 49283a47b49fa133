"""Time to a converged grid: seconds until every configuration of a 16-configuration grid
reaches rel_gap = (f - f*) / |f*| <= 1e-6 against the closed-form optimum f* (float64 CE with
bias, weight decay lam_W = lam_b = 5e-4, lam_H from 5e-4 to 2e-3), ufm against the peers a user
would write: hand-written optax GD, Nesterov and L-BFGS under `jit(vmap(...))`, and PyTorch's
`torch.optim.LBFGS` one configuration at a time.

Every arm starts from ufm's initial point of each configuration and is stopped by an oracle:
first its trajectory gives the iterations it needs (the first iteration, or log point for ufm's
first-order solvers, at which every configuration is within the target), then a run of exactly
that many iterations is timed (compiled first, median of 3) and checked. So no arm pays for
testing convergence, and none stops early or late. PyTorch's L-BFGS runs one `step` (one
iteration, strong Wolfe line search, memory 10 like optax) per call and tests the loss it
returns, as a user would.

L-BFGS also gets its cost in gradient evaluations: seconds per iteration over the seconds of
one vmapped value-and-gradient of the grid, and the line search's evaluations per iteration
(the mean over configurations, and the batch's maximum, which a vmapped search waits for).

On a CPU the process is split into host devices as `ufm run` splits it (one per usable core,
at most 8; `--host-devices 1` for one): ufm shards its grid over them, the hand-written loops
run as written, on the first device.

    python benchmarks/converged_grid.py                      # S1 and S2 (S2 without GD)
    python benchmarks/converged_grid.py --sizes S1 --arms ufm-lbfgs jax-lbfgs torch-lbfgs
    python benchmarks/converged_grid.py --sizes S2 --repeats 1
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ufm
from ufm.model.problem import objective as ufm_objective
from ufm.solvers import batching as runner
from ufm.solvers import driver, reference

SIZES = {"S1": (10, 64, 100), "S2": (10, 512, 500)}
N_CONFIGS = 16
TARGET = 1e-6
LAM = 5e-4
LR = 0.5  # the first-order solvers' step, as in grid_speed.py
MAX_ITERATIONS = {"gd": 30_000, "nesterov": 10_000, "lbfgs": 2_000}
FIRST_ORDER_LOG_EVERY = 10
ARMS = ("ufm-gd", "ufm-nesterov", "ufm-lbfgs", "jax-gd", "jax-nesterov", "jax-lbfgs",
        "torch-lbfgs")
# GD needs about 27,000 steps at S1 (90 s for ufm alone here); at S2 each step costs ~25x as
# much, so S2 runs the other arms unless asked.
DEFAULT_ARMS = {"S1": ARMS, "S2": tuple(a for a in ARMS if not a.endswith("-gd"))}
REPEATS = 3
TRAJECTORY_TOL = 1e-10
BLOCK = 50  # the peers' trajectories are taken this many iterations at a time


def grid(size):
    K, d, n = SIZES[size]
    problem = ufm.Problem(num_classes=K, feature_dim=d, n_per_class=n, dtype="float64")
    hypers = ufm.Hyper(lam_W=np.full(N_CONFIGS, LAM), lam_H=np.geomspace(LAM, 4 * LAM, N_CONFIGS),
                       lam_b=np.full(N_CONFIGS, LAM), lr=np.full(N_CONFIGS, LR))
    _, f_star = driver.optimum_values(problem, hypers)
    assert np.all(np.isfinite(f_star)), "every configuration has a closed-form optimum"
    return problem, hypers, f_star


def _batched(hypers):
    return jax.tree.map(lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float64), (N_CONFIGS,)),
                        hypers)


def _median_seconds(run):
    return statistics.median(run() for _ in range(REPEATS))


# ---- ufm -------------------------------------------------------------------------------------

def ufm_arm(problem, hypers, f_star, solver):
    """(iterations, seconds, worst rel_gap at the end)."""
    keys = list(range(N_CONFIGS))
    width = runner.batch_width(problem, N_CONFIGS)  # as `ufm run` slices a grid
    log_every = 1 if solver == "lbfgs" else FIRST_ORDER_LOG_EVERY
    # The runs stop once stationary far past the target (gradient norm 1e-10 at the loss's
    # scale), so finding the count costs about twice the count, not MAX_ITERATIONS.
    traced = ufm.solve_batch(problem, hypers, keys, solver=solver, steps=MAX_ITERATIONS[solver],
                             log_every=log_every, tol=TRAJECTORY_TOL, progress=False, width=width)
    # a run that stopped early keeps its last value in the history (NaN-padded otherwise)
    worst = np.nanmax(traced.history["rel_gap"], axis=0)
    reached = np.flatnonzero(worst <= TARGET)
    if reached.size == 0:
        return None, None, float(worst[-1])
    iterations = int(traced.history["iteration"][reached[0]])
    kwargs = dict(solver=solver, steps=iterations, log_every=iterations, tol=0.0,
                  progress=False, width=width)
    ufm.solve_batch(problem, hypers, keys, **kwargs)  # compiled for this step count
    last = {}

    def run():
        last["result"] = ufm.solve_batch(problem, hypers, keys, **kwargs)
        return last["result"].seconds

    seconds = _median_seconds(run)
    return iterations, seconds, float(np.max(last["result"].history["rel_gap"][:, -1]))


# ---- hand-written JAX ------------------------------------------------------------------------

def _starts(problem):
    with jax.enable_x64(True):
        params = jax.vmap(lambda k: ufm.model.problem.init_traced(problem, k, 1.0))(
            jnp.stack([jax.random.key(i) for i in range(N_CONFIGS)]))
        return params.W, params.H, params.b


def _hand_objective(problem):
    K, n = problem.num_classes, problem.n_per_class
    labels = jnp.repeat(jnp.arange(K), n)

    def objective(p, lam_H):
        W, H, b = p
        Z = W @ H + b[:, None]
        ce = optax.softmax_cross_entropy_with_integer_labels(Z.T, labels).mean()
        return ce + LAM / 2 * jnp.sum(W**2) + lam_H / 2 * jnp.sum(H**2) + LAM / 2 * jnp.sum(b**2)

    return objective


def jax_arm(problem, hypers, f_star, solver):
    """The loop a JAX user writes: `jit(vmap(fori_loop(...)))` of an optax update."""
    objective = _hand_objective(problem)
    tx = {"gd": optax.sgd(LR), "nesterov": optax.sgd(LR, momentum=0.9, nesterov=True),
          "lbfgs": optax.lbfgs()}[solver]

    def step(carry, lam_H):
        p, state = carry
        f = lambda q: objective(q, lam_H)
        if solver == "lbfgs":
            value, grad = optax.value_and_grad_from_state(f)(p, state=state)
            updates, state = tx.update(grad, state, p, value=value, grad=grad, value_fn=f)
        else:
            updates, state = tx.update(jax.grad(f)(p), state, p)
        return optax.apply_updates(p, updates), state

    with jax.enable_x64(True):
        lam = jnp.asarray(np.asarray(hypers.lam_H), jnp.float64)
        start = _starts(problem)
        limit = MAX_ITERATIONS[solver]

        @jax.jit
        @jax.vmap
        def block(carry, lam_H):  # BLOCK more iterations and the objective after each
            def body(carry, _):
                carry = step(carry, lam_H)
                return carry, objective(carry[0], lam_H)
            return jax.lax.scan(body, carry, length=BLOCK)

        start_value = jax.vmap(objective)(start, lam)
        reference = jax.vmap(lambda p, h: ufm_objective(problem, h, ufm.Params(*p)))(
            start, _batched(hypers))
        assert np.allclose(start_value, reference, rtol=1e-12), "the peer's objective is ufm's"
        carry, values = jax.vmap(lambda p: (p, tx.init(p)))(start), []
        while len(values) * BLOCK < limit:  # until every configuration is within the target
            carry, more = block(carry, lam)
            values.append(np.asarray(more))
            gaps = (values[-1] - f_star[:, None]) / np.abs(f_star)[:, None]
            if np.max(gaps[:, -1]) <= TARGET:
                break
        gaps = (np.concatenate(values, axis=1) - f_star[:, None]) / np.abs(f_star)[:, None]
        worst = gaps.max(axis=0)
        reached = np.flatnonzero(worst <= TARGET)
        if reached.size == 0:
            return None, None, float(worst[-1])
        iterations = int(reached[0]) + 1

        @jax.jit
        @jax.vmap
        def run_all(p, lam_H):
            return jax.lax.fori_loop(0, iterations, lambda _, c: step(c, lam_H),
                                     (p, tx.init(p)))[0]

        jax.block_until_ready(run_all(start, lam))
        last = {}

        def run():
            t0 = time.perf_counter()
            last["p"] = jax.block_until_ready(run_all(start, lam))
            return time.perf_counter() - t0

        seconds = _median_seconds(run)
        end = np.asarray(jax.vmap(objective)(last["p"], lam))
    return iterations, seconds, float(np.max((end - f_star) / np.abs(f_star)))


# ---- PyTorch ---------------------------------------------------------------------------------

def torch_lbfgs_arm(problem, hypers, f_star):
    """torch.optim.LBFGS per configuration (float64, strong Wolfe, memory 10): one `step` of
    one iteration at a time finds the iterations each configuration needs (untimed), then one
    timed `step` of exactly that many: (iterations of the slowest configuration, total
    seconds, worst rel_gap)."""
    import torch

    K, n = problem.num_classes, problem.n_per_class
    labels = torch.arange(K).repeat_interleave(n)
    W0, H0, b0 = (np.asarray(a) for a in _starts(problem))
    lam_H = np.asarray(hypers.lam_H)
    limit = MAX_ITERATIONS["lbfgs"]

    def optimizer(c, iterations):
        params = [torch.tensor(a[c], dtype=torch.float64, requires_grad=True)
                  for a in (W0, H0, b0)]
        # max_eval: torch's default (5/4 max_iter) would cut the line search of a one-iteration
        # step to one evaluation, and it stalls.
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations, max_eval=25 * iterations,
                                history_size=10, tolerance_grad=0.0, tolerance_change=0.0,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            W, H, b = params
            Z = W @ H + b[:, None]
            loss = (torch.nn.functional.cross_entropy(Z.T, labels) + LAM / 2 * (W**2).sum()
                    + lam_H[c] / 2 * (H**2).sum() + LAM / 2 * (b**2).sum())
            loss.backward()
            return loss

        return opt, closure

    def gap(c, loss):
        return (float(loss.detach()) - f_star[c]) / abs(f_star[c])

    most, seconds, worst = 0, 0.0, 0.0
    for c in range(N_CONFIGS):
        opt, closure = optimizer(c, 1)
        needed = 0
        while needed < limit:
            opt.step(closure)
            needed += 1
            if gap(c, closure()) <= TARGET:
                break
        opt, closure = optimizer(c, needed)
        t0 = time.perf_counter()
        opt.step(closure)
        seconds += time.perf_counter() - t0
        most, worst = max(most, needed), max(worst, gap(c, closure()))
    return most, seconds, worst


# ---- L-BFGS cost -----------------------------------------------------------------------------

def lbfgs_cost(problem, hypers, seconds_per_iteration):
    """(gradient evaluations an iteration costs, mean line-search evaluations per iteration,
    mean over iterations of the batch's maximum) for ufm's L-BFGS on this grid."""
    with jax.enable_x64(True):
        hyper = _batched(hypers)
        keys = jnp.stack([jax.random.key(i) for i in range(N_CONFIGS)])
        state = jax.jit(jax.vmap(lambda h, k: reference.initial_state(
            problem, "lbfgs", h, k, 1.0)))(hyper, keys)
        value_and_grad = jax.jit(jax.vmap(lambda h, p: jax.value_and_grad(
            lambda q: ufm_objective(problem, h, q))(p)))
        jax.block_until_ready(value_and_grad(hyper, state.variables))

        def evaluate():
            t0 = time.perf_counter()
            for _ in range(10):
                out = value_and_grad(hyper, state.variables)
            jax.block_until_ready(out)
            return (time.perf_counter() - t0) / 10

        per_evaluation = _median_seconds(evaluate)

        def one(h, s):
            return reference.make_step(problem, "lbfgs", h)[1](s, jnp.asarray(0.0),
                                                              jnp.asarray(10**9))

        step = jax.jit(jax.vmap(one))
        counts = []
        for _ in range(40):
            state = step(hyper, state)
            counts.append(np.asarray(state.opt_state[2].info.num_linesearch_steps))
    counts = np.array(counts)
    return seconds_per_iteration / per_evaluation, counts.mean(), counts.max(axis=1).mean()


def main(argv=None):
    global REPEATS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--arms", nargs="+", choices=list(ARMS),
                        help="default: every arm at S1, all but GD at S2")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed runs (median)")
    parser.add_argument("--host-devices", type=int, default=None,
                        help="CPU devices, as `ufm run --host-devices` (default: as it chooses)")
    args = parser.parse_args(argv)
    REPEATS = args.repeats
    runner.use_host_devices(args.host_devices)  # before anything starts JAX
    print(f"jax {jax.__version__} on {jax.local_device_count()} x {jax.devices()[0].platform}, "
          f"{N_CONFIGS} configurations, "
          f"target rel_gap <= {TARGET:g}, float64")
    for size in args.sizes:
        problem, hypers, f_star = grid(size)
        print(f"\n{size} (K, d, n) = {SIZES[size]}")
        print(f"{'arm':14s} {'iterations':>10s} {'seconds':>9s} {'worst rel_gap':>14s}")
        rows = {}
        for arm in args.arms or DEFAULT_ARMS[size]:
            kind, solver = arm.split("-")
            if kind == "ufm":
                rows[arm] = ufm_arm(problem, hypers, f_star, solver)
            elif kind == "jax":
                rows[arm] = jax_arm(problem, hypers, f_star, solver)
            else:
                rows[arm] = torch_lbfgs_arm(problem, hypers, f_star)
            iterations, seconds, worst = rows[arm]
            if seconds is None:
                print(f"{arm:14s} {'not reached':>10s} {'':>9s} {worst:14.2e}")
            else:
                print(f"{arm:14s} {iterations:10d} {seconds:9.3f} {worst:14.2e}")
        timed = {a: r[1] for a, r in rows.items() if r[1] is not None}
        ufm_best = min((s, a) for a, s in timed.items() if a.startswith("ufm"))
        peers = [(s, a) for a, s in timed.items() if not a.startswith("ufm")]
        if peers:
            peer_best = min(peers)
            print(f"fastest ufm: {ufm_best[1]} {ufm_best[0]:.3f} s; fastest peer: "
                  f"{peer_best[1]} {peer_best[0]:.3f} s; ratio {peer_best[0] / ufm_best[0]:.2f}x")
        if "ufm-lbfgs" in timed:
            iterations = rows["ufm-lbfgs"][0]
            evaluations, mean_ls, max_ls = lbfgs_cost(problem, hypers,
                                                      timed["ufm-lbfgs"] / iterations)
            print(f"ufm L-BFGS: an iteration costs {evaluations:.1f} gradient evaluations; "
                  f"line search {mean_ls:.2f} evaluations an iteration (batch maximum "
                  f"{max_ls:.2f})")


if __name__ == "__main__":
    main()
