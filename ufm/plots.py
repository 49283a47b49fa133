"""Figures of a results folder: every NC metric and the gap to the closed-form optimum against
iteration, log scale, one line per configuration (median over seeds, min-max band)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ufm import results
from ufm.tables import CONFIG_COLUMNS, all_balanced, cross_loss_spread, series_labels

# (history key, axis label, log scale)
TRAJECTORY_FIGURES = (
    ("rel_gap", "relative gap to f*  |f - f*| / |f*|", True),
    ("nc1", "NC1  tr(Σ_W Σ_B⁺)/K", True),
    ("nc2_W", "NC2 (classifier)  ‖WWᵀ/‖WWᵀ‖ − E‖", True),
    ("nc2_H", "NC2 (features)  ‖MᵀM/‖MᵀM‖ − E‖", True),
    ("nc3", "NC3  ‖WM/‖WM‖ − E‖", True),
    ("nc4", "NC4  NCC disagreement", False),
    ("nc_m", "NC_m  angle(μ_S − μ_G, Σ_{k∈S} (μ_k − μ_G))", True),
    ("objective", "objective f", True),
)
IGNORED_COLUMNS = {"row", "group", "seed", "status", "steps", "diverged_at", "seconds", "f_star",
                   "optimum_is_zero"}


def _draw(ax, iteration, values, labels, key, log):
    for label in dict.fromkeys(labels):
        rows = [i for i, lab in enumerate(labels) if lab == label]
        data = values[rows]
        if key == "rel_gap":
            data = np.abs(data)
        if log:
            data = np.where(data > 0, data, np.nan)
        if np.all(np.isnan(data)):
            continue
        with warnings.catch_warnings():  # all-NaN columns (undefined metrics) are expected
            warnings.simplefilter("ignore", RuntimeWarning)
            mid = np.nanmedian(data, axis=0)
            lo, hi = np.nanmin(data, axis=0), np.nanmax(data, axis=0)
        (line,) = ax.plot(iteration, mid, label=label, lw=1.5)
        if len(rows) > 1:
            ax.fill_between(iteration, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.grid(True, which="major", alpha=0.3)


def _legend(fig, ax, n_series):
    """Inside the axes for a few series; outside, to the right, in columns for many."""
    if n_series <= 8:
        ax.legend(fontsize=8)
    else:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=6,
                   ncols=1 + n_series // 30)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


def _final(table, metric, rows):
    values = np.asarray(table[metric], float)[rows]
    return np.abs(values) if metric == "rel_gap" else values


def plot_grid(directory, table, metrics=None, x=None, y=None) -> list[Path]:
    """Final metrics over the grid's numeric axes: heatmaps over two axes (median over seeds;
    one panel per value of the other varying fields), or lines over one axis with a min-max
    band over seeds. Axes are chosen from the grid unless x / y name them."""
    plt = _pyplot()
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
    n_rows = len(table["row"])
    panel_of = [", ".join(f"{c}={table[c][i]}" for c in others) or "all" for i in range(n_rows)]
    panels = list(dict.fromkeys(panel_of))
    written = []
    for metric in [m for m in (metrics or GRID_METRICS) if m in table]:
        if np.all(np.isnan(np.asarray(table[metric], float))):
            continue
        if y is not None:
            xs = sorted(set(np.asarray(table[x], float)))
            ys = sorted(set(np.asarray(table[y], float)))
            fig, axs = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8),
                                    layout="constrained", squeeze=False)
            for ax, panel in zip(axs.flat, panels):
                grid_values = np.full((len(ys), len(xs)), np.nan)
                for iy, yv in enumerate(ys):
                    for ix, xv in enumerate(xs):
                        rows = [i for i in range(n_rows) if panel_of[i] == panel
                                and table[x][i] == xv and table[y][i] == yv]
                        if rows:
                            grid_values[iy, ix] = np.nanmedian(_final(table, metric, rows))
                shown = np.log10(np.where(grid_values > 0, grid_values, np.nan))
                im = ax.imshow(shown, origin="lower", aspect="auto", cmap="viridis")
                ax.set_xticks(range(len(xs)), [f"{v:.3g}" for v in xs], rotation=45, fontsize=7)
                ax.set_yticks(range(len(ys)), [f"{v:.3g}" for v in ys], fontsize=7)
                ax.set_xlabel(x)
                ax.set_ylabel(y)
                ax.set_title(panel, fontsize=8)
                fig.colorbar(im, ax=ax, label=f"log10 {metric}")
            written.append(_save(fig, Path(directory) / f"grid_{metric}_{x}_{y}.png"))
        else:
            fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
            for panel in panels:
                rows = [i for i in range(n_rows) if panel_of[i] == panel]
                xs = sorted(set(np.asarray(table[x], float)[rows]))
                per_x = [_final(table, metric, [i for i in rows if table[x][i] == xv]) for xv in xs]
                mid = [np.nanmedian(v) for v in per_x]
                (line,) = ax.plot(xs, mid, "o-", label=panel)
                ax.fill_between(xs, [np.nanmin(v) for v in per_x], [np.nanmax(v) for v in per_x],
                                color=line.get_color(), alpha=0.2, lw=0)
            ax.set_xscale("log" if min(np.asarray(table[x], float)) > 0 else "linear")
            ax.set_yscale("log")
            ax.set_xlabel(x)
            ax.set_ylabel(f"final {metric} (median, min-max over seeds)")
            ax.legend(fontsize=7)
            written.append(_save(fig, Path(directory) / f"grid_{metric}_{x}.png"))
    return written


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
    grid's axes, and GNC, imbalance and layer-wise figures where they apply); returns the files
    written. Any results folder: `ufm.experiment.figures`."""
    directory = Path(directory)
    plt = _pyplot()
    table = results.read_table(directory / results.RESULTS)
    with np.load(directory / results.HISTORY, allow_pickle=False) as data:
        history = {k: data[k] for k in data.files}
    check_figure_options(table, history, metrics, x, y)
    grid_written = plot_grid(directory, table, metrics, x, y)
    if "gnc2_margin" in table and len(set(map(str, table["tau"]))) > 1:
        grid_written += plot_gnc_margin(directory, table)
    if "minority_cos" in table:
        grid_written += plot_imbalance(directory, table)
    if "nc1_layer0" in table:
        grid_written += plot_layer_nc1(directory, table)
    labels, _ = series_labels(table)
    n_series = len(set(labels))
    width = 5.5 if n_series <= 8 else 8.5 + 2.5 * (n_series // 30)
    iteration = history["iteration"]
    figures = [
        f for f in TRAJECTORY_FIGURES if f[0] in history and (metrics is None or f[0] in metrics)
    ]
    figures = [f for f in figures if not np.all(np.isnan(history[f[0]]))]
    written = []
    for key, ylabel, log in figures:
        fig, ax = plt.subplots(figsize=(width, 3.8), layout="constrained")
        _draw(ax, iteration, history[key], labels, key, log)
        ax.set_ylabel(ylabel)
        _legend(fig, ax, n_series)
        path = directory / f"{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    if figures:
        cols = min(3, len(figures))
        rows = -(-len(figures) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols + width - 5.5, 3.4 * rows),
                                 layout="constrained", squeeze=False)
        for ax, (key, ylabel, log) in zip(axes.flat, figures):
            _draw(ax, iteration, history[key], labels, key, log)
            ax.set_title(ylabel, fontsize=9)
        for ax in list(axes.flat)[len(figures):]:
            ax.axis("off")
        _legend(fig, axes.flat[0], n_series)
        path = directory / "overview.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written + grid_written


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
            best = [np.nanmax(margin[rows & (tau == t)]) for t in taus]
            (line,) = ax.plot(taus, best, "o-", label=f"K={K}")
            known = code[rows]
            if np.isfinite(known).any():
                ax.axhline(np.nanmax(known), color=line.get_color(), ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
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
    fig.savefig(path, dpi=110)
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
    plt = _pyplot()
    table = results.read_table(directory / results.RESULTS)
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
    written = [_save(fig, directory / "benign_reached.png")]

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
    plt = _pyplot()
    table = results.read_table(directory / results.RESULTS)
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
    plt = _pyplot()
    table = results.read_table(directory / results.RESULTS)
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
    written = [_save(fig, directory / "saddle_escape.png")]
    if (directory / results.HISTORY).is_file():
        with np.load(directory / results.HISTORY, allow_pickle=False) as data:
            objective, iteration = data["objective"], data["iteration"]
        fig, ax = plt.subplots(figsize=(6, 3.8), layout="constrained")
        cmap = plt.get_cmap("viridis")
        span = np.ptp(np.log10(eps)) or 1.0
        for k in range(objective.shape[0]):
            ax.plot(
                iteration,
                objective[k],
                color=cmap((np.log10(eps[k]) - np.log10(eps).min()) / span),
                lw=0.8,
            )
        ax.set_xlabel("iteration")
        ax.set_ylabel("objective (colour: log10 epsilon)")
        ax.grid(alpha=0.3)
        written.append(_save(fig, directory / "escape_trajectories.png"))
    return written


NET_FIGURES = (("nc1", "NC1", True), ("nc2_W", "NC2 (W)", True), ("nc2_H", "NC2 (H)", True),
               ("nc3", "NC3", True), ("train_acc", "train accuracy", False),
               ("test_acc", "test accuracy", False))


def plot_net(directory: Path) -> list[Path]:
    """Network experiments: NC metrics and accuracies over epochs (median and range over
    seeds), and the final NC1 of every layer (progressive separation, log scale)."""
    plt = _pyplot()
    table = results.read_table(directory / results.RESULTS)
    with np.load(directory / results.HISTORY, allow_pickle=False) as data:
        history = {k: data[k] for k in data.files}
    labels, _ = series_labels(table)
    series = list(dict.fromkeys(labels))
    epochs = history["iteration"]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.8), layout="constrained")
    for ax, (key, title, log) in zip(axes.flat, NET_FIGURES):
        if key in history:
            _draw(ax, epochs, history[key], labels, key, log)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
    _legend(fig, axes.flat[0], len(series))
    written = [_save(fig, directory / "net_training.png")]
    layer_keys = sorted((k for k in history if k.startswith("nc1_layer")),
                        key=lambda k: int(k[len("nc1_layer"):]))
    if layer_keys:
        fig, ax = plt.subplots(figsize=(5.8, 3.8), layout="constrained")
        final = np.array([[table[k][i] if k in table else np.nan for k in layer_keys]
                          for i in range(len(table["row"]))], dtype=float)
        for label in series:
            rows = [i for i, lab in enumerate(labels) if lab == label]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                ax.plot(np.arange(1, len(layer_keys) + 1), np.nanmedian(final[rows], axis=0),
                        "o-", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel("NC1 at the end of training")
        ax.grid(True, which="major", alpha=0.3)
        _legend(fig, ax, len(series))
        written.append(_save(fig, directory / "layer_nc1.png"))
    written += plot_loss_equivalence(directory, table)
    return written


def plot_loss_equivalence(directory: Path, table: dict) -> list[Path]:
    """Where train.loss varies with model.width and train.epochs: heatmaps over (width,
    epochs) of the variance across losses of the test accuracy and of NC1 (Zhou et al. 2022's
    figure)."""
    spread = dict(cross_loss_spread(table))
    if not spread or not all(c in table for c in ("model.width", "train.epochs")):
        return []
    widths = sorted({int(w) for w in table["model.width"]})
    epochs = sorted({int(e) for e in table["train.epochs"]})
    if len(widths) * len(epochs) != len(spread):
        return []  # another axis varies too: the table's lines say it
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for ax, (key, title) in zip(axes, (("test_acc_var", "variance of test accuracy"),
                                       ("nc1_var", "variance of NC1"))):
        grid = np.full((len(widths), len(epochs)), np.nan)
        for label, values in spread.items():
            parts = dict(part.split("=") for part in label.split(", "))
            grid[widths.index(int(parts["width"])), epochs.index(int(parts["epochs"]))] = \
                values[key]
        im = ax.imshow(np.log10(np.maximum(grid, 1e-300)), origin="lower", aspect="auto",
                       cmap="viridis")
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
    plt = _pyplot()
    directory = Path(directory)
    table = results.read_table(directory / results.RESULTS)
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
