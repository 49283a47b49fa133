"""The three-class picture of multi-label neural collapse (Li et al. 2024, figure 1): features of
a pick-all-label UFM with K = 3 classes in d = 2 dimensions, single labels {0}, {1}, {2} and
pairs {0,1}, {0,2}, {1,2}, early, midway and late in gradient descent. Late, the single-label
means form a simplex ETF (an equilateral triangle around the origin) and every pair's features
sit on the sum of its two classes' mean directions (NC_m -> 0).

    python experiments/multilabel_picture.py [--out runs/multilabel_picture]

Writes multilabel_picture.png and prints NC1 (per label set), NC2 and NC_m at each stage.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import ufm
from ufm.model.problem import multilabel_sets

STAGES = (("early", 30), ("mid", 300), ("late", 30_000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/multilabel_picture")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100x fewer steps")
    args = parser.parse_args()
    stages = [(name, max(1, steps // 100) if args.quick else steps) for name, steps in STAGES]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    sets, counts = multilabel_sets(3, [20, 20])
    problem = ufm.Problem(num_classes=3, feature_dim=2, label_sets=sets, set_counts=counts,
                          loss="pick_all_label", dtype="float64")
    hyper = ufm.Hyper(lam_W=1e-3, lam_H=1e-3, lam_b=1e-3, lr=0.5)
    snapshots, done, params = [], 0, None
    for name, steps in stages:
        result = ufm.solve(
            problem,
            hyper,
            key=args.seed,
            steps=steps - done,
            log_every=steps - done,
            solver="gd",
            tol=1e-10,
            start=params,
            init_scale=0.3,
        )
        params, done = result.params, steps
        found = ufm.analysis.nc.multilabel_metrics(params.W, params.H, problem.sample_sets,
                                               problem.label_sets, params.b)
        snapshots.append((name, steps, params, found))
        print(f"{name:>5} (step {steps:>6}): NC1 {found['nc1']:.2e}  NC2_W {found['nc2_W']:.2e}  "
              f"NC2_H {found['nc2_H']:.2e}  NC_m {found['nc_m']:.2e} rad")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = ["tab:red", "tab:green", "tab:blue", "goldenrod", "tab:purple", "tab:cyan"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), layout="constrained")
    owner = problem.sample_sets
    for ax, (name, steps, params, found) in zip(axes, snapshots):
        H, W = np.asarray(params.H), np.asarray(params.W)
        for s, label_set in enumerate(sets):
            points = H[:, owner == s]
            ax.scatter(points[0], points[1], s=10, color=colors[s], alpha=0.6,
                       label="{" + ",".join(map(str, label_set)) + "}")
        scale = np.abs(H).max() / max(np.abs(W).max(), 1e-12)
        for k in range(3):
            ax.annotate("", xy=scale * W[k], xytext=(0, 0),
                        arrowprops=dict(arrowstyle="->", color=colors[k], lw=2))
        ax.set_aspect("equal")
        ax.set_title(f"{name} (step {steps}): NC_m = {found['nc_m']:.1e}", fontsize=9)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("pick-all-label UFM, K = 3, d = 2: features (dots) and classifiers (arrows)")
    path = out / "multilabel_picture.png"
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
