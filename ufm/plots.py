"""Figures of a results folder: every NC metric and the gap to the closed-form optimum against
iteration, log scale, one line per configuration (median over seeds, min-max band)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ufm import io

# (history key, axis label, log scale)
TRAJECTORY_FIGURES = (
    ("rel_gap", "relative gap to f*  |f - f*| / |f*|", True),
    ("nc1", "NC1  tr(Σ_W Σ_B⁺)/K", True),
    ("nc2_W", "NC2 (classifier)  ‖WWᵀ/‖WWᵀ‖ − E‖", True),
    ("nc2_H", "NC2 (features)  ‖MᵀM/‖MᵀM‖ − E‖", True),
    ("nc3", "NC3  ‖WM/‖WM‖ − E‖", True),
    ("nc4", "NC4  NCC disagreement", False),
    ("objective", "objective f", True),
)
IGNORED_COLUMNS = {"row", "group", "seed", "status", "steps", "diverged_at", "seconds", "f_star",
                   "optimum_is_zero"}


def series_labels(table: dict) -> tuple[list[str], list[str]]:
    """(label per row, the columns that tell series apart): the configuration fields that vary
    across the table, seeds excluded."""
    n_rows = len(table["row"])
    candidates = [c for c in io.CONFIG_COLUMNS if c in table]
    varying = [c for c in candidates if len({str(v) for v in table[c]}) > 1]
    labels = [", ".join(f"{c}={table[c][i]}" for c in varying) or "run" for i in range(n_rows)]
    if varying == ["loss"]:
        labels = [str(v) for v in table["loss"]]
    return labels, varying


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


def plot_results(directory, metrics=None) -> list[Path]:
    """Draw the figures of a results folder into it; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    table = io.read_table(directory / io.RESULTS)
    with np.load(directory / io.HISTORY) as data:
        history = {k: data[k] for k in data.files}
    labels, _ = series_labels(table)
    n_series = len(set(labels))
    width = 5.5 if n_series <= 8 else 8.5 + 2.5 * (n_series // 30)
    iteration = history["iteration"]
    figures = [f for f in TRAJECTORY_FIGURES if f[0] in history and (metrics is None or f[0] in metrics)]
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
    return written
