"""Figures on the tables real runs produce, built here without training: runs that diverged,
NaN and zero metrics on log axes, one value on an axis, one row, a missing column; a figure
that fails is named and the others are still written."""
from __future__ import annotations

import numpy as np
import pytest

from ufm.running import figures as plots
from ufm.running import results
from ufm.running.kinds import grid, net
from ufm.running.kinds.grid import KINDS


def _grid_folder(path, rows, histories):
    path.mkdir(parents=True, exist_ok=True)
    results.write_table(path / results.RESULTS, rows)
    results.write_history(path / results.HISTORY, histories)
    return path


def _row(i, loss, lam_H, lr, seed, status, steps, **metrics):
    return {"row": i, "group": 0, "num_classes": 4, "feature_dim": 6, "n_per_class": 5,
            "loss": loss, "geometry": "wd", "bias": True, "dtype": "float64", "lam_W": 5e-4,
            "lam_H": lam_H, "lam_b": 0.0, "tau": 1.0, "lr": lr, "solver": "gd", "seed": seed,
            "status": status, "steps": steps, "seconds": 0.1, **metrics}


def _diverging_grid(tmp_path):
    """The issue's grid: loss x lam_H x lr, two seeds; every lr = 3000 run diverged, its last
    finite point 1e289 above f* (the trajectory figure's log ticks overflowed on it) and MSE
    without a closed form (rel_gap empty)."""
    rows, histories = [], []
    iteration = np.arange(0, 2001, 100)
    for loss in ("ce", "mse"):
        for lam_H in (1e-3, 1e-2, 3e-2):
            for lr in (0.5, 3000.0):
                for seed in (0, 1):
                    diverged = lr > 1
                    steps = 50 if diverged else 2000
                    gap = (np.full(iteration.size, 8e289) if diverged
                           else np.geomspace(1.0, 1e-2, iteration.size))
                    nc1 = np.geomspace(1.0, 1e-32, iteration.size)
                    nc1[-3:] = 0.0  # exactly collapsed: nothing to draw on a log axis
                    history = {"iteration": iteration, "nc1": nc1,
                               "nc4": np.where(iteration > 0, 0.0, 0.8),
                               "objective": gap + 1.0,
                               "rel_gap": gap if loss == "ce" else np.full(iteration.size,
                                                                           np.nan)}
                    rows.append(_row(len(rows), loss, lam_H, lr, seed,
                                     "diverged" if diverged else "max_steps", steps,
                                     nc1=float(nc1[-1]), nc2_W=1e-3 * (1 + seed),
                                     nc3=np.inf if diverged else 1e-2,
                                     rel_gap=float(gap[-1]) if loss == "ce" else None))
                    histories.append(history)
    return _grid_folder(tmp_path / "grid", rows, histories)


def test_a_grid_with_diverged_cells_draws_every_figure(tmp_path, capsys):
    folder = _diverging_grid(tmp_path)
    written = {p.name for p in grid.plot_grid_results(folder)}
    assert {"rel_gap.png", "nc1.png", "nc4.png", "objective.png", "overview.png",
            "grid_nc1_lam_H_lr.png", "grid_rel_gap_lam_H_lr.png"} <= written
    assert all((folder / name).stat().st_size > 0 for name in written)
    assert plots.FIGURE_FAILED not in capsys.readouterr().err


def test_diverged_and_empty_values_are_left_out_of_final_values():
    table = {"row": np.arange(3), "status": np.array(["converged", "diverged", "converged"],
                                                     dtype=object),
             "rel_gap": np.array([-1e-8, 8e289, np.nan])}
    np.testing.assert_array_equal(grid._final(table, "rel_gap", [0, 1, 2]), [1e-8, np.nan])
    mid, lo, hi = plots.nan_stats(np.array([[np.nan, 1.0], [np.nan, 3.0]]))
    assert np.isnan(mid[0]) and (mid[1], lo[1], hi[1]) == (2.0, 1.0, 3.0)
    np.testing.assert_array_equal(plots.shown_on([0.0, -1.0, 1e-3, 1e200, np.inf], "log"),
                                  [np.nan, np.nan, 1e-3, np.nan, np.nan])


def test_runs_are_drawn_to_their_last_real_step():
    """A run frozen at step 250 is drawn to the first log point at or after it, not beyond."""
    iteration = np.arange(0, 1001, 100)
    table = {"row": np.arange(2), "steps": np.array([250, 1000])}
    keep = plots.run_ends(table, iteration.size, iteration)
    assert iteration[keep[0]].max() == 300 and keep[1].all()


def test_one_row_one_value_and_missing_columns(tmp_path, capsys):
    iteration = np.arange(0, 201, 100)
    row = {"row": 0, "seed": 0, "status": "converged", "steps": 150, "nc1": 0.0}
    folder = _grid_folder(tmp_path / "one", [row],
                          [{"iteration": iteration, "nc1": np.array([1.0, 0.0, 0.0])}])
    written = {p.name for p in grid.plot_grid_results(folder)}
    assert "nc1.png" in written and "overview.png" in written
    assert plots.FIGURE_FAILED not in capsys.readouterr().err


def test_a_failing_figure_is_named_and_the_others_are_written(tmp_path, capsys, monkeypatch):
    folder = _diverging_grid(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("a broken figure")

    monkeypatch.setattr(grid, "_grid_heatmap", broken)
    written = {p.name for p in KINDS["grid"].figures(folder, results.read_table(
        folder / results.RESULTS))}
    err = capsys.readouterr().err
    assert "ufm: figure grid_nc1_lam_H_lr.png not drawn: RuntimeError: a broken figure" in err
    assert "overview.png" in written and not any(n.startswith("grid_") for n in written)


def test_loss_equivalence_without_width_and_epochs_axes(tmp_path, capsys):
    """experiments/net_losses.toml: only the loss (zipped with lr) varies; the spread has the
    one setting "all" and there is no (width, epochs) heatmap to draw, and no crash."""
    table = {"row": np.arange(4), "seed": np.zeros(4, int),
             "train.loss": np.array(["ce", "ls", "focal", "mse"], dtype=object),
             "train.lr": np.array([0.1, 0.1, 0.1, 0.01]), "model.width": np.full(4, 128),
             "train.epochs": np.full(4, 300), "test_acc": np.array([0.9, 0.91, 0.9, 0.88]),
             "nc1": np.array([1e-2, 2e-2, 3e-2, 1e-3])}
    assert net.plot_loss_equivalence(tmp_path, table) == []
    table["model.width"] = np.array([64, 64, 128, 128])
    table["train.loss"] = np.array(["ce", "mse", "ce", "mse"], dtype=object)
    table["train.lr"] = np.array([0.1, 0.01, 0.1, 0.01])
    assert net.plot_loss_equivalence(tmp_path, table) == []  # epochs do not vary
    table["train.epochs"] = np.array([10, 10, 10, 10])
    table = {k: np.concatenate([v, v]) for k, v in table.items()}
    table["row"] = np.arange(8)
    table["train.epochs"] = np.array([10, 10, 10, 10, 20, 20, 20, 20])
    assert net.plot_loss_equivalence(tmp_path, table) == [tmp_path / "loss_equivalence.png"]


@pytest.mark.parametrize("count, expected", [(0, "0"), (500, "500"), (12_500, "12.5k"),
                                             (20_000, "20k"), (2_000_000, "2M")])
def test_step_ticks_are_short(count, expected):
    assert plots.short_number(count) == expected


def test_the_subtitle_names_the_shared_settings():
    table = {"row": np.arange(2), "seed": np.array([0, 1]),
             "num_classes": np.array([10, 10]), "feature_dim": np.array([32, 32]),
             "n_per_class": np.array([50, 50]), "loss": np.array(["ce", "mse"], dtype=object),
             "geometry": np.array(["sphere"] * 2, dtype=object),
             "bias": np.array([False, False]), "lam_W": np.array([5e-4] * 2),
             "lam_b": np.array([0.0] * 2), "tau": np.array([0.1, 0.1])}
    assert plots.settings_line(table) == "K=10, d=32, n=50, sphere, τ=0.1, 2 seeds"


def test_panels_leave_out_columns_the_others_determine():
    """Multi-label grids: the label sets follow from K and the counts; a panel title or legend
    that spells them out squeezed the axes to nothing."""
    table = {"row": np.arange(4), "num_classes": np.array([3, 3, 5, 5]),
             "label_sets": np.array(["0 1 2 0+1 0+2 1+2"] * 2 + ["0 1 2 3 4 0+1 0+2"] * 2,
                                    dtype=object),
             "set_counts": np.array(["20 20 20 20 20 20", "20 20 20 4 4 4",
                                     "20 20 20 20 20 20 20", "20 20 20 20 20 4 4"],
                                    dtype=object)}
    labels, varying = __import__("ufm").running.tables.series_labels(table)
    assert varying == ["num_classes", "set_counts"]
    assert labels[1] == "num_classes=3, set_counts=20x3 4x3"


def test_a_figure_is_written_whole_or_not_at_all(tmp_path):
    """A full disk used to leave a 0-byte PNG: now the old figure stays until a new one is
    whole, and no temporary file is left."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = tmp_path / "figure.png"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    plots.save_figure(fig, path)
    good = path.read_bytes()
    assert good.startswith(b"\x89PNG")

    fig, ax = plt.subplots()

    def disk_full(target, **kwargs):
        open(target, "wb").write(b"\x89PN")  # cut off part way
        raise OSError(28, "No space left on device")

    fig.savefig = disk_full
    with pytest.raises(OSError, match="No space left"):
        plots.save_figure(fig, path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]
