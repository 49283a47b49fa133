"""The tutorial's open question at 1e-9: is the softmax code (the GNC geometry: K unit vectors in
R^d maximizing the minimum one-vs-rest margin min_k dist(w_k, conv{w_j : j != k})) the same
configuration as the Tammes code (maximizing the minimum pairwise distance d_min)?

For each d in --dims and K from d + 2 to --max-K:

1. The Tammes code: `ufm.analysis.codes.best_tammes_code` (64 random starts and the known
   constructions, backtracking L-BFGS down a temperature schedule, two rounds of restarts from
   perturbations of the best), polished to a KKT point of the max-min problem to 1e-12
   (`ufm.analysis.polish.polish_tammes`) and compared with the best-known value where one is
   sourced (`ufm.analysis.best_known`).
2. The softmax code: the Tammes code itself polished as a softmax code
   (`ufm.analysis.polish.polish_softmax`: if it is a KKT point of the margin problem it stays
   put), and an independent softmax search from --starts random starts
   (`ufm.analysis.codes.softmax_code`, unpolished: its exact QP margin), which does not know
   the Tammes code; the best margin kept, certified where it is the polished one.
3. The verdict. For unit vectors margin >= d_min^2 / 2 (`codes.margin_bound_gap`), so the
   Tammes code's margin is at least d_T^2 / 2. The codes "differ" where the certified softmax
   margin exceeds the Tammes code's exact margin by more than --tol (then no Tammes code is a
   softmax code, if the Tammes search found the optimum); "same" where the margins agree to
   --tol and the independent search either stopped below that margin or reached it on the
   Tammes code's configuration (its sorted pairwise inner products, invariant under rotations
   and relabelling, to --tol); "same margin, another configuration" where the independent
   search reached the margin on another configuration (the softmax optimum is then not
   unique; the Tammes code is one of them).

    python experiments/softmax_vs_tammes.py [--dims 3 4 5] [--max-K 30] [--starts 32]
                                            [--search best|fast] [--tol 1e-9]
                                            [--out runs/softmax_vs_tammes]

Writes codes.jsonl (one line per (d, K) as it goes, with both configurations; a rerun with the
same --out skips the rows already there), codes.csv, codes.md (the table) and codes.png (the
margin gap and the best-known difference against K), and prints the (d, K) where the codes
differ. The full default run takes about two hours on two cores; --quick is a smoke run.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import numpy as np

from ufm.analysis import best_known, codes

COLUMNS = ("d", "K", "tammes_distance", "tammes_kkt_residual", "tammes_active", "best_known",
           "best_known_source", "best_known_tolerance", "best_known_difference", "tammes_margin",
           "bound",
           "softmax_margin", "softmax_kkt_residual", "softmax_qp_difference", "softmax_distance",
           "margin_gap", "inner_product_difference", "tammes_is_softmax_kkt", "verdict",
           "seconds")


def _inner_products(W) -> np.ndarray:
    """The sorted pairwise inner products: equal for congruent codes (any rotation, any
    relabelling)."""
    W = np.asarray(W, np.float64)
    return np.sort((W @ W.T)[np.triu_indices(len(W), 1)])


def verdict(margin_gap: float, distance_gap: float, independent_margin_gap: float,
            independent_difference: float, tol: float) -> str:
    """What the certified values say (module docstring). margin_gap: the softmax code's margin
    minus the Tammes code's; distance_gap: the Tammes code's d_min minus the softmax code's;
    independent_*: the independent softmax search's margin minus the softmax code's, and how
    far its inner products are from the Tammes code's."""
    if distance_gap < -tol:
        return "Tammes search missed (the softmax code has the larger distance)"
    if margin_gap < -tol:
        return "softmax search missed (the Tammes code has the larger margin)"
    if margin_gap > tol:
        return "differ: the softmax margin exceeds the Tammes code's"
    if independent_margin_gap >= -tol and independent_difference > tol:
        return "same margin, another configuration"
    return "same"


SEARCHES = ("best", "fast", "quick")


def tammes_search(K: int, d: int, search: str, starts_from=None) -> codes.Code:
    """The Tammes code by `search`: "best" is `codes.best_tammes_code` (backtracking line
    search); "fast" the same starts, constructions and restarts with the zoom line search
    (several times faster; enough where the landscape has few basins); "quick" 8 starts.
    `starts_from`: configurations (m, K, d) to start from as well."""
    if search == "best":
        return codes.best_tammes_code(K, d, starts_from=starts_from)
    if search == "fast":
        return codes.tammes_code(K, d, starts=64, restarts=2, starts_from=starts_from)
    return codes.tammes_code(K, d, starts=8, starts_from=starts_from)


def seed_codes(paths) -> dict:
    """Configurations by (d, K) from JSON-lines files (an earlier run's codes.jsonl, or lines
    with "d", "K" and "W"): every "W", "tammes_W", "softmax_W" and "independent_W" of the
    right shape."""
    seeds: dict = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            for key in ("W", "tammes_W", "softmax_W", "independent_W"):
                W = np.asarray(row.get(key, []), np.float64)
                if W.shape == (row["K"], row["d"]):
                    seeds.setdefault((row["d"], row["K"]), []).append(W)
    return {key: np.stack(found) for key, found in seeds.items()}


def _polished_or_none(W, objective):
    try:
        return codes.polished_code(W, objective)
    except ValueError:
        return None


def compare(K: int, d: int, starts: int, tol: float, search: str, seeds=None) -> dict:
    t0 = time.perf_counter()
    tammes = tammes_search(K, d, search, seeds)
    # The softmax search from random starts only: whether it finds the Tammes code on its own.
    # Its margin is the exact QP's; unpolished (a polish from a smoothed end point, 1e-5 off,
    # often wanders and costs minutes at K ~ 20; the margins compared here are exact anyway).
    independent = codes.softmax_code(K, d, starts=starts, polished=False)
    if independent.tammes > tammes.tammes + tol:
        # The softmax search found a better packing than the Tammes search: search again from
        # it as well.
        again = codes.tammes_code(K, d, starts=8, starts_from=independent.W[None],
                                  linesearch="backtracking")
        tammes = max(tammes, again, key=lambda c: c.tammes)
    row = finish_row(d, K, tammes, independent, [], tol)
    row["seconds"] = time.perf_counter() - t0
    return row


def finish_row(d: int, K: int, tammes: codes.Code, independent: codes.Code,
               others: list, tol: float) -> dict:
    """The row of (d, K): the softmax code is the best certified of the Tammes code polished
    as a softmax code, the independent search's code and `others` (configurations)."""
    itself = _polished_or_none(tammes.W, "softmax")
    candidates = [c for c in [itself, independent] + [_polished_or_none(W, "softmax")
                                                      for W in others] if c is not None]
    # Every candidate's margin is its exact QP's, certified or not: the largest is the softmax
    # code found (a polished one first among equals).
    soft = max(candidates, key=lambda c: (c.margin, c.certificate is not None))
    known = best_known.TAMMES.get((d, K))
    tcert, scert = tammes.certificate, soft.certificate
    margin_gap = soft.margin - tammes.margin
    difference = float(np.abs(_inner_products(soft.W) - _inner_products(tammes.W)).max())
    alone = float(np.abs(_inner_products(independent.W) - _inner_products(tammes.W)).max())
    return {
        "d": d, "K": K, "tammes_distance": tammes.tammes,
        "tammes_kkt_residual": None if tcert is None else tcert.kkt_residual,
        "tammes_active": None if tcert is None else len(tcert.active),
        "best_known": None if known is None else known.distance,
        "best_known_source": "" if known is None else known.source,
        "best_known_tolerance": None if known is None else known.tolerance,
        "best_known_difference": None if known is None else tammes.tammes - known.distance,
        "tammes_margin": tammes.margin, "bound": tammes.tammes ** 2 / 2,
        "softmax_margin": soft.margin,
        "softmax_kkt_residual": None if scert is None else scert.kkt_residual,
        "softmax_qp_difference": None if scert is None else scert.qp_margin - scert.margin,
        "softmax_distance": soft.tammes, "margin_gap": margin_gap,
        "inner_product_difference": difference,
        "tammes_is_softmax_kkt": itself is not None and abs(itself.margin - tammes.margin) <= tol,
        "independent_margin": independent.margin, "independent_distance": independent.tammes,
        "independent_kkt_residual": (None if independent.certificate is None
                                     else independent.certificate.kkt_residual),
        "independent_inner_product_difference": alone,
        "verdict": verdict(margin_gap, tammes.tammes - soft.tammes,
                           independent.margin - soft.margin, alone, tol),
        "tammes_W": tammes.W.tolist(), "softmax_W": soft.W.tolist(),
        "independent_W": independent.W.tolist(),
    }


def upgrade_row(row: dict, starts: int, tol: float) -> dict:
    """A row written before the independent softmax search: the search is run and the row
    finished again from its stored codes (re-polished; nothing else is searched again)."""
    t0 = time.perf_counter()
    d, K = row["d"], row["K"]
    tammes = codes.polished_code(np.asarray(row["tammes_W"]), "tammes")
    independent = codes.softmax_code(K, d, starts=starts, polished=False)
    new = finish_row(d, K, tammes, independent, [np.asarray(row["softmax_W"])], tol)
    new.update(search=row.get("search"), starts=row.get("starts"), seeded=row.get("seeded", 0),
               seconds=row.get("seconds", 0.0) + time.perf_counter() - t0)
    return new


def _number(x, digits=12):
    return "" if x is None else f"{x:.{digits}f}"


def _small(x):
    return "" if x is None else f"{x:+.1e}"


def _within(r) -> str:
    """The best-known difference and whether it is within the source's precision (or 1e-9)."""
    if r["best_known_difference"] is None:
        return ""
    tolerance = max(best_known.TAMMES[(r["d"], r["K"])].tolerance, 1e-9)
    mark = "yes" if abs(r["best_known_difference"]) <= tolerance else "**no**"
    return f"{r['best_known_difference']:+.1e} (within {tolerance:.0e}: {mark})"


def write_table(rows: list[dict], out: Path) -> None:
    with open(out / "codes.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| d | K | Tammes distance | KKT residual | best known | difference | Tammes "
             "margin - d^2/2 | softmax margin | KKT residual | softmax - Tammes margin | "
             "independent search: margin - softmax margin | its inner products - Tammes "
             "code's | verdict |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['d']} | {r['K']} | {_number(r['tammes_distance'])} | "
            f"{_small(r['tammes_kkt_residual'])} | {_number(r['best_known'])} | "
            f"{_within(r)} | {_small(r['tammes_margin'] - r['bound'])} | "
            f"{_number(r['softmax_margin'])} | {_small(r['softmax_kkt_residual'])} | "
            f"{_small(r['margin_gap'])} | "
            f"{_small(r['independent_margin'] - r['softmax_margin'])} | "
            f"{r['independent_inner_product_difference']:.1e} | {r['verdict']} |")
    (out / "codes.md").write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], out: Path, tol: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for d in sorted({r["d"] for r in rows}):
        mine = [r for r in rows if r["d"] == d]
        axes[0].semilogy([r["K"] for r in mine], [max(abs(r["margin_gap"]), 1e-17)
                                                  for r in mine], "o-", label=f"d = {d}")
        known = [r for r in mine if r["best_known"] is not None]
        axes[1].semilogy([r["K"] for r in known],
                         [max(abs(r["best_known_difference"]), 1e-17) for r in known], "o-",
                         label=f"d = {d}")
    axes[0].set_title("|softmax margin - Tammes code's margin| (certified)", fontsize=10)
    axes[1].set_title("|Tammes distance - best known| (where sourced)", fontsize=10)
    for ax in axes:
        ax.axhline(tol, color="gray", ls="--", lw=0.8)
        ax.set_xlabel("K")
        ax.legend()
    fig.savefig(out / "codes.png", dpi=120)
    plt.close(fig)


def _done(out: Path, search: str, starts: int) -> dict:
    """The rows of an earlier run into the same folder with the same softmax starts and a Tammes
    search at least as thorough (SEARCHES, strongest first), by (d, K)."""
    accepted = SEARCHES[:SEARCHES.index(search) + 1]
    path = out / "codes.jsonl"
    rows = {}
    if path.exists():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by an interruption: redone
                print(f"{path}:{number}: not a complete row, redone")
                continue
            if row.get("search") in accepted and row.get("starts") == starts:
                rows[(row["d"], row["K"])] = row
    return rows


CODE_TABLE_HEAD = '''\
"""Certified softmax and Tammes codes: the margin and the minimum pairwise distance of the
best codes `experiments/softmax_vs_tammes.py` found, each a KKT point of its max-min problem to
1e-12 (`ufm.analysis.polish`). A certificate of local optimality: the global optimum is proved
only where `ufm.analysis.best_known` says so. The sphere UFM's results compare the learned
classifiers with these (`code_margin`). Written by
`python experiments/softmax_vs_tammes.py --dims {dims} --code-table ufm/analysis/code_table.py`
(docs/softmax_vs_tammes.md); not edited by hand.
"""
from __future__ import annotations


def certified_margin(K: int, d: int) -> float | None:
    """The certified softmax margin of K classes in R^d, or None where none is tabulated."""
    return SOFTMAX_MARGIN.get((d, K))


'''


def write_code_table(rows: list[dict], path: Path) -> None:
    """The certified values (KKT residual <= 1e-12) as a Python module of plain literals
    (`ufm.analysis.code_table`)."""
    def table(name, comment, value, residual):
        lines = [f"# {comment}", f"{name} = {{"]
        lines += [f"    ({r['d']}, {r['K']}): {r[value]!r}," for r in rows
                  if r[residual] is not None and r[residual] <= 1e-12]
        return "\n".join(lines + ["}", ""])

    dims = " ".join(str(d) for d in sorted({r["d"] for r in rows}))
    text = CODE_TABLE_HEAD.format(dims=dims) + "\n".join([
        table("SOFTMAX_MARGIN", "(d, K): the softmax code's certified margin",
              "softmax_margin", "softmax_kkt_residual"),
        table("TAMMES_DISTANCE", "(d, K): the Tammes code's certified minimum distance",
              "tammes_distance", "tammes_kkt_residual")])
    path.write_text(text)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[3, 4, 5])
    parser.add_argument("--min-K", type=int, default=None, help="default d + 2")
    parser.add_argument("--max-K", type=int, default=30)
    parser.add_argument("--starts", type=int, default=32, help="random starts of the softmax "
                        "search (the Tammes search is best_tammes_code's)")
    parser.add_argument("--search", choices=SEARCHES, default="best",
                        help="the Tammes search (`tammes_search`)")
    parser.add_argument("--tol", type=float, default=1e-9,
                        help="a certified gap above this counts as a difference")
    parser.add_argument("--out", default="runs/softmax_vs_tammes")
    parser.add_argument("--seed-codes", nargs="+", default=[], metavar="JSONL",
                        help="also start the Tammes search from these files' codes (an earlier "
                        "run's codes.jsonl, or lines with d, K and W)")
    parser.add_argument("--tables-only", action="store_true",
                        help="search nothing: write the tables from the rows already in --out")
    parser.add_argument("--code-table", type=Path, default=None,
                        help="also write the certified values as this Python module")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: d = 3, K = 5 and 6, small searches")
    args = parser.parse_args()
    if args.quick:
        args.dims, args.max_K, args.starts, args.search = [3], 6, 4, "quick"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = _done(out, args.search, args.starts)
    old = [key for key, row in done.items() if "independent_margin" not in row]
    for key in old:
        done[key] = upgrade_row(done[key], args.starts, args.tol)
        print(f"d={key[0]} K={key[1]:2d}  upgraded: {done[key]['verdict']}", flush=True)
    if old:  # the log again, whole, the upgraded rows in place, replaced at once
        lines = []
        for line in (out / "codes.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            key = (row["d"], row["K"])
            lines.append(json.dumps(done[key]) if key in old and done[key]["search"]
                         == row.get("search") else line)
        tmp = out / "codes.jsonl.tmp"
        tmp.write_text("".join(line + "\n" for line in lines))
        os.replace(tmp, out / "codes.jsonl")
    seeds = seed_codes(args.seed_codes)
    rows = []
    with open(out / "codes.jsonl", "a") as log:
        for d in args.dims:
            low = d + 2 if args.min_K is None else max(args.min_K, d + 2)
            for K in range(low, args.max_K + 1):
                if (d, K) in done:
                    rows.append(done[(d, K)])
                    continue
                if args.tables_only:
                    continue
                row = compare(K, d, args.starts, args.tol, args.search, seeds.get((d, K)))
                row.update(search=args.search, starts=args.starts,
                           seeded=int(len(seeds.get((d, K), ()))))
                log.write(json.dumps(row) + "\n")
                log.flush()
                rows.append(row)
                print(f"d={d} K={K:2d}  Tammes {row['tammes_distance']:.12f} "
                      f"(residual {row['tammes_kkt_residual']})  softmax margin "
                      f"{row['softmax_margin']:.12f} (gap {row['margin_gap']:+.1e})  "
                      f"{row['verdict']}  ({row['seconds']:.0f} s)", flush=True)
                write_table(rows, out)  # as it goes: an interrupted sweep keeps its rows
    write_table(rows, out)
    plot(rows, out, args.tol)
    if args.code_table is not None:
        write_code_table(rows, args.code_table)
    differ = [(r["d"], r["K"]) for r in rows if r["verdict"].startswith("differ")]
    print(f"codes differ beyond {args.tol:g} at {len(differ)} of {len(rows)} (d, K): {differ}")
    missed = [(r["d"], r["K"]) for r in rows if "missed" in r["verdict"]]
    if missed:
        print(f"a search missed its optimum at {missed}: no verdict there")


if __name__ == "__main__":
    main()
