"""The README's figures: the default run's NC metrics and a gallery, one figure per experiment
family, each from a short run of the package (small PNGs in docs/).

    python docs/figures.py                 # the full setting: what docs/*.png show (~3 min)
    python docs/figures.py --quick --out DIR   # tiny settings, under a minute (the tests)
    python docs/figures.py --only gnc_margin   # one figure (a function's name below)

Figures (every number is computed here, nothing is drawn from stored values):
    default_run.png     `ufm run`'s built-in experiment: NC1, NC2, NC3 and the gap to f* over
                        gradient descent for CE, focal, label smoothing and MSE (median over
                        seeds, band from min to max)
    landscape.png       Hessian spectra at the origin, a rank-2 critical point and the global
                        minimum (strict saddles have negative eigenvalues; docs/science.md,
                        section 5)
    phase.png           the origin's smallest Hessian eigenvalue against lam = lam_W = lam_H,
                        measured by the probe and from the closed form lam - sigma: a strict
                        saddle below each loss's sigma, the global minimum above
    gnc_margin.png      sphere UFM in d = 2 with K > d + 1 classes: the learned one-vs-rest
                        margin against tau, approaching the regular K-gon's 1 - cos(2 pi / K)
    minority.png        imbalanced classes: the global optimum's minority cosine against the
                        ratio R (convex oracle) and the collapse threshold
    multilabel.png      pick-all-label UFM: NC1 over label sets and NC_m over gradient descent
    network_layers.png  an MLP on the bundled digits: NC1 of every layer (progressive
                        separation) and NC over epochs
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import ufm  # noqa: E402
from ufm.analysis import imbalance, landscape, oracle, theory  # noqa: E402
from ufm.running import figures as plots  # noqa: E402
from ufm.running import landscapes as points  # noqa: E402

DPI = 80  # small files: the README shows them at about 700 px wide
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _save(fig, out: Path, name: str) -> Path:
    path = out / name
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _bands(ax, x, curves, label, color, log=True, floor=1e-16):
    """Median over rows of `curves` (rows, T) with a min-max band (log scale: values below
    `floor`, such as a gap that is exactly 0 in round-off, drawn at `floor`)."""
    curves = np.abs(np.asarray(curves, float))
    if log:
        curves = np.maximum(curves, floor)
    logged = ~np.all(np.isnan(curves), axis=0)  # a run that converged logs no further points
    x, curves = np.asarray(x)[logged], curves[:, logged]
    ax.plot(x, np.nanmedian(curves, axis=0), color=color, label=label)
    ax.fill_between(x, np.nanmin(curves, axis=0), np.nanmax(curves, axis=0), color=color,
                    alpha=0.25, lw=0)
    if log:
        ax.set_yscale("log")


def default_run(out: Path, quick: bool, folder: Path | None = None) -> Path:
    """The built-in default experiment (quick: 600 steps), or its results `folder` if given."""
    if folder is None:
        folder = Path(tempfile.mkdtemp()) / "default"
        overrides = ["solver.steps=600", "solver.log_every=20"] if quick else []
        ufm.run(None, out=folder, overrides=overrides, progress=False)
    table, history = ufm.load_results(folder)
    losses = list(dict.fromkeys(table["loss"]))
    it = history["iteration"]
    # each run drawn to its last real step (a converged run is frozen there)
    keep = plots.run_ends({"row": np.asarray(table["row"]), "steps": np.asarray(table["steps"])},
                          it.size, it)
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.1), layout="constrained")
    panels = (("nc1", "NC1 (within-class variability)"), ("nc2_W", "NC2: classifiers vs ETF"),
              ("nc3", "NC3: classifiers vs class means"),
              ("rel_gap", "|f - f*| / |f*| (float32: floor ~1e-7)"))
    for ax, (key, title) in zip(axes, panels):
        for color, loss in zip(COLORS, losses):
            rows = np.flatnonzero(np.asarray(table["loss"] == loss))
            _bands(ax, it, np.where(keep[rows], history[key][rows], np.nan), loss, color,
                   floor=1e-8 if key == "rel_gap" else 1e-16)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("gradient-descent step")
    axes[0].legend(fontsize=8)
    fig.suptitle("ufm run: the weight-decay UFM (K = 10, d = 32, n = 50) reaches neural "
                 "collapse and its closed-form optimum for every loss (3 seeds)", fontsize=10)
    return _save(fig, out, "default_run.png")


def landscape_spectra(out: Path, quick: bool) -> Path:
    prob = ufm.Problem(num_classes=4, feature_dim=6 if not quick else 4, n_per_class=5 if not
                       quick else 2, loss="ce", dtype="float64")
    hyp = ufm.Hyper(lam_W=5e-3, lam_H=5e-3, lam_b=5e-3)
    named = {"origin": theory.origin(prob, hyp),
             "rank-2 critical point": points.rank_r_critical_point(
                 prob, hyp, rank=2, steps=300 if quick else 5000),
             "global minimum (ETF)": theory.optimum_point(prob, hyp)}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), layout="constrained")
    for ax, (name, point) in zip(axes, named.items()):
        p = landscape.probe(prob, hyp, point)
        eig = landscape.spectrum(prob, hyp, point)
        color = np.where(eig < -p.zero_tol, "tab:red", np.where(eig > p.zero_tol, "tab:blue",
                                                                "0.5"))
        ax.scatter(np.arange(eig.size), eig, s=5, c=color)
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(f"{name}: {p.verdict}, {int(p.n_negative)} negative", fontsize=9)
        ax.set_xlabel("Hessian eigenvalue index")
    fig.suptitle(f"Benign landscape (CE, K = {prob.num_classes}, d = {prob.feature_dim}): "
                 "saddles have negative curvature, the minimum has none", fontsize=10)
    return _save(fig, out, "landscape.png")


def phase_transition(out: Path, quick: bool) -> Path:
    """The origin's smallest Hessian eigenvalue against lam = lam_W = lam_H: the probe's, and
    the closed form lam - sigma, sigma = c_L / (K sqrt n) for each loss."""
    losses = ("ce",) if quick else ("ce", "ls", "focal", "mse")
    # Without a bias: the Hessian is then the (W, H) block alone, whose smallest eigenvalue the
    # closed form gives (a bias adds the loss's curvature in b, which caps it: 1/K for CE).
    problems = {loss: ufm.Problem(num_classes=4, feature_dim=3, n_per_class=2, loss=loss,
                                  bias=False, dtype="float64") for loss in losses}
    sigmas = {loss: theory.origin_singular_value(p, ufm.Hyper()) for loss, p in problems.items()}
    lams = np.geomspace(0.4 * min(sigmas.values()), 2.5 * max(sigmas.values()),
                        4 if quick else 25)
    fig, ax = plt.subplots(figsize=(6.2, 3.4), layout="constrained")
    for color, (loss, prob) in zip(COLORS, problems.items()):
        hypers = [ufm.Hyper(lam_W=lam, lam_H=lam, lam_b=0.0) for lam in lams]
        measured = [float(landscape.probe(prob, h, theory.origin(prob, h)).eig_min)
                    for h in hypers]
        predicted = [theory.origin_eig_min(prob, h) for h in hypers]
        ax.plot(lams, predicted, color=color, lw=1, label=f"{loss}: lam - sigma")
        ax.plot(lams, measured, "o", ms=3.5, color=color, label=f"{loss}: probe")
        ax.axvline(sigmas[loss], color=color, ls=":", lw=1)
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("lam_W = lam_H (dotted: each loss's sigma)")
    ax.set_ylabel("smallest Hessian eigenvalue")
    ax.set_title("The origin: a strict saddle for lam < sigma, the global minimum above",
                 fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out, "phase.png")


def gnc_margin(out: Path, quick: bool) -> Path:
    Ks = [7] if quick else [5, 8, 12, 20]
    taus = [1.0, 0.1] if quick else [2.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.07, 0.05]
    grid = {"name": "gnc_d2",
            "problem": {"num_classes": Ks, "feature_dim": 2, "n_per_class": 1, "loss": "ce",
                        "geometry": "sphere", "dtype": "float64"},
            "hyper": {"tau": taus},
            "solver": {"name": "lbfgs", "steps": 60 if quick else 1000, "tol": 1e-14},
            "run": {"seeds": [0] if quick else [0, 1, 2]}}
    folder = Path(tempfile.mkdtemp()) / "gnc"
    ufm.run(ufm.running.experiment.resolve(grid), out=folder, progress=False)
    table, _ = ufm.load_results(folder)
    best = table.groupby(["num_classes", "tau"])["gnc2_margin"].max()
    fig, ax = plt.subplots(figsize=(6.2, 3.4), layout="constrained")
    for color, K in zip(COLORS, Ks):
        ax.semilogx(best[K].index, best[K].to_numpy(), "o-", color=color, ms=4, label=f"K = {K}")
        ax.axhline(theory.known_code_margin(K, 2), color=color, ls="--", lw=0.8)
    ax.set_xlabel("temperature tau")
    ax.set_ylabel("one-vs-rest margin of W")
    ax.set_title("Generalized NC, d = 2: learned margin (dots) and the K-gon's (dashed)",
                 fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, out, "gnc_margin.png")


def minority_collapse(out: Path, quick: bool) -> Path:
    K, minority, n_minor = 6, [3, 4, 5], 2
    hyp = ufm.Hyper(lam_W=5e-3, lam_H=5e-3, lam_b=5e-3)
    base = ufm.Problem(num_classes=K, feature_dim=8, class_counts=(n_minor,) * K, loss="ce",
                       dtype="float64")
    ratios = np.geomspace(1.2, 200, 6 if quick else 30)
    cos, norms = [], []
    for R in ratios:
        counts = np.where(np.isin(np.arange(K), minority), n_minor, R * n_minor)
        found = oracle.convex_oracle(base, hyp, counts=counts)
        m = imbalance.imbalance_metrics(found.W, found.H_bar, np.arange(K), counts)
        cos.append(m["minority_cos"])
        norms.append(m["w_norm_ratio"])
    threshold = oracle.minority_collapse_threshold(base, hyp, minority=minority,
                                                   n_minority=n_minor)
    fig, ax = plt.subplots(figsize=(6.2, 3.4), layout="constrained")
    ax.semilogx(ratios, cos, "o-", ms=3, label="mean cosine between minority classifiers")
    ax.semilogx(ratios, norms, "s-", ms=3, label="minority / majority ||w_k||")
    ax.axvline(threshold, color="k", ls="--", lw=0.8, label=f"collapse at R = {threshold:.1f}")
    ax.set_xlabel("R = n_majority / n_minority")
    ax.set_title("Minority collapse at the global optimum (convex oracle, CE, K = 6)",
                 fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, out, "minority.png")


def multilabel(out: Path, quick: bool) -> Path:
    grid = {"name": "multilabel",
            "problem": {"num_classes": 4, "feature_dim": 8, "multiplicity_counts": [10, 4],
                        "loss": "pick_all_label", "dtype": "float64"},
            "hyper": {"lam_W": 1e-3, "lam_H": 1e-3, "lam_b": 1e-3, "lr": 1.0},
            "solver": {"steps": 500 if quick else 20000, "log_every": 50 if quick else 200},
            "run": {"seeds": [0] if quick else [0, 1, 2]}}
    folder = Path(tempfile.mkdtemp()) / "multilabel"
    ufm.run(ufm.running.experiment.resolve(grid), out=folder, progress=False)
    _, history = ufm.load_results(folder)
    fig, ax = plt.subplots(figsize=(6.2, 3.4), layout="constrained")
    for color, (key, label) in zip(COLORS, (("nc1", "NC1 over label sets"),
                                            ("nc2_W", "NC2 of the single-label classifiers"),
                                            ("nc_m", "NC_m: angle of pair means (radians)"))):
        _bands(ax, history["iteration"], history[key], label, color)
    ax.set_xlabel("gradient-descent step")
    ax.set_title("Multi-label UFM (pick-all-label, K = 4, pairs): NC_m -> 0", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, out, "multilabel.png")


def network_layers(out: Path, quick: bool) -> Path:
    from ufm import nets

    data = nets.data.load("digits")
    epochs = 4 if quick else 300
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.4), layout="constrained")
    for color, depth in zip(COLORS, (3,) if quick else (2, 4, 6)):
        model = nets.models.build("mlp", input_shape=data.input_shape, num_classes=10,
                                  width=128, depth=depth)
        settings = nets.TrainSettings(epochs=epochs, eval_every=max(2, epochs // 10))
        result = nets.train(model, data, settings, progress=False)
        layers = np.asarray(result.final["nc1_layers"])
        left.semilogy(np.arange(1, layers.size + 1), layers, "o-", color=color, ms=4,
                      label=f"depth {depth}: test acc {result.final['test_acc']:.3f}")
        right.semilogy(result.history["iteration"], result.history["nc1"], color=color,
                       label=f"depth {depth}")
    left.set_xlabel("hidden layer (the last one feeds the classifier)")
    left.set_ylabel("NC1 of the layer's features")
    left.set_title("Progressive separation: NC1 falls layer by layer", fontsize=10)
    left.legend(fontsize=8)
    right.set_xlabel("epoch")
    right.set_ylabel("NC1 of the last layer")
    right.set_title("MLP on the bundled digits (K = 10): NC over training", fontsize=10)
    return _save(fig, out, "network_layers.png")


# file name -> the function that draws it
FIGURES = {"default_run.png": default_run, "landscape.png": landscape_spectra,
           "phase.png": phase_transition, "gnc_margin.png": gnc_margin,
           "minority.png": minority_collapse, "multilabel.png": multilabel,
           "network_layers.png": network_layers}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (the tests)")
    parser.add_argument("--out", default=str(Path(__file__).parent),
                        help="folder for the PNGs (default: docs/)")
    parser.add_argument("--only", action="append", help="only this figure function "
                        "(repeatable)")
    parser.add_argument("--default-run", metavar="DIR",
                        help="draw default_run.png from this `ufm run` results folder")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for draw in FIGURES.values():
        if args.only and draw.__name__ not in args.only:
            continue
        t0 = time.perf_counter()
        if draw is default_run and args.default_run:
            path = draw(out, args.quick, Path(args.default_run))
        else:
            path = draw(out, args.quick)
        print(f"{path} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
