"""Text tables and row labels shared by the kinds' summaries and figures."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ufm.model.problem import Hyper
from ufm.running.results import float_column

PROBLEM_COLUMNS = ("num_classes", "feature_dim", "n_per_class", "class_counts", "loss",
                   "geometry", "bias", "classifier", "dtype", "label_sets", "set_counts",
                   "depth", "activation")
# The columns of a UFM results table that describe a configuration (besides its seed).
CONFIG_COLUMNS = PROBLEM_COLUMNS + Hyper._fields + ("solver",)
NET_SECTIONS = ("data", "model", "train")


def fmt(value: Any) -> str:
    """A cell of a summary: numbers to 3 significant digits."""
    if isinstance(value, (float, np.floating)):
        return "nan" if np.isnan(value) else f"{value:.2e}"
    return str(value)


def label_value(value: Any) -> str:
    """A configuration value in a row label: numbers to 4 significant digits; a long list of
    counts run-length encoded ("20 20 20 4 4 4" -> "20x3 4x3")."""
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    tokens = str(value).split()
    if len(tokens) >= 4:
        runs = []
        for token in tokens:
            if runs and runs[-1][0] == token:
                runs[-1][1] += 1
            else:
                runs.append([token, 1])
        return " ".join(t if n == 1 else f"{t}x{n}" for t, n in runs)
    return str(value)


def determined_by(table: dict, column: str, by: list[str]) -> bool:
    """Whether `column` is a function of the columns `by` across the table's rows."""
    keys = lambda cols: {tuple(str(table[c][i]) for c in cols) for i in range(len(table["row"]))}
    return bool(by) and len(keys(by)) == len(keys(by + [column]))


def format_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[j]) for r in [header] + lines) for j in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    return out + ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in lines]


def counts(values: Sequence) -> str:
    """'3 converged, 1 diverged'."""
    values = [str(v) for v in values]
    return ", ".join(f"{values.count(v)} {v}" for v in dict.fromkeys(values))


def all_balanced(table: dict) -> bool:
    """Every row has one n_per_class (no per-class counts)."""
    n = table.get("n_per_class")
    return n is not None and np.issubdtype(np.asarray(n).dtype, np.number) and not np.any(
        np.isnan(np.asarray(n, float)))


def series_labels(table: dict) -> tuple[list[str], list[str]]:
    """(label per row, the columns that tell series apart): the configuration fields that vary
    across the table, seeds excluded. UFM tables and network tables ("section.key" columns)."""
    n_rows = len(table["row"])
    if any("." in c and c.split(".")[0] in NET_SECTIONS for c in table):
        varying = net_varying_columns(table)
        labels = [", ".join(f"{c.split('.')[-1]}={label_value(table[c][i])}" for c in varying)
                  or "run" for i in range(n_rows)]
        return labels, varying
    candidates = [c for c in CONFIG_COLUMNS if c in table]
    varying = [c for c in candidates if len({str(v) for v in table[c]}) > 1]
    if "class_counts" in varying and all_balanced(table):
        varying.remove("class_counts")  # n_per_class and num_classes already tell them apart
    if "label_sets" in varying and determined_by(table, "label_sets",
                                               [c for c in varying if c != "label_sets"]):
        varying.remove("label_sets")  # every set of each size: given by K and the counts
    labels = [", ".join(f"{c}={label_value(table[c][i])}" for c in varying) or "run"
              for i in range(n_rows)]
    if varying == ["loss"]:
        labels = [str(v) for v in table["loss"]]
    return labels, varying


def net_varying_columns(table: dict, seeds: bool = False) -> list[str]:
    """The configuration columns of a network table ("section.key", and "seed" if asked) that
    differ across rows."""
    prefixes = NET_SECTIONS + (("seed",) if seeds else ())
    return [c for c in table if c.split(".")[0] in prefixes and len({str(v) for v in table[c]}) > 1]


def cross_loss_spread(table: dict) -> list[tuple[str, dict]]:
    """Where train.loss varies: for each setting of the other varying columns (seeds pooled by
    their mean), the variance across losses of test accuracy and of the final NC1 (Zhou et al.
    2022, "Are all losses created equal?": at the end of long training it is small). Each
    entry is (label, values); values["setting"] maps the other varying columns to their values
    there (empty when only the loss varies: the label is then "all"). A diverged run has
    empty metrics: a loss whose runs all diverged makes its setting's variance NaN."""
    if "train.loss" not in table or len(set(map(str, table["train.loss"]))) < 2:
        return []
    losses = list(map(str, table["train.loss"]))
    # a column that advances with the loss (a [[zip]] of loss and lr) is part of "the loss"
    follows_loss = lambda c: len(set(zip(losses, map(str, table[c])))) == len(set(losses))
    others = [c for c in net_varying_columns(table) if c != "train.loss" and not follows_loss(c)]
    key = lambda i: ", ".join(f"{c.split('.')[-1]}={table[c][i]}" for c in others) or "all"
    out, settings = {}, {}
    for i in range(len(table["row"])):
        out.setdefault(key(i), {}).setdefault(str(table["train.loss"][i]), []).append(i)
        settings.setdefault(key(i), {c: table[c][i] for c in others})
    spread = []
    for label, by_loss in out.items():
        means = {metric: [float(np.nanmean(float_column(table, metric)[rows]))
                          if np.any(np.isfinite(float_column(table, metric)[rows]))
                          else float("nan") for rows in by_loss.values()]
                 for metric in ("test_acc", "nc1")}
        spread.append((label, {"setting": settings[label], "losses": len(by_loss),
                               "test_acc_var": float(np.var(means["test_acc"])),
                               "nc1_var": float(np.var(means["nc1"])),
                               "test_acc_mean": float(np.mean(means["test_acc"])),
                               "nc1_mean": float(np.mean(means["nc1"]))}))
    return spread
