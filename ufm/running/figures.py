"""Figures of a results folder: every NC metric and the gap to the closed-form optimum against
iteration, log scale, one line per configuration (median over seeds, min-max band), and the
figures of the other kinds.

Figures never lose or fail a run: the results are complete before any is drawn, each figure is
drawn in isolation (`draw_figure`: one that fails prints one line naming it and the reason, and
the others are still written), and every plot function takes what a real table holds: runs
that diverged (drawn to their last finite point and marked x, left out of final-value
figures), NaN or zero metrics on log axes, an axis with one value, one row, a missing column.
"""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np

from ufm.running import results
from ufm.running.tables import (
    CONFIG_COLUMNS,
    all_balanced,
    cross_loss_spread,
    determined_by,
    label_value,
    series_labels,
)

# (history key, axis label, y scale: "log", "linear" or "fraction" (symmetric-log near 0, for
# a share of samples that is often exactly 0))
TRAJECTORY_FIGURES = (
    ("rel_gap", "relative gap to f*  |f - f*| / |f*|", "log"),
    ("nc1", "NC1  tr(Σ_W Σ_B⁺)/K", "log"),
    ("nc2_W", "NC2 (classifier)  ‖WWᵀ/‖WWᵀ‖ − E‖", "log"),
    ("nc2_H", "NC2 (features)  ‖MᵀM/‖MᵀM‖ − E‖", "log"),
    ("nc3", "NC3  ‖WM/‖WM‖ − E‖", "log"),
    ("nc4", "NC4  share of samples where NCC ≠ argmax", "fraction"),
    ("nc_m", "NC_m  angle(μ_S − μ_G, Σ_{k∈S} (μ_k − μ_G))", "log"),
    ("objective", "objective f", "log"),
)
IGNORED_COLUMNS = {"row", "group", "seed", "status", "steps", "diverged_at", "seconds", "f_star",
                   "optimum_is_zero"}
# A log axis shows values in this range; beyond it (a run about to overflow) matplotlib's tick
# arithmetic itself overflows.
LOG_RANGE = (1e-300, 1e150)
# The symmetric-log axis of shares of samples: linear below one in a thousand.
FRACTION_LINTHRESH = 1e-3
FIGURE_FAILED = "not drawn"


def draw_figure(name: str, draw, *args, **kwargs) -> list[Path]:
    """Call `draw` (returning a path or a list of paths) in isolation: a figure that fails
    prints one line ("ufm: figure NAME not drawn: the reason") and gives [] so the others are
    still drawn and the run still succeeds."""
    try:
        written = draw(*args, **kwargs)
    except Exception as err:  # a figure never fails a finished run: say so and go on
        _pyplot().close("all")
        reason = str(err).splitlines()[0] if str(err) else ""
        print(f"ufm: figure {name} {FIGURE_FAILED}: {type(err).__name__}: {reason}",
              file=sys.stderr)
        return []
    return [written] if isinstance(written, Path) else list(written or [])


def nan_stats(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(median, min, max) over axis 0 ignoring NaN; NaN (without a warning) where a column has
    no finite value."""
    data = np.atleast_2d(np.asarray(data, float))
    data = np.where(np.isfinite(data), data, np.nan)
    some = ~np.all(np.isnan(data), axis=0)
    mid, lo, hi = (np.full(data.shape[1], np.nan) for _ in range(3))
    if some.any():
        kept = data[:, some]
        mid[some] = np.nanmedian(kept, axis=0)
        lo[some], hi[some] = np.nanmin(kept, axis=0), np.nanmax(kept, axis=0)
    return mid, lo, hi


def shown_on(values, scale: str) -> np.ndarray:
    """Values as an axis of `scale` can show them: non-finite ones dropped (NaN), and on a log
    axis also those <= 0 or outside LOG_RANGE."""
    values = np.asarray(values, float)
    ok = np.isfinite(values)
    if scale == "log":
        ok &= (values >= LOG_RANGE[0]) & (values <= LOG_RANGE[1])
    return np.where(ok, values, np.nan)


def _short_number(value: float, _=None) -> str:
    """A step count for a tick: 0, 500, 12.5k, 2M."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def step_axis(ax, label: str = "iteration") -> None:
    """An x axis of steps or epochs with a few short tick labels at any count (5k, 10k, ...)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True, min_n_ticks=2))
    ax.xaxis.set_major_formatter(FuncFormatter(_short_number))
    ax.set_xlabel(label)


def _set_scale(ax, scale: str) -> None:
    if scale == "log" and any(line.get_ydata().size and np.isfinite(
            np.asarray(line.get_ydata(), float)).any() for line in ax.get_lines()):
        ax.set_yscale("log")
    elif scale == "fraction":
        ax.set_yscale("symlog", linthresh=FRACTION_LINTHRESH, linscale=0.5)
        ax.set_ylim(-FRACTION_LINTHRESH / 4, 1.05)


def run_ends(table: dict, n_points: int, iteration) -> np.ndarray:
    """(rows, T) mask of the log points each run really reached: a run that stopped
    (converged, diverged, or on a plateau) is frozen there, and the history repeats its last
    point to the end of the batch's logging; keep up to the first log point at or after its
    last step."""
    steps = results.float_column(table, "steps") if "steps" in table else None
    n_rows = len(table["row"])
    if steps is None:
        return np.ones((n_rows, n_points), bool)
    iteration = np.asarray(iteration, float)[:n_points]
    before = np.concatenate([[-np.inf], iteration[:-1]])
    keep = before[None, :] < np.where(np.isnan(steps), np.inf, steps)[:, None]
    return keep


def draw_trajectories(ax, iteration, values, labels, key, scale, keep=None, diverged=None):
    """One line per label (median over its rows, min-max band), each run up to its last real
    log point (`keep`), runs that diverged ending in an x (`diverged`)."""
    values = np.asarray(values, float)
    if keep is not None:
        values = np.where(keep, values, np.nan)
    if key == "rel_gap":
        values = np.abs(values)
    values = shown_on(values, "log" if scale == "log" else "linear")
    for label in dict.fromkeys(labels):
        rows = [i for i, lab in enumerate(labels) if lab == label]
        mid, lo, hi = nan_stats(values[rows])
        if np.all(np.isnan(mid)):
            continue
        (line,) = ax.plot(iteration, mid, label=label, lw=1.5)
        if len(rows) > 1:
            ax.fill_between(iteration, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
        for i in rows if diverged is not None else ():
            finite = np.flatnonzero(np.isfinite(values[i]))
            if diverged[i] and finite.size:
                last = finite[-1]
                ax.plot(iteration[last], values[i, last], "x", color=line.get_color(), ms=7)
    _set_scale(ax, scale)
    step_axis(ax)
    ax.grid(True, which="major", alpha=0.3)


def figure_legend(fig, axes, max_inside: int = 8) -> None:
    """One legend per figure, with every series drawn in any of its panels: inside the single
    panel for a few series, else outside to the right (in columns for many)."""
    handles = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if not handles:
        return
    short = max(map(len, handles)) <= 40  # long labels inside would squeeze the panel away
    if len(np.ravel(axes)) == 1 and len(handles) <= max_inside and short:
        np.ravel(axes)[0].legend(handles.values(), handles.keys(), fontsize=8)
    else:
        fig.legend(handles.values(), handles.keys(), loc="outside right upper",
                   fontsize=7 if len(handles) <= 30 else 6, ncols=1 + len(handles) // 30)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# What a subtitle names when it is the same for the whole table: (column, short name).
SETTINGS = (("num_classes", "K"), ("feature_dim", "d"), ("n_per_class", "n"), ("loss", "loss"),
            ("geometry", ""), ("lam_W", "λ_W"), ("lam_H", "λ_H"), ("lam_b", "λ_b"),
            ("tau", "τ"), ("solver", ""), ("lr", "lr"), ("dtype", ""))


def settings_line(table: dict) -> str:
    """The settings shared by every row of a UFM table, for a figure's subtitle ("K=10, d=32,
    n=50, wd, λ_W=0.0005, ..."); the varying ones are the legend's. Penalties that do not
    apply (no W/H penalty off the weight-decay geometry, no bias) are left out."""
    same = lambda c: c in table and len({str(v) for v in table[c]}) == 1
    geometry = str(table["geometry"][0]) if same("geometry") else None
    parts = []
    for column, short in SETTINGS:
        if not same(column) or str(table[column][0]) in ("", "nan"):
            continue
        if column in ("lam_W", "lam_H") and geometry not in (None, "wd"):
            continue
        if column == "lam_b" and same("bias") and not _truthy(table["bias"][0]):
            continue
        if column == "tau" and float(table[column][0]) == 1.0 and geometry == "wd":
            continue
        value = label_value(table[column][0])
        parts.append(f"{short}={value}" if short else value)
    seeds = len(set(map(str, table["seed"]))) if "seed" in table else 0
    if seeds:
        parts.append(f"{seeds} seed{'s' if seeds > 1 else ''}")
    return ", ".join(parts)


def _truthy(value) -> bool:
    return str(value).lower() in ("true", "1", "1.0")


GRID_METRICS = ("nc1", "nc2_W", "nc3", "rel_gap")


def _numeric_axes(table: dict) -> list[str]:
    """Configuration columns that vary across the table and hold numbers (seeds excluded)."""
    axes = []
    for c in CONFIG_COLUMNS:
        if c in table and len(set(map(str, table[c]))) > 1 and np.issubdtype(
                np.asarray(table[c]).dtype, np.number) and not np.any(
                np.isnan(np.asarray(table[c], float))):  # an axis only where every row has it
            axes.append(c)
    return axes


def _diverged(table: dict) -> np.ndarray:
    if "status" not in table:
        return np.zeros(len(table["row"]), bool)
    return np.array([str(s) == "diverged" for s in table["status"]])


def _final(table, metric, rows):
    """A metric's final values on `rows`, without the runs that diverged (their metrics are
    those of the last finite point before the blow-up, not of a result)."""
    diverged = _diverged(table)
    rows = [i for i in rows if not diverged[i]]
    values = results.float_column(table, metric)[rows]
    return np.abs(values) if metric == "rel_gap" else values


def plot_grid(directory, table, metrics=None, x=None, y=None) -> list[Path]:
    """Final metrics over the grid's numeric axes: heatmaps over two axes (median over seeds;
    one panel per value of the other varying fields; a cell whose runs all diverged is grey and
    says so), or lines over one axis with a min-max band over seeds. Axes are chosen from the
    grid unless x / y name them. Each figure is drawn in isolation (`draw_figure`)."""
    axes = _numeric_axes(table)
    x = x or (axes[0] if axes else None)
    if x is None:
        return []
    # A y that is a function of x (zipped with it) adds no second dimension: skip it.
    independent = lambda a: len(set(zip(map(str, table[x]), map(str, table[a])))) > len(
        set(map(str, table[x])))
    y = y or next((a for a in axes if a != x and independent(a)), None)
    others = [c for c in CONFIG_COLUMNS if c in table and c not in (x, y)
              and len(set(map(str, table[c]))) > 1 and (c not in axes or independent(c))
              and not (c == "class_counts" and all_balanced(table))]
    # A column the others (and the axes) determine (the label sets, given K and the counts)
    # tells no panel apart.
    shown = [a for a in (x, y) if a is not None]
    for c in list(others):  # one at a time: of two that determine each other, one stays
        if determined_by(table, c, shown + [o for o in others if o != c]):
            others.remove(c)
    n_rows = len(table["row"])
    panel_of = [", ".join(f"{c}={label_value(table[c][i])}" for c in others) or "all"
                for i in range(n_rows)]
    panels = list(dict.fromkeys(panel_of))
    written = []
    for metric in [m for m in (metrics or GRID_METRICS) if m in table]:
        if np.all(np.isnan(results.float_column(table, metric))):
            continue
        if y is not None:
            name = f"grid_{metric}_{x}_{y}.png"
            written += draw_figure(name, _grid_heatmap, Path(directory) / name, table, metric,
                                   x, y, panels, panel_of)
        else:
            name = f"grid_{metric}_{x}.png"
            written += draw_figure(name, _grid_lines, Path(directory) / name, table, metric, x,
                                   panels, panel_of)
    return written


def _grid_heatmap(path, table, metric, x, y, panels, panel_of) -> Path:
    plt = _pyplot()
    n_rows = len(table["row"])
    xs = sorted(set(np.asarray(table[x], float)))
    ys = sorted(set(np.asarray(table[y], float)))
    cells = {}  # (panel, iy, ix) -> (log10 median or NaN, every run there diverged)
    for panel in panels:
        for iy, yv in enumerate(ys):
            for ix, xv in enumerate(xs):
                rows = [i for i in range(n_rows) if panel_of[i] == panel
                        and float(table[x][i]) == xv and float(table[y][i]) == yv]
                if not rows:
                    continue
                value = nan_stats(shown_on(_final(table, metric, rows), "log")[:, None])[0][0]
                cells[panel, iy, ix] = (np.log10(value) if np.isfinite(value) else np.nan,
                                        bool(_diverged(table)[rows].all()))
    finite = [v for v, _ in cells.values() if np.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if low == high:
        low, high = low - 0.5, high + 0.5
    fig, axs = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8),
                            layout="constrained", squeeze=False)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    for ax, panel in zip(axs.flat, panels):
        shown = np.full((len(ys), len(xs)), np.nan)
        for (p, iy, ix), (value, all_diverged) in cells.items():
            if p != panel:
                continue
            shown[iy, ix] = value
            if all_diverged:
                ax.text(ix, iy, "diverged", ha="center", va="center", fontsize=7)
        im = ax.imshow(np.ma.masked_invalid(shown), origin="lower", aspect="auto", cmap=cmap,
                       vmin=low, vmax=high)
        ax.set_xticks(range(len(xs)), [f"{v:.3g}" for v in xs], rotation=45, fontsize=7)
        ax.set_yticks(range(len(ys)), [f"{v:.3g}" for v in ys], fontsize=7)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(panel, fontsize=8)
        fig.colorbar(im, ax=ax, label=f"log10 {metric} (median over seeds)")
    fig.suptitle(settings_line(table), fontsize=8)
    return _save(fig, path)


def _grid_lines(path, table, metric, x, panels, panel_of) -> Path:
    plt = _pyplot()
    n_rows = len(table["row"])
    fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
    for panel in panels:
        rows = [i for i in range(n_rows) if panel_of[i] == panel]
        xs = sorted(set(np.asarray(table[x], float)[rows]))
        stats = [nan_stats(shown_on(_final(table, metric, [i for i in rows
                                                           if float(table[x][i]) == xv]),
                                    "log")[:, None]) for xv in xs]
        mid, lo, hi = (np.array([s[j][0] for s in stats]) for j in range(3))
        (line,) = ax.plot(xs, mid, "o-", label=panel)
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    values = sorted(set(np.asarray(table[x], float)))
    ax.set_xscale("log" if min(values) > 0 else "linear")
    if len(values) <= 12:  # the grid's own values as ticks, not powers of ten
        from matplotlib.ticker import NullLocator

        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(values, [f"{v:.3g}" for v in values])
    _set_scale(ax, "log")
    ax.set_xlabel(x)
    ax.set_ylabel(f"final {metric} (median, min-max over seeds)")
    ax.set_title(textwrap.fill(settings_line(table), 80), fontsize=7)
    figure_legend(fig, ax)
    return _save(fig, path)


def check_figure_options(table: dict, history: dict, metrics=None, x=None, y=None) -> None:
    """ValueError naming a --metric, --x or --y that this grid's folder cannot draw, with the
    names it can."""
    drawable = [key for key, _, _ in TRAJECTORY_FIGURES if key in history]
    drawable += [c for c in table if c not in drawable and c not in IGNORED_COLUMNS
                 and c not in CONFIG_COLUMNS and np.issubdtype(np.asarray(table[c]).dtype,
                                                               np.number)]
    for metric in metrics or ():
        if metric not in drawable:
            raise ValueError(f"--metric {metric!r} is not in this results folder: one of "
                             f"{', '.join(drawable)}")
    axes = _numeric_axes(table)
    for flag, name in (("--x", x), ("--y", y)):
        if name is not None and name not in axes:
            allowed = (f"one of {', '.join(axes)}" if axes else
                       "this grid has no numeric axis that varies")
            raise ValueError(f"{flag} {name!r} is not a numeric axis of this grid: {allowed}")
    if x is not None and x == y:
        raise ValueError(f"--x and --y are both {x!r}: choose two different axes")


def plot_grid_results(directory, metrics=None, x=None, y=None) -> list[Path]:
    """The figures of a grid's results folder (trajectories, overview, final metrics over the
    grid's axes, and GNC, imbalance and layer-wise figures where they apply), each drawn in
    isolation; returns the files written. Any results folder: `ufm.running.experiment.figures`."""
    directory = Path(directory)
    table = results.read_table(directory / results.RESULTS)
    history = results.read_history(directory / results.HISTORY, len(table["row"]))
    check_figure_options(table, history, metrics, x, y)
    written = []
    if history.get("iteration") is not None and len(table["row"]):
        figures = [f for f in TRAJECTORY_FIGURES if f[0] in history
                   and (metrics is None or f[0] in metrics)
                   and np.isfinite(np.asarray(history[f[0]], float)).any()]
        for figure in figures:
            written += draw_figure(f"{figure[0]}.png", _trajectory_figure, directory, table,
                                   history, [figure], f"{figure[0]}.png")
        if figures:
            written += draw_figure("overview.png", _trajectory_figure, directory, table,
                                   history, figures, "overview.png")
    written += plot_grid(directory, table, metrics, x, y)
    if "gnc2_margin" in table and len(set(map(str, table.get("tau", [])))) > 1:
        written += draw_figure("gnc_margin.png", plot_gnc_margin, directory, table)
    if "minority_cos" in table:
        written += draw_figure("imbalance.png", plot_imbalance, directory, table)
    if "nc1_layer0" in table:
        written += draw_figure("layer_nc1.png", plot_layer_nc1, directory, table)
    return written


def _trajectory_figure(directory, table, history, figures, filename) -> Path:
    """One panel per (key, label, scale) of `figures` against iteration: one figure for a
    metric, the overview for several; one legend, the shared settings as the title."""
    plt = _pyplot()
    labels, _ = series_labels(table)
    n_series = len(set(labels))
    width = 5.5 if n_series <= 8 else 8.5 + 2.5 * (n_series // 30)
    iteration = np.asarray(history["iteration"])
    keep = run_ends(table, iteration.size, iteration)
    diverged = _diverged(table)
    cols = min(3, len(figures))
    rows = -(-len(figures) // cols)
    size = (width, 3.8) if len(figures) == 1 else (4.6 * cols + width - 5.5, 3.4 * rows)
    fig, axes = plt.subplots(rows, cols, figsize=size, layout="constrained", squeeze=False)
    for ax, (key, ylabel, scale) in zip(axes.flat, figures):
        draw_trajectories(ax, iteration, history[key], labels, key, scale, keep, diverged)
        if len(figures) == 1:
            ax.set_ylabel(ylabel)
        else:
            ax.set_title(ylabel, fontsize=9)
    for ax in list(axes.flat)[len(figures):]:
        ax.axis("off")
    figure_legend(fig, axes.flat[:len(figures)])
    note = " (x: diverged)" if diverged.any() else ""
    fig.suptitle(settings_line(table) + note, fontsize=8)
    return _save(fig, Path(directory) / filename)


def plot_gnc_margin(directory, table) -> list[Path]:
    """GNC margin (min one-vs-rest distance of the normalized classifiers) against tau: one
    panel per feature dimension d, one line per K (best over seeds), the softmax code's margin
    dashed where it is known exactly."""
    plt = _pyplot()
    K_col, d_col = np.asarray(table["num_classes"], int), np.asarray(table["feature_dim"], int)
    tau = np.asarray(table["tau"], float)
    margin = np.asarray(table["gnc2_margin"], float)
    code = results.float_column(table, "code_margin")
    dims = sorted(set(d_col))
    fig, axes = plt.subplots(1, len(dims), figsize=(3.6 * len(dims), 3.4), layout="constrained",
                             squeeze=False)
    for ax, d in zip(axes.flat, dims):
        for K in sorted(set(K_col[d_col == d])):
            rows = (d_col == d) & (K_col == K)
            taus = sorted(set(tau[rows]))
            best = [nan_stats(margin[rows & (tau == t)][:, None])[2][0] for t in taus]
            (line,) = ax.plot(taus, best, "o-", label=f"K={K}")
            known = code[rows]
            if np.isfinite(known).any():
                ax.axhline(np.nanmax(known), color=line.get_color(), ls="--", lw=1)
        ax.set_xscale("log")
        _set_scale(ax, "log")
        ax.set_xlabel("tau")
        ax.set_title(f"d = {d}", fontsize=9)
        ax.legend(fontsize=7)
    axes.flat[0].set_ylabel("one-vs-rest margin (dashed: softmax code)")
    return [_save(fig, Path(directory) / "gnc_margin.png")]


def plot_layer_nc1(directory, table) -> list[Path]:
    """Final NC1 of every representation of a deep UFM (layer 0 = the free features, the last
    = the classifier's input), one line per configuration (median over seeds, min-max band)."""
    plt = _pyplot()
    labels, _ = series_labels(table)
    logged = sorted(int(key[len("nc1_layer"):]) for key in table if key.startswith("nc1_layer"))
    fig, ax = plt.subplots(figsize=(6, 3.8), layout="constrained")
    for label in dict.fromkeys(labels):
        rows = [i for i, lab in enumerate(labels) if lab == label]
        layers = [k for k in logged
                  if np.isfinite(results.float_column(table, f"nc1_layer{k}")[rows]).any()]
        if not layers:
            continue
        values = np.array([results.float_column(table, f"nc1_layer{k}")[rows] for k in layers])
        values = np.maximum(values, 1e-32)
        (line,) = ax.plot(layers, np.median(values, axis=1), "o-", label=label)
        ax.fill_between(layers, values.min(axis=1), values.max(axis=1),
                        color=line.get_color(), alpha=0.2, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("layer (0 = free features)")
    ax.set_ylabel("final NC1")
    ax.legend(fontsize=7)
    return [_save(fig, Path(directory) / "layer_nc1.png")]


def plot_imbalance(directory, table) -> list[Path]:
    """Minority collapse against the imbalance ratio n_max/n_min: mean cosine between minority
    classifiers (solver: markers per seed; convex oracle: line) with the oracle's collapse
    threshold dashed; minority/majority norm ratios; |f - f_oracle|/|f_oracle|."""
    plt = _pyplot()
    counts = [np.array(str(c).split(), float) for c in table["class_counts"]]
    ratio = np.array([c.max() / c.min() if c.size else 1.0 for c in counts])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    order = np.argsort(ratio, kind="stable")
    axes[0].plot(ratio[order], results.float_column(table, "minority_cos")[order], "o", ms=4,
                 label="solver (each seed)")
    oracle_cos = results.float_column(table, "oracle_minority_cos")
    if np.isfinite(oracle_cos).any():
        axes[0].plot(ratio[order], oracle_cos[order], "-", label="convex oracle")
    threshold = results.float_column(table, "collapse_ratio")
    for value in sorted(set(threshold[np.isfinite(threshold)])):
        axes[0].axvline(value, color="k", ls="--", lw=1)
        axes[0].text(value, -0.05, f" R*={value:.3g}", fontsize=7)
    axes[0].axhline(1.0, color="gray", lw=0.5)
    axes[0].set_ylabel("mean cos between minority classifiers")
    axes[0].legend(fontsize=7)
    axes[1].plot(ratio[order], results.float_column(table, "w_norm_ratio")[order], "o-", ms=3,
                 label="||w|| minority / majority")
    axes[1].plot(ratio[order], results.float_column(table, "h_norm_ratio")[order], "s-", ms=3,
                 label="||mu - mu_G|| minority / majority")
    axes[1].legend(fontsize=7)
    axes[1].set_yscale("log")
    axes[2].semilogy(
        ratio[order],
        np.maximum(results.float_column(table, "minority_spread")[order], 1e-17),
        "o",
        ms=4,
        label="minority spread (solver)",
    )
    gap = np.abs(results.float_column(table, "oracle_gap"))
    if np.isfinite(gap).any():
        axes[2].semilogy(ratio[order], np.maximum(gap[order], 1e-17), "x", ms=4,
                         label="|f - f_oracle| / |f_oracle|")
    axes[2].legend(fontsize=7)
    from matplotlib.ticker import NullFormatter

    for ax in axes:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # the decades only: no crowded labels
        ax.set_xlabel("imbalance ratio n_max / n_min")
    return [_save(fig, Path(directory) / "imbalance.png")]


# ----------------------------------------------------------------------------- landscape kinds


def _save(fig, path):
    """Write the figure whole or not at all (a full disk left a 0-byte PNG): to a temporary
    file, renamed onto `path` (`results.replace_atomically`)."""
    path = Path(path)
    try:
        results.replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110,
                                                         format=path.suffix.lstrip(".")))
    finally:
        _pyplot().close(fig)
    return path


def _rows_by_label(table):
    labels, _ = series_labels(table)
    return labels, list(dict.fromkeys(labels))


def _symlog_edges(top: float, linthresh: float, per_side: int = 24) -> np.ndarray:
    """Histogram bins of equal width on a symmetric-log axis: log-spaced on each side of a
    linear band [-linthresh, linthresh] that holds the (numerically) zero eigenvalues."""
    top = max(top * 1.05, 10 * linthresh)
    side = np.geomspace(linthresh, top, per_side)
    return np.concatenate([-side[::-1], [0.0], side])


def plot_benign(directory: Path) -> list[Path]:
    """Fraction of starts reaching f* per start kind, and Hessian spectra at the saddles and
    at the optimum (symmetric-log axis: the saddles' negative eigenvalues left of zero)."""
    directory = Path(directory)
    table = results.read_table(directory / results.RESULTS)
    return (draw_figure("benign_reached.png", _benign_reached, directory, table)
            + draw_figure("benign_spectra.png", _benign_spectra, directory, table))


def _benign_reached(directory: Path, table) -> Path:
    plt = _pyplot()
    labels, series = _rows_by_label(table)
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
    return _save(fig, directory / "benign_reached.png")


def _benign_spectra(directory: Path, table) -> list[Path]:
    plt = _pyplot()
    labels, _ = _rows_by_label(table)
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
            edges = _symlog_edges(top, linthresh=1e-4)
            for key in keys:
                ax.hist(spectra[key], bins=edges, histtype="step", label=key.split("|")[1])
            ax.set_xscale("symlog", linthresh=1e-4)
            ax.set_yscale("log")
            ax.set_title(config_label.get(c, str(c)), fontsize=9)
            ax.set_xlabel("Hessian eigenvalue")
            ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(configs):]:
            ax.axis("off")
        written.append(_save(fig, directory / "benign_spectra.png"))
    return written


def plot_origin_phase(directory: Path) -> list[Path]:
    """Smallest eigenvalue at the origin (measured and formula) and where random starts end,
    against sqrt(lam_W lam_H) / (c_L / (K sqrt n))."""
    table = results.read_table(Path(directory) / results.RESULTS)
    return draw_figure("origin_phase.png", _origin_phase, Path(directory), table)


def _origin_phase(directory: Path, table) -> list[Path]:
    plt = _pyplot()
    labels, series = _rows_by_label(table)
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
    return [_save(fig, directory / "origin_phase.png")]


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
    plt = _pyplot()
    labels, series = _rows_by_label(table)
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
    return _save(fig, directory / "saddle_escape.png")


def _escape_trajectories(directory: Path, table) -> Path:
    plt = _pyplot()
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
    return _save(fig, directory / "escape_trajectories.png")


NET_FIGURES = (("nc1", "NC1", "log"), ("nc2_W", "NC2 (W)", "log"), ("nc2_H", "NC2 (H)", "log"),
               ("nc3", "NC3", "log"), ("train_acc", "train accuracy", "linear"),
               ("test_acc", "test accuracy", "linear"))


def plot_net(directory: Path) -> list[Path]:
    """Network experiments: NC metrics and accuracies over epochs (median and range over
    seeds), the final NC1 of every layer (progressive separation, log scale) and, where the
    loss varies with the width and the epochs, the cross-loss variance; each in isolation."""
    directory = Path(directory)
    table = results.read_table(directory / results.RESULTS)
    history = results.read_history(directory / results.HISTORY, len(table["row"]))
    written = draw_figure("net_training.png", _net_training, directory, table, history)
    if any(k.startswith("nc1_layer") for k in history):
        written += draw_figure("layer_nc1.png", _net_layer_nc1, directory, table, history)
    written += draw_figure("loss_equivalence.png", plot_loss_equivalence, directory, table)
    return written


def _net_training(directory, table, history) -> Path:
    plt = _pyplot()
    labels, _ = series_labels(table)
    epochs = np.asarray(history["iteration"])
    diverged = _diverged(table)
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.8), layout="constrained")
    for ax, (key, title, scale) in zip(axes.flat, NET_FIGURES):
        if key in history:
            draw_trajectories(ax, epochs, history[key], labels, key, scale, diverged=diverged)
        step_axis(ax, "epoch")
        ax.set_title(title, fontsize=9)
    figure_legend(fig, axes)
    return _save(fig, directory / "net_training.png")


def _net_layer_nc1(directory, table, history) -> Path:
    plt = _pyplot()
    labels, _ = series_labels(table)
    layer_keys = sorted((k for k in history if k.startswith("nc1_layer")),
                        key=lambda k: int(k[len("nc1_layer"):]))
    fig, ax = plt.subplots(figsize=(5.8, 3.8), layout="constrained")
    final = np.array([[results.float_column(table, k)[i] for k in layer_keys]
                      for i in range(len(table["row"]))], dtype=float)
    for label in dict.fromkeys(labels):
        rows = [i for i, lab in enumerate(labels) if lab == label]
        mid = nan_stats(shown_on(final[rows], "log"))[0]
        if np.isfinite(mid).any():
            ax.plot(np.arange(1, len(layer_keys) + 1), mid, "o-", label=label)
    _set_scale(ax, "log")
    ax.set_xlabel("layer")
    ax.set_ylabel("NC1 at the end of training")
    ax.grid(True, which="major", alpha=0.3)
    figure_legend(fig, ax)
    return _save(fig, directory / "layer_nc1.png")


def plot_loss_equivalence(directory: Path, table: dict) -> list[Path]:
    """Where train.loss varies with model.width and train.epochs: heatmaps over (width,
    epochs) of the variance across losses of the test accuracy and of NC1 (Zhou et al. 2022's
    figure). Nothing where the width and the epochs do not both vary, or another axis does
    too (the summary's lines give the spread there)."""
    spread = cross_loss_spread(table)
    axes = ("model.width", "train.epochs")
    if not spread or not all(c in spread[0][1]["setting"] for c in axes):
        return []
    if any(set(values["setting"]) != set(axes) for _, values in spread):
        return []  # another axis varies too: the table's lines say it
    widths = sorted({int(values["setting"]["model.width"]) for _, values in spread})
    epochs = sorted({int(values["setting"]["train.epochs"]) for _, values in spread})
    plt = _pyplot()
    fig, axs = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for ax, (key, title) in zip(axs, (("test_acc_var", "variance of test accuracy"),
                                      ("nc1_var", "variance of NC1"))):
        grid = np.full((len(widths), len(epochs)), np.nan)
        for _, values in spread:
            setting = values["setting"]
            grid[widths.index(int(setting["model.width"])),
                 epochs.index(int(setting["train.epochs"]))] = values[key]
        shown = shown_on(grid, "log")
        finite = shown[np.isfinite(shown)]
        low, high = (np.log10(finite.min()), np.log10(finite.max())) if finite.size else (0, 1)
        im = ax.imshow(np.ma.masked_invalid(np.log10(shown)), origin="lower", aspect="auto",
                       cmap=plt.get_cmap("viridis").with_extremes(bad="0.85"), vmin=low,
                       vmax=high if high > low else low + 1)
        ax.set_xticks(range(len(epochs)), epochs)
        ax.set_yticks(range(len(widths)), widths)
        ax.set_xlabel("epochs")
        ax.set_ylabel("width")
        ax.set_title(f"across losses: log10 {title}", fontsize=10)
        fig.colorbar(im, ax=ax)
    return [_save(fig, directory / "loss_equivalence.png")]


def plot_transfer(directory: Path) -> list[Path]:
    """Transfer experiments: the frozen source network's layer-wise NC1 on the target's splits
    (the two-phase curve where it appears), the ridge probe's accuracy per layer, and the
    target accuracy of each fine-tuning mode with the parameters it trains (first
    configuration of each distinct pretraining)."""
    directory = Path(directory)
    table = results.read_table(directory / results.RESULTS)
    return draw_figure("transfer.png", _transfer, directory, table)


def _transfer(directory: Path, table) -> list[Path]:
    plt = _pyplot()
    layers = int(table["layers"][0])
    splits = [s for s in ("train", "test", "ood")
              if not np.all(np.isnan(results.float_column(table, f"frozen_{s}_nc1_layer0")))]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
    depth = np.arange(1, layers + 1)
    for split in splits:
        axes[0].semilogy(depth, [results.float_column(table, f"frozen_{split}_nc1_layer{j}")[0]
                                 for j in range(layers)], "o-", label=split)
        axes[1].plot(depth, [results.float_column(table, f"probe_{split}_acc_layer{j}")[0]
                             for j in range(layers)], "o-", label=split)
    chosen = int(table["chosen_layer"][0]) + 1
    for ax in axes[:2]:
        ax.axvline(chosen, color="k", ls=":", lw=1, label=f"chosen layer {chosen}")
        ax.set_xlabel("layer of the source-trained network")
        ax.legend(fontsize=8)
    axes[0].set_title("NC1 of the target classes, frozen features", fontsize=10)
    axes[1].set_title("ridge linear probe per layer: target accuracy", fontsize=10)
    modes = [str(m) for m in table["mode"]]
    x = np.arange(len(modes))
    for offset, split in zip((-0.25, 0.0, 0.25), splits):
        axes[2].bar(x + offset, results.float_column(table, f"{split}_acc"), width=0.25,
                    label=split)
    heads = [str(h) for h in table.get("finetune.head", [""] * len(modes))]
    axes[2].set_xticks(x, [f"{m}, {h}\n{int(p) / 1000:.3g}k params" for m, h, p in
                           zip(modes, heads, table["params_trained"])], fontsize=7,
                       rotation=30)
    axes[2].set_ylim(0, 1.05)
    axes[2].set_title("fine-tuning: target accuracy", fontsize=10)
    axes[2].legend(fontsize=8)
    return [_save(fig, directory / "transfer.png")]
