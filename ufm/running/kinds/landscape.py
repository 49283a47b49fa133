"""The landscape kinds: `ufm.analysis.landscape`'s experiments run on every (Problem, Hyper,
solver) of a
grid, one unit of work per configuration (docs/science.md, section 5).

    kind = "benign"         random starts and starts near every constructed saddle reach f*;
                            Hessian spectra at the saddles and the optimum
    kind = "origin_phase"   the origin's smallest Hessian eigenvalue against its formula, across
                            sqrt(lam_W lam_H) / (c_L / (K sqrt n)) ratios; where runs end
    kind = "saddle_escape"  plateau length near a saddle against the linear-escape prediction

The file is a grid file (`ufm.running.kinds.grid`) with a [landscape] table (LANDSCAPE_SECTION).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ufm.running import config, landscapes, results
from ufm.running.config import Experiment, Field, Schema
from ufm.running.figures import (
    draw_figure,
    pyplot,
    rows_by_label,
    save_figure,
    step_axis,
    symlog_edges,
)
from ufm.running.kind import Kind, Unit
from ufm.running.kinds import grid
from ufm.running.results import UnitResult
from ufm.running.tables import counts, fmt, format_table, series_labels


def _saddle_ok(value: str) -> bool:
    return value in ("origin", "collapsed") or (
        value.startswith("rank ") and value[5:].isdigit() and int(value[5:]) >= 1)


POSITIVE_LIST = (lambda v: bool(v) and min(v) > 0, "a non-empty list of numbers > 0")
LANDSCAPE_SECTION = config.explained({
    "random_starts": Field(200, "int", rule=(lambda v: v >= 0, "an integer >= 0")),
    "saddle_starts": Field(10, "int", rule=(lambda v: v >= 0, "an integer >= 0")),
    "epsilon": Field([1e-3], "floats", rule=POSITIVE_LIST),
    "ranks": Field([], "ints", rule=(lambda v: all(r >= 1 for r in v), "integers >= 1")),
    "reach_rtol": Field(1e-6, "float", rule=(lambda v: v > 0, "a number > 0")),
    "ratios": Field([0.5, 0.8, 0.9, 0.95, 1.05, 1.1, 1.25, 1.5, 2.0], "floats",
                    rule=POSITIVE_LIST),
    "saddle": Field("origin", "str", rule=(_saddle_ok, "'origin', 'collapsed' or 'rank r' "
                                           "with an integer r >= 1")),
    "drop": Field(1e-2, "float", rule=(lambda v: v > 0, "a number > 0")),
    "method": Field("auto", "str", choices=("auto", "dense", "lanczos")),
}, {
    "random_starts": "benign: runs from random starts, each probed where it ends",
    "saddle_starts": "benign: runs from perturbations of each constructed saddle",
    "epsilon": "distance of a start from its saddle (benign: the first value; saddle_escape: "
               "each)",
    "ranks": "benign: the rank-r saddles to build (empty: every r < min(K - 1, d))",
    "reach_rtol": "benign: a start reached f* when |f - f*| <= reach_rtol |f*|",
    "ratios": "origin_phase: sqrt(lam_W lam_H) over the origin's threshold c_L / (K sqrt(n))",
    "saddle": "saddle_escape: the saddle to start near",
    "drop": "saddle_escape: escaped once f < f(saddle) - drop |f(saddle)|",
    "method": "the Hessian's extreme eigenvalues: dense, Lanczos, or chosen by size",
})
SCHEMA = Schema({**grid.UFM_SECTIONS, "landscape": LANDSCAPE_SECTION},
                aliases=grid.SCHEMA.aliases)


def _pairs(experiment) -> list:
    configs = grid.configurations(experiment)
    return list(dict.fromkeys((c.problem, c.hyper, c.solver) for c in configs))


def units(experiment: Experiment, folder: Path) -> list[Unit]:
    """One unit per distinct (Problem, Hyper, solver); its rows are numbered when assembled."""
    return [Unit(f"config-{index:05d}", (), 1, index)
            for index in range(len(_pairs(experiment)))]


def run_unit(experiment: Experiment, unit: Unit, bar: Any, scratch: Path) -> UnitResult:
    index = unit.spec
    problem, hyper, solver_name = _pairs(experiment)[index]
    options, seeds = experiment.landscape, experiment.run["seeds"]
    base = {"row": None, "config": index, **grid.config_columns(problem, hyper, solver_name)}
    solver = grid.solver_settings(experiment, solver_name)
    histories, arrays = [], {}
    if experiment.kind == "benign":
        found, spectra_here, saddle_probes = landscapes.benign_landscape(
            problem, hyper, solver, random_starts=options["random_starts"],
            saddle_starts=options["saddle_starts"], epsilon=options["epsilon"][0],
            ranks=options["ranks"] or None, reach_rtol=options["reach_rtol"], seed=seeds[0],
            method=options["method"], progress=False)
        spectra = {f"{index}|{name}": eigs for name, eigs in spectra_here.items()}
        spectra.update({f"{index}|{name}|verdict": np.array(p.verdict)
                        for name, p in saddle_probes.items()})
        arrays = {"spectra.npz": spectra}
    elif experiment.kind == "origin_phase":
        found = landscapes.origin_phase(problem, hyper, solver, ratios=options["ratios"],
                                        seeds=seeds, method=options["method"], progress=False)
    else:
        found, history = landscapes.saddle_escape(
            problem, hyper, solver, saddle=options["saddle"], epsilons=options["epsilon"],
            seeds=seeds, drop=options["drop"], progress=False)
        histories = [{key: (v if key == "iteration" else v[k]) for key, v in history.items()}
                     for k in range(len(found))]
    return UnitResult([{**base, **r} for r in found], histories, arrays)


def _benign_summary(table: dict) -> str:
    labels, _ = series_labels(table)
    header = ["configuration", "start", "runs", "reached f*", "end-point verdicts"]
    lines = []
    for label, start in dict.fromkeys(zip(labels, table["start"])):
        rows = [i for i, lab in enumerate(labels) if lab == label and table["start"][i] == start]
        reached = np.mean(np.asarray(table["reached"])[rows])
        lines.append([label, str(start), str(len(rows)), f"{reached:.0%}",
                      counts(table["end_verdict"][i] for i in rows)])
    note = "(reached: |f - f*| <= reach_rtol |f*|, f* the closed form or the best found)"
    return "\n".join(format_table(header, lines) + [note])


def _origin_summary(table: dict) -> str:
    labels, _ = series_labels(table)
    header = ["configuration", "ratio", "eig_min", "formula", "origin verdict", "runs end at",
              "f - f*"]
    lines = []
    for label, ratio in dict.fromkeys(zip(labels, table["ratio"])):
        rows = [i for i, lab in enumerate(labels) if lab == label and table["ratio"][i] == ratio]
        i = rows[0]
        ends = ["zero" if table["w_norm"][k] < 1e-4 else "collapse" for k in rows]
        gap = np.max(np.abs(np.asarray(table["objective"])[rows] - table["f_star"][i]))
        lines.append([label, f"{ratio:g}", fmt(table["origin_eig_min"][i]),
                      fmt(table["origin_eig_min_formula"][i]), str(table["origin_verdict"][i]),
                      counts(ends), fmt(gap)])
    note = "(ratio = sqrt(lam_W lam_H) / (c_L / (K sqrt n)); the origin flips at 1)"
    return "\n".join(format_table(header, lines) + [note])


def _escape_summary(table: dict) -> str:
    labels, _ = series_labels(table)
    header = ["configuration", "epsilon", "saddle eig_min", "plateau (median)", "predicted",
              "escaped"]
    lines = []
    for label, eps in dict.fromkeys(zip(labels, table["epsilon"])):
        rows = [i for i, lab in enumerate(labels) if lab == label and table["epsilon"][i] == eps]
        plateau = np.asarray(table["plateau"], float)[rows]
        lines.append([label, f"{eps:g}", fmt(table["saddle_eig_min"][rows[0]]),
                      f"{np.nanmedian(plateau):.0f}" if not np.all(np.isnan(plateau)) else "-",
                      f"{table['predicted_plateau'][rows[0]]:.0f}",
                      f"{int(np.sum(np.asarray(table['escaped'])[rows]))}/{len(rows)}"])
    note = ("(predicted: ln(drop |f(saddle)| / epsilon) / ln(1 + lr |eig_min|), linear escape; "
            "compare slopes in epsilon)")
    return "\n".join(format_table(header, lines) + [note])


def _describe(experiment) -> str:
    return f"{len(_pairs(experiment))} configurations"


def _kind(name, summary, draw, quick, about) -> Kind:
    return Kind(name, SCHEMA, grid.check, units, run_unit, summary,
                lambda directory, table, metrics=None, x=None, y=None: draw(directory),
                _describe, notes=grid.notes, quick=grid.QUICK | quick, about=about)


# ----------------------------------------------------------------------------- figures


def plot_benign(directory: Path) -> list[Path]:
    """Fraction of starts reaching f* per start kind, and Hessian spectra at the saddles and
    at the optimum (symmetric-log axis: the saddles' negative eigenvalues left of zero)."""
    directory = Path(directory)
    table = results.read_table(directory / results.RESULTS)
    return (draw_figure("benign_reached.png", _benign_reached, directory, table)
            + draw_figure("benign_spectra.png", _benign_spectra, directory, table))


def _benign_reached(directory: Path, table) -> Path:
    plt = pyplot()
    labels, series = rows_by_label(table)
    starts = list(dict.fromkeys(table["start"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(series) * len(starts) / 3), 4.0),
                           layout="constrained")
    width = 0.8 / len(starts)
    for j, start in enumerate(starts):
        fractions = []
        for label in series:
            rows = [
                i for i, lab in enumerate(labels) if lab == label and table["start"][i] == start
            ]
            fractions.append(np.mean(np.asarray(table["reached"])[rows]) if rows else np.nan)
        ax.bar(np.arange(len(series)) + j * width, fractions, width, label=start)
    ax.set_xticks(np.arange(len(series)) + 0.4 - width / 2, series, rotation=20, ha="right",
                  fontsize=8)
    ax.set_ylabel("fraction of starts reaching f*")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncols=2)
    return save_figure(fig, directory / "benign_reached.png")


def _benign_spectra(directory: Path, table) -> list[Path]:
    plt = pyplot()
    labels, _ = rows_by_label(table)
    written = []
    spectra_path = directory / "spectra.npz"
    if spectra_path.is_file():
        with np.load(spectra_path, allow_pickle=False) as data:
            spectra = {k: data[k] for k in data.files if not k.endswith("|verdict")}
        configs = sorted({int(k.split("|")[0]) for k in spectra})
        config_label = {int(c): lab for c, lab in zip(table["config"], labels)}
        cols = min(4, len(configs))
        rows_n = -(-len(configs) // cols)
        fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.2 * rows_n),
                                 layout="constrained", squeeze=False)
        for ax, c in zip(axes.flat, configs):
            keys = [k for k in spectra if int(k.split("|")[0]) == c]
            top = max(float(np.nanmax(np.abs(spectra[k]))) for k in keys)
            edges = symlog_edges(top, linthresh=1e-4)
            for key in keys:
                ax.hist(spectra[key], bins=edges, histtype="step", label=key.split("|")[1])
            ax.set_xscale("symlog", linthresh=1e-4)
            ax.set_yscale("log")
            ax.set_title(config_label.get(c, str(c)), fontsize=9)
            ax.set_xlabel("Hessian eigenvalue")
            ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(configs):]:
            ax.axis("off")
        written.append(save_figure(fig, directory / "benign_spectra.png"))
    return written


def plot_origin_phase(directory: Path) -> list[Path]:
    """Smallest eigenvalue at the origin (measured and formula) and where random starts end,
    against sqrt(lam_W lam_H) / (c_L / (K sqrt n))."""
    table = results.read_table(Path(directory) / results.RESULTS)
    return draw_figure("origin_phase.png", _origin_phase, Path(directory), table)


def _origin_phase(directory: Path, table) -> list[Path]:
    plt = pyplot()
    labels, series = rows_by_label(table)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for label in series:
        rows = [i for i, lab in enumerate(labels) if lab == label]
        ratio = np.asarray(table["ratio"])[rows]
        (line,) = ax1.plot(ratio, np.asarray(table["origin_eig_min_formula"])[rows], "-",
                           label=f"{label} formula")
        ax1.plot(ratio, np.asarray(table["origin_eig_min"])[rows], "o", color=line.get_color(),
                 mfc="none", label=f"{label} measured")
        ax2.plot(ratio, np.asarray(table["w_norm"])[rows], "o", color=line.get_color(), label=label)
    for ax in (ax1, ax2):
        ax.axvline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xlabel("sqrt(lam_W lam_H) / (c_L / (K sqrt n))")
        ax.grid(alpha=0.3)
    ax1.axhline(0.0, color="k", lw=0.8)
    ax1.set_ylabel("smallest Hessian eigenvalue at the origin")
    ax2.set_ylabel("||W||_F at the end of a random-start run")
    ax1.legend(fontsize=7)
    return [save_figure(fig, directory / "origin_phase.png")]


def plot_saddle_escape(directory: Path) -> list[Path]:
    """Plateau length against the start's distance from the saddle and against 1/|eig_min|;
    objective trajectories."""
    directory = Path(directory)
    table = results.read_table(directory / results.RESULTS)
    written = draw_figure("saddle_escape.png", _saddle_escape, directory, table)
    if (directory / results.HISTORY).is_file():
        written += draw_figure("escape_trajectories.png", _escape_trajectories, directory,
                               table)
    return written


def _saddle_escape(directory: Path, table) -> Path:
    plt = pyplot()
    labels, series = rows_by_label(table)
    eps = np.asarray(table["epsilon"], float)
    plateau = np.asarray(table["plateau"], float)
    predicted = np.asarray(table["predicted_plateau"], float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for label in series:
        rows = np.array([i for i, lab in enumerate(labels) if lab == label])
        (line,) = ax1.plot(eps[rows], plateau[rows], "o", mfc="none", label=f"{label} measured")
        order = np.argsort(eps[rows])
        # The linear phase sets the slope; the nonlinear exit adds a constant: fit only that.
        offset = np.nanmedian(plateau[rows] - predicted[rows])
        ax1.plot(eps[rows][order], predicted[rows][order] + offset, "-", color=line.get_color(),
                 label=f"{label} linear prediction + {offset:.0f}")
    ax1.set_xscale("log")
    ax1.set_xlabel("distance of the start from the saddle (epsilon)")
    ax1.set_ylabel("plateau length (iterations)")
    ax1.legend(fontsize=6)
    inv = 1.0 / np.abs(np.asarray(table["saddle_eig_min"], float))
    sc = ax2.scatter(inv, plateau, c=np.log10(eps), cmap="viridis")
    fig.colorbar(sc, ax=ax2, label="log10 epsilon")
    ax2.set_xlabel("1 / |smallest eigenvalue at the saddle|")
    ax2.set_ylabel("plateau length (iterations)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    return save_figure(fig, directory / "saddle_escape.png")


def _escape_trajectories(directory: Path, table) -> Path:
    plt = pyplot()
    eps = np.asarray(table["epsilon"], float)
    history = results.read_history(directory / results.HISTORY, len(table["row"]))
    objective, iteration = history["objective"], history["iteration"]
    fig, ax = plt.subplots(figsize=(6, 3.8), layout="constrained")
    cmap = plt.get_cmap("viridis")
    span = np.ptp(np.log10(eps)) or 1.0
    for k in range(objective.shape[0]):
        ax.plot(iteration, objective[k], lw=0.8,
                color=cmap((np.log10(eps[k]) - np.log10(eps).min()) / span))
    step_axis(ax)
    ax.set_ylabel("objective (colour: log10 epsilon)")
    ax.grid(alpha=0.3)
    return save_figure(fig, directory / "escape_trajectories.png")


KINDS = {
    "benign": _kind("benign", _benign_summary, plot_benign,
                    {"landscape": {"random_starts": 3, "saddle_starts": 1}},
                    "The benign-landscape check: for every configuration, runs from random "
                    "starts and from near constructed saddles (the origin, the collapsed point, "
                    "rank-r points), each end point probed by the Hessian (not critical, strict "
                    "saddle, second-order stationary); a row per start with its verdict and "
                    "whether it reached f*, and the Hessian spectra at every saddle."),
    "origin_phase": _kind("origin_phase", _origin_summary, plot_origin_phase,
                          {"landscape": {"ratios": [0.5, 2.0]}},
                          "The origin's phase transition: sqrt(lam_W lam_H) swept across the "
                          "threshold at which the origin turns from a strict saddle into a "
                          "minimum; a row per ratio with the smallest eigenvalue there, measured "
                          "and by formula, and where random starts end."),
    "saddle_escape": _kind("saddle_escape", _escape_summary, plot_saddle_escape, {},
                           "Escape from a strict saddle: runs started at distance epsilon from "
                           "it; a row per start with the plateau's length, against epsilon and "
                           "the saddle's negative eigenvalue."),
}
