"""Figures of a results folder: every NC metric and the gap to the closed-form optimum against
iteration, log scale, one line per configuration (median over seeds, min-max band)... The
drawing every kind shares: isolation of each figure, log axes that take NaN and zeros,
trajectories to the last finite point, legends, subtitles. Each kind draws its own figures
with these (`ufm.running.kinds`).

Figures never lose or fail a run: the results are complete before any is drawn, each figure is
drawn in isolation (`draw_figure`: one that fails prints one line naming it and the reason, and
the others are still written), and every plot function takes what a real table holds: runs
that diverged (drawn to their last finite point and marked x, left out of final-value
figures), NaN or zero metrics on log axes, an axis with one value, one row, a missing column.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from jax.typing import ArrayLike

from ufm.running import results
from ufm.running.tables import (
    label_value,
    series_labels,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

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


def draw_figure(name: str, draw: Callable, *args, **kwargs) -> list[Path]:
    """Call `draw` (returning a path or a list of paths) in isolation: a figure that fails
    prints one line ("ufm: figure NAME not drawn: the reason") and gives [] so the others are
    still drawn and the run still succeeds."""
    try:
        written = draw(*args, **kwargs)
    except Exception as err:  # a figure never fails a finished run: say so and go on
        pyplot().close("all")
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


def shown_on(values: ArrayLike, scale: str) -> np.ndarray:
    """Values as an axis of `scale` can show them: non-finite ones dropped (NaN), and on a log
    axis also those <= 0 or outside LOG_RANGE."""
    values = np.asarray(values, float)
    ok = np.isfinite(values)
    if scale == "log":
        ok &= (values >= LOG_RANGE[0]) & (values <= LOG_RANGE[1])
    return np.where(ok, values, np.nan)


def short_number(value: float, _: object | None = None) -> str:
    """A step count for a tick: 0, 500, 12.5k, 2M."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def step_axis(ax: Axes, label: str = "iteration") -> None:
    """An x axis of steps or epochs with a few short tick labels at any count (5k, 10k, ...)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True, min_n_ticks=2))
    ax.xaxis.set_major_formatter(FuncFormatter(short_number))
    ax.set_xlabel(label)


def set_scale(ax: Axes, scale: str) -> None:
    if scale == "log" and any(line.get_ydata().size and np.isfinite(
            np.asarray(line.get_ydata(), float)).any() for line in ax.get_lines()):
        ax.set_yscale("log")
    elif scale == "fraction":
        ax.set_yscale("symlog", linthresh=FRACTION_LINTHRESH, linscale=0.5)
        ax.set_ylim(-FRACTION_LINTHRESH / 4, 1.05)


def run_ends(table: dict, n_points: int, iteration: ArrayLike) -> np.ndarray:
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


def draw_trajectories(ax: Axes, iteration: ArrayLike, values: ArrayLike, labels: Sequence[str],
                      key: str, scale: str, keep: ArrayLike | None = None,
                      diverged: ArrayLike | None = None) -> None:
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
    set_scale(ax, scale)
    step_axis(ax)
    ax.grid(True, which="major", alpha=0.3)


def figure_legend(fig: Figure, axes: Sequence[Axes], max_inside: int = 8) -> None:
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


def pyplot() -> ModuleType:
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
        if column == "lam_b" and same("bias") and not truthy(table["bias"][0]):
            continue
        if column == "tau" and float(table[column][0]) == 1.0 and geometry == "wd":
            continue
        value = label_value(table[column][0])
        parts.append(f"{short}={value}" if short else value)
    seeds = len(set(map(str, table["seed"]))) if "seed" in table else 0
    if seeds:
        parts.append(f"{seeds} seed{'s' if seeds > 1 else ''}")
    return ", ".join(parts)


def truthy(value: Any) -> bool:
    return str(value).lower() in ("true", "1", "1.0")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write the figure whole or not at all (a full disk left a 0-byte PNG): to a temporary
    file, renamed onto `path` (`results.replace_atomically`)."""
    path = Path(path)
    try:
        results.replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110,
                                                         format=path.suffix.lstrip(".")))
    finally:
        pyplot().close(fig)
    return path


def rows_by_label(table: dict) -> tuple[list[str], list[str]]:
    labels, _ = series_labels(table)
    return labels, list(dict.fromkeys(labels))


def symlog_edges(top: float, linthresh: float, per_side: int = 24) -> np.ndarray:
    """Histogram bins of equal width on a symmetric-log axis: log-spaced on each side of a
    linear band [-linthresh, linthresh] that holds the (numerically) zero eigenvalues."""
    top = max(top * 1.05, 10 * linthresh)
    side = np.geomspace(linthresh, top, per_side)
    return np.concatenate([-side[::-1], [0.0], side])


def diverged_rows(table: dict) -> np.ndarray:
    """Which rows of a table diverged (none where it has no status column)."""
    if "status" not in table:
        return np.zeros(len(table["row"]), bool)
    return np.array([str(s) == "diverged" for s in table["status"]])
