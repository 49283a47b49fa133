"""Certified softmax and Tammes codes: the margin and the minimum pairwise distance of the
best codes `experiments/softmax_vs_tammes.py` found, each a KKT point of its max-min problem to
1e-12 (`ufm.analysis.polish`). A certificate of local optimality: the global optimum is proved
only where `ufm.analysis.best_known` says so. The sphere UFM's results compare the learned
classifiers with these (`code_margin`). Written by
`python experiments/softmax_vs_tammes.py --dims 3 --code-table ufm/analysis/code_table.py`
(docs/softmax_vs_tammes.md); not edited by hand.
"""
from __future__ import annotations


def certified_margin(K: int, d: int) -> float | None:
    """The certified softmax margin of K classes in R^d, or None where none is tabulated."""
    return SOFTMAX_MARGIN.get((d, K))


# (d, K): the softmax code's certified margin
SOFTMAX_MARGIN = {
    (3, 5): 0.9999999999999997,
    (3, 6): 1.0,
    (3, 7): 0.7898616872693967,
    (3, 8): 0.7387961250362585,
    (3, 9): 0.6666666666666665,
}

# (d, K): the Tammes code's certified minimum distance
TAMMES_DISTANCE = {
    (3, 5): 1.4142135623730947,
    (3, 6): 1.4142135623730951,
    (3, 7): 1.2568704684806178,
    (3, 8): 1.2155625241313246,
    (3, 9): 1.1547005383792515,
}
