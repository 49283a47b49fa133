"""`ufm.running.tables`: row labels, counts and cells of the summary tables."""
import numpy as np

from ufm.running import tables


def test_labels_round_to_four_digits_and_run_length_encode_counts():
    assert tables.label_value(0.012345678) == "0.01235"
    assert tables.label_value("20 20 20 4 4 4") == "20x3 4x3"
    assert tables.label_value("1 2") == "1 2"
    assert tables.fmt(1234.5) == "1.23e+03" and tables.fmt(np.nan) == "nan"
    assert tables.counts(["converged", "converged", "diverged"]) == "2 converged, 1 diverged"


def test_series_labels_name_what_varies_and_nothing_else():
    table = {"row": [0, 1, 2, 3], "loss": ["ce", "ce", "mse", "mse"],
             "lam_W": [1e-3, 1e-2, 1e-3, 1e-2], "num_classes": [4, 4, 4, 4], "seed": [0, 0, 0, 0]}
    labels, varying = tables.series_labels(table)
    assert varying == ["loss", "lam_W"]
    assert labels[1] == "loss=ce, lam_W=0.01"
    only_loss = {"row": [0, 1], "loss": ["ce", "mse"], "num_classes": [4, 4]}
    assert tables.series_labels(only_loss) == (["ce", "mse"], ["loss"])


def test_a_column_determined_by_others():
    table = {"row": [0, 1, 2], "a": [1, 2, 1], "b": ["x", "y", "x"]}
    assert tables.determined_by(table, "b", ["a"])
    assert not tables.determined_by(table, "a", [])
