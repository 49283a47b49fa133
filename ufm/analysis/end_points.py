"""What a batch of runs' end points report beyond their histories, computed on the host in
float64 after the runs: feature compression, the generalized-NC metrics, minority collapse and,
for a convex loss, the convex oracle's global optimum beside the solver's value. A grid's table
gets these columns (`ufm.running.kinds.grid`)."""
from __future__ import annotations

import numpy as np
from jax.typing import ArrayLike

from ufm.analysis import code_table, compression, gnc, imbalance, oracle, theory
from ufm.model.problem import Hyper, Params, Problem


def end_point_columns(problem: Problem, hypers: Hyper, params: Params, n: int,
                      objective: ArrayLike) -> dict:
    """Columns beyond the history's metrics from the first `n` final points of a batch (leaves
    with a leading axis; `hypers` batched, every field an array; `objective` the final
    values), keyed "extra/<column>": feature
    compression (`compression.compression_metrics`), GNC metrics (`reports_gnc`), and for
    imbalanced classes the minority-collapse metrics and, for a convex loss, the convex
    oracle's global optimum next to the solver's value (`ufm.analysis.oracle`)."""
    H = np.asarray(params.H)
    found = [compression.compression_metrics(H[j], problem.labels, problem.num_classes)
             for j in range(n)] if not problem.multilabel else []
    arrays = {f"extra/{k}": np.array([f[k] for f in found]) for k in (found[0] if found else {})}
    if problem.depth > 1:
        return arrays  # the GNC and imbalance columns (and the oracle) are the UFM's
    if reports_gnc(problem):
        arrays.update(gnc_columns(problem, params, n))
    if not problem.balanced and not problem.multilabel and problem.geometry == "wd":
        arrays.update(imbalance_columns(problem, hypers, params, n, objective))
    return arrays


def imbalance_columns(problem: Problem, hypers: Hyper, params: Params, n: int,
                      objective: ArrayLike) -> dict:
    """Minority-collapse metrics of each final point; for a convex loss the oracle's optimum,
    its minority cosine and (two count levels) the collapse ratio, once per distinct Hyper
    (the seeds of a configuration share them)."""
    W, H = np.asarray(params.W), np.asarray(params.H)
    found = [imbalance.imbalance_metrics(W[j], H[j], problem.labels, problem.class_counts)
             for j in range(n)]
    arrays = {f"extra/{k}": np.array([f[k] for f in found]) for k in found[0]}
    hyper_list = [Hyper(*(float(np.asarray(v)[j]) for v in hypers)) for j in range(n)]
    if (problem.loss not in oracle.CONVEX_LOSSES or problem.classifier != "learned"
            or not all(h.lam_W > 0 and h.lam_H > 0 for h in hyper_list)):
        return arrays
    counts = np.asarray(problem.class_counts)
    minority = np.flatnonzero(counts < counts.max())
    two_levels = len(set(problem.class_counts)) == 2 and minority.size >= 2
    per_hyper = {}
    for h in dict.fromkeys(hyper_list):
        optimum = oracle.convex_oracle(problem, h)
        cos = imbalance.imbalance_metrics(
            optimum.W, optimum.H_bar, np.arange(problem.num_classes), problem.class_counts
        )["minority_cos"]
        # Two count levels: the ratio n_major/n_minor at which the minority collapses.
        ratio = (oracle.minority_collapse_threshold(problem, h, minority=minority,
                                                    n_minority=counts.min())
                 if two_levels else np.nan)
        per_hyper[h] = (optimum.objective, float(optimum.rank), cos, ratio)
    value, rank, cos, ratio = (np.array(column) for column in zip(*map(per_hyper.get,
                                                                        hyper_list)))
    arrays.update({"extra/oracle_objective": value,
                   "extra/oracle_gap": (np.asarray(objective, np.float64) - value) / np.abs(value),
                   "extra/oracle_rank": rank, "extra/oracle_minority_cos": cos})
    if two_levels:
        arrays["extra/collapse_ratio"] = ratio
    return arrays


def reports_gnc(problem: Problem) -> bool:
    """GNC columns (docs/science.md, section 3) for the generalized-NC regime d < K-1 and for every
    sphere problem (where the margin of the ETF, K/(K-1), checks the metric); not for a
    classifier frozen at the identity, whose features carry the geometry (nc2_H)."""
    if problem.multilabel or problem.classifier == "identity":
        return False
    return problem.feature_dim < problem.num_classes - 1 or problem.geometry == "sphere"


def gnc_columns(problem: Problem, params: Params, n: int) -> dict:
    """gnc1, gnc2_margin (exact QP), gnc2_tammes, gnc3 of each final point (host numpy), and
    the margin of the softmax code where it is known exactly (`theory.known_code_margin`) or
    certified (the polished codes of `ufm.analysis.code_table`, d = 3, 4, 5, K <= 30)."""
    W, H = np.asarray(params.W), np.asarray(params.H)
    found = [gnc.gnc_metrics(W[j], H[j], problem.labels) for j in range(n)]
    arrays = {f"extra/{k}": np.array([f[k] for f in found]) for k in found[0]}
    known = theory.known_code_margin(problem.num_classes, problem.feature_dim)
    if known is None:
        known = code_table.certified_margin(problem.num_classes, problem.feature_dim)
    arrays["extra/code_margin"] = np.full(n, np.nan if known is None else known)
    return arrays
