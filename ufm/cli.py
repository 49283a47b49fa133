"""The `ufm` command: `ufm run [CONFIG.toml] [--out DIR] [--set key=value ...]`, `ufm show DIR`,
`ufm plot DIR`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SUMMARY_METRICS = ("nc1", "nc2_W", "nc2_H", "nc3", "nc4", "rel_gap")
# Tables with GNC columns (d < K-1, or the sphere) show those instead of the ETF distances;
# margins are "worst" at their smallest.
GNC_SUMMARY_METRICS = ("nc1", "gnc2_margin", "code_margin", "gnc2_tammes", "gnc3", "rel_gap")
# Multi-label tables: NC1 over label sets, the single-label ETF, and NC_m.
MULTILABEL_SUMMARY_METRICS = ("nc1", "nc2_W", "nc2_H", "nc3", "nc_m", "rel_gap")
# Imbalanced tables: minority collapse and the convex oracle's gap.
IMBALANCE_SUMMARY_METRICS = ("nc1", "nc2_W", "minority_cos", "w_norm_ratio", "oracle_gap",
                             "collapse_ratio")
LARGER_IS_BETTER = ("gnc2_margin", "gnc2_tammes", "code_margin")


def _fmt(value) -> str:
    if isinstance(value, float) or isinstance(value, np.floating):
        return "nan" if np.isnan(value) else f"{value:.2e}"
    return str(value)


def _format_table(header, lines) -> list[str]:
    widths = [max(len(r[j]) for r in [header] + lines) for j in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    return out + ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in lines]


def _counts(values) -> str:
    values = [str(v) for v in values]
    return ", ".join(f"{values.count(v)} {v}" for v in dict.fromkeys(values))


def _landscape_summary(table: dict, kind: str) -> str:
    from ufm.plots import series_labels

    labels, _ = series_labels(table)
    lines = []
    if kind == "benign":
        header = ["configuration", "start", "runs", "reached f*", "end-point verdicts"]
        keys = list(dict.fromkeys(zip(labels, table["start"])))
        for label, start in keys:
            rows = [i for i, lab in enumerate(labels) if lab == label and table["start"][i] == start]
            reached = np.mean(np.asarray(table["reached"])[rows])
            lines.append([label, str(start), str(len(rows)), f"{reached:.0%}",
                          _counts(table["end_verdict"][i] for i in rows)])
        note = "(reached: |f - f*| <= reach_rtol |f*|, f* the closed form or the best found)"
    elif kind == "origin_phase":
        header = ["configuration", "ratio", "eig_min", "formula", "origin verdict",
                  "runs end at", "f - f*"]
        for label, ratio in dict.fromkeys(zip(labels, table["ratio"])):
            rows = [i for i, lab in enumerate(labels) if lab == label and table["ratio"][i] == ratio]
            i = rows[0]
            ends = ["zero" if table["w_norm"][k] < 1e-4 else "collapse" for k in rows]
            gap = np.max(np.abs(np.asarray(table["objective"])[rows] - table["f_star"][i]))
            lines.append([label, f"{ratio:g}", _fmt(table["origin_eig_min"][i]),
                          _fmt(table["origin_eig_min_formula"][i]),
                          str(table["origin_verdict"][i]), _counts(ends), _fmt(gap)])
        note = "(ratio = sqrt(lam_W lam_H) / (c_L / (K sqrt n)); the origin flips at 1)"
    else:
        header = ["configuration", "epsilon", "saddle eig_min", "plateau (median)",
                  "predicted", "escaped"]
        for label, eps in dict.fromkeys(zip(labels, table["epsilon"])):
            rows = [i for i, lab in enumerate(labels) if lab == label and table["epsilon"][i] == eps]
            plateau = np.asarray(table["plateau"], float)[rows]
            lines.append([label, f"{eps:g}", _fmt(table["saddle_eig_min"][rows[0]]),
                          f"{np.nanmedian(plateau):.0f}" if not np.all(np.isnan(plateau)) else "-",
                          f"{table['predicted_plateau'][rows[0]]:.0f}",
                          f"{int(np.sum(np.asarray(table['escaped'])[rows]))}/{len(rows)}"])
        note = ("(predicted: ln(drop |f(saddle)| / epsilon) / ln(1 + lr |eig_min|), linear escape; "
                "compare slopes in epsilon)")
    return "\n".join(_format_table(header, lines) + [note])


def summary(table: dict, kind: str = "solve") -> str:
    """One line per configuration (seeds pooled): status counts and the worst final metrics;
    landscape kinds get their own columns."""
    from ufm import io
    from ufm.plots import series_labels

    if kind == "net":
        from ufm.nets.experiment import summary as net_summary

        return net_summary(table)
    if kind != "solve":
        return _landscape_summary(table, kind)
    labels, _ = series_labels(table)
    metrics = (GNC_SUMMARY_METRICS if "gnc2_margin" in table
               else MULTILABEL_SUMMARY_METRICS if "nc_m" in table
               else IMBALANCE_SUMMARY_METRICS if "minority_cos" in table else SUMMARY_METRICS)
    header = ["configuration", "runs", "status", *metrics, "steps", "s/run"]
    lines = []
    for label in dict.fromkeys(labels):
        rows = [i for i, lab in enumerate(labels) if lab == label]
        statuses = [str(table["status"][i]) for i in rows]
        status = _counts(statuses)
        worst = []
        for key in metrics:
            values = np.abs(io.float_column(table, key)[rows])
            pick = np.nanmin if key in LARGER_IS_BETTER else np.nanmax
            worst.append(_fmt(float(pick(values))) if not np.all(np.isnan(values)) else "-")
        steps = int(np.max(np.asarray(table["steps"])[rows]))
        seconds = float(np.mean(np.asarray(table["seconds"], dtype=float)[rows]))
        lines.append([label, str(len(rows)), status, *worst, str(steps), f"{seconds:.2f}"])
    out = _format_table(header, lines)
    out.append("(worst over seeds of the final values; rel_gap = |f - f*|/|f*|, '-' where no "
               "closed form is known)")
    if "minority_cos" in table:
        out.append("(minority_cos: mean cosine between minority classifiers, 1 at collapse; "
                   "oracle_gap: (f - f_oracle)/|f_oracle|; collapse_ratio: the n_max/n_min at "
                   "which the minority collapses, from the convex oracle)")
    if "gnc2_margin" in table:
        out.append("(gnc2_margin: min one-vs-rest distance of the normalized classifiers; "
                   "code_margin: the softmax code's, where known exactly)")
    return "\n".join(out)


def _is_net_file(path) -> bool:
    from ufm import config

    try:
        return config.read_toml(path).get("kind") == "net"
    except config.ConfigError:
        return False  # config.load reports it


def _run_net(args) -> int:
    """`ufm run` on a network experiment (kind = "net", see ufm.nets.experiment)."""
    from ufm import config, grid, io, plots
    from ufm.nets import data as _data
    from ufm.nets import experiment as net_experiment

    try:
        experiment = net_experiment.load(args.config)
        if args.set:
            experiment = net_experiment.apply_overrides(experiment, args.set)
    except (config.ConfigError, ValueError) as err:
        print(f"ufm run: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("runs") / experiment.name
    n_configs = len(net_experiment.configurations(experiment))
    print(f"ufm run: {experiment.name}: {n_configs} trainings -> {out}", file=sys.stderr)
    try:
        result = net_experiment.run(experiment, out=out, progress=not args.no_progress)
    except (grid.ResultsFolderError, _data.DatasetFilesMissing, ValueError) as err:
        print(f"ufm run: {err}", file=sys.stderr)
        return 2
    if not args.no_plots:
        plots.plot_results(out)
    print(summary(io.read_table(out / io.RESULTS), "net"))
    print(f"wall time {result.seconds:.1f} s; results in {out}/")
    return 0


def _cmd_run(args) -> int:
    from ufm import config, grid, multihost, plots

    if args.distributed or args.coordinator or multihost.requested_by_environment():
        try:
            multihost.initialize(args.coordinator, args.num_processes, args.process_id)
        except ValueError as err:
            print(f"ufm run: {err}", file=sys.stderr)
            return 2
    main = multihost.is_main()
    if args.config and _is_net_file(args.config):
        return _run_net(args)
    try:
        experiment = config.load(args.config) if args.config else config.load_default()
        if args.set:
            experiment = config.apply_overrides(experiment, args.set)
    except config.ConfigError as err:
        print(f"ufm run: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("runs") / experiment.name
    n_configs = len(config.configurations(experiment))
    if main:
        hosts = f" on {multihost.count()} processes" if multihost.count() > 1 else ""
        print(f"ufm run: {experiment.name}: {n_configs} runs{hosts} -> {out}", file=sys.stderr)
    try:
        result = grid.run(experiment, out=out, progress=not args.no_progress)
    except grid.ResultsFolderError as err:
        print(f"ufm run: {err}", file=sys.stderr)
        return 2
    if not main:
        return 0  # process 0 writes the folder, the figures and the summary
    if not args.no_plots:
        plots.plot_results(out)
    from ufm import io

    print(summary(io.read_table(out / io.RESULTS), experiment.kind))
    print(f"wall time {result.seconds:.1f} s; results in {out}/")
    return 0


def _cmd_show(args) -> int:
    from ufm import io

    path = Path(args.dir) / io.RESULTS
    if not path.is_file():
        print(f"ufm show: {args.dir} is not a results folder ({io.RESULTS} is missing)",
              file=sys.stderr)
        return 2
    table = io.read_table(path)
    if args.all:
        columns = list(table)
        print(",".join(columns))
        for i in range(len(table["row"])):
            print(",".join(_fmt(table[c][i]) for c in columns))
    else:
        from ufm.plots import results_kind

        print(summary(table, results_kind(Path(args.dir))))
    return 0


def _cmd_plot(args) -> int:
    from ufm import io, plots

    if not (Path(args.dir) / io.RESULTS).is_file():
        print(f"ufm plot: {args.dir} is not a results folder ({io.RESULTS} is missing)",
              file=sys.stderr)
        return 2
    for path in plots.plot_results(args.dir, metrics=args.metric, x=args.x, y=args.y):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ufm", description="Unconstrained feature model "
                                     "simulator: neural collapse, landscapes, grids.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment (default: the built-in one)")
    run.add_argument("config", nargs="?", help="experiment TOML file (default: built-in)")
    run.add_argument("--out", help="results folder (default: runs/<name>)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a key, e.g. --set problem.loss=mse --set steps=1000")
    run.add_argument("--no-plots", action="store_true", help="skip the figures")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    hosts = run.add_argument_group(
        "several hosts", "run one process per host (or per GPU); each runs a share of the grid "
        "and process 0 writes the results. SLURM / TPU pod slices: --distributed alone. "
        "Elsewhere: the three options below, or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
        "JAX_PROCESS_ID")
    hosts.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() (cluster from the environment)")
    hosts.add_argument("--coordinator", metavar="HOST:PORT",
                       help="address of process 0's coordination service")
    hosts.add_argument("--num-processes", type=int, help="number of processes in all")
    hosts.add_argument("--process-id", type=int, help="this process's index, 0 .. N-1")
    run.set_defaults(func=_cmd_run)
    show = sub.add_parser("show", help="print the results table of a results folder")
    show.add_argument("dir")
    show.add_argument("--all", action="store_true", help="every row and column (CSV)")
    show.set_defaults(func=_cmd_show)
    plot = sub.add_parser("plot", help="redraw the figures of a results folder")
    plot.add_argument("dir")
    plot.add_argument("--metric", action="append", help="only this metric (repeatable)")
    plot.add_argument("--x", help="grid figures: the axis along x (a configuration column)")
    plot.add_argument("--y", help="grid figures: the axis along y (heatmaps)")
    plot.set_defaults(func=_cmd_plot)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
