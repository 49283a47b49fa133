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

import numpy as np

from ufm.running import figures as plots
from ufm.running import landscapes
from ufm.running.config import Field, Schema
from ufm.running.kind import Kind, Unit
from ufm.running.kinds import grid
from ufm.running.results import UnitResult
from ufm.running.tables import counts, fmt, format_table, series_labels


def _saddle_ok(value: str) -> bool:
    return value in ("origin", "collapsed") or (
        value.startswith("rank ") and value[5:].isdigit() and int(value[5:]) >= 1)


POSITIVE_LIST = (lambda v: bool(v) and min(v) > 0, "a non-empty list of numbers > 0")
LANDSCAPE_SECTION = {
    "random_starts": Field(200, "int", rule=(lambda v: v >= 0, "an integer >= 0")),
    "saddle_starts": Field(10, "int", rule=(lambda v: v >= 0, "an integer >= 0")),
    # distance of starts from a saddle (benign: the first; escape: each)
    "epsilon": Field([1e-3], "floats", rule=POSITIVE_LIST),
    # rank-r saddles to build; empty: every r < min(K-1, d)
    "ranks": Field([], "ints", rule=(lambda v: all(r >= 1 for r in v), "integers >= 1")),
    # benign: a start reached f* when |f - f*| <= reach_rtol |f*|
    "reach_rtol": Field(1e-6, "float", rule=(lambda v: v > 0, "a number > 0")),
    "ratios": Field([0.5, 0.8, 0.9, 0.95, 1.05, 1.1, 1.25, 1.5, 2.0], "floats",
                    rule=POSITIVE_LIST),
    "saddle": Field("origin", "str", rule=(_saddle_ok, "'origin', 'collapsed' or 'rank r' "
                                           "with an integer r >= 1")),
    # saddle_escape: escaped when f < f(saddle) - drop |f(saddle)|
    "drop": Field(1e-2, "float", rule=(lambda v: v > 0, "a number > 0")),
    "method": Field("auto", "str", choices=("auto", "dense", "lanczos")),
}
SCHEMA = Schema({**grid.UFM_SECTIONS, "landscape": LANDSCAPE_SECTION},
                aliases=grid.SCHEMA.aliases)


def _pairs(experiment) -> list:
    configs = grid.configurations(experiment)
    return list(dict.fromkeys((c.problem, c.hyper, c.solver) for c in configs))


def units(experiment, folder) -> list[Unit]:
    """One unit per distinct (Problem, Hyper, solver); its rows are numbered when assembled."""
    return [Unit(f"config-{index:05d}", (), 1, index)
            for index in range(len(_pairs(experiment)))]


def run_unit(experiment, unit: Unit, bar, scratch) -> UnitResult:
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


def _kind(name, summary, draw, quick) -> Kind:
    return Kind(name, SCHEMA, grid.check, units, run_unit, summary,
                lambda directory, table, metrics=None, x=None, y=None: draw(directory),
                _describe, notes=grid.notes, quick=grid.QUICK | quick)


KINDS = {
    "benign": _kind("benign", _benign_summary, plots.plot_benign,
                    {"landscape": {"random_starts": 3, "saddle_starts": 1}}),
    "origin_phase": _kind("origin_phase", _origin_summary, plots.plot_origin_phase,
                          {"landscape": {"ratios": [0.5, 2.0]}}),
    "saddle_escape": _kind("saddle_escape", _escape_summary, plots.plot_saddle_escape, {}),
}
