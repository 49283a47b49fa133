"""The `ufm` command: `ufm run [CONFIG.toml | NAME] [--out DIR] [--set key=value ...]`,
`ufm list`, `ufm config [KIND]`, `ufm show DIR`, `ufm plot DIR`, `ufm export DIR`. It parses
arguments and dispatches to `ufm.running.experiment` (every kind alike); NAME is a shipped
experiment (`ufm.running.shipped`), KIND an experiment kind (`ufm.running.reference`)."""
from __future__ import annotations

import argparse
import errno
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path

from ufm.errors import ConfigError, InputError
from ufm.running import experiment, multihost, results, shipped
from ufm.running.results import ResultsFolderError
from ufm.running.tables import fmt
from ufm.solvers import batching


def folder_name(name: str) -> str:
    """An experiment's name as one folder under runs/: characters other than letters, digits,
    '.', '_' and '-' become '_' and leading dots are dropped, so `name = "/elsewhere/x"` or
    "../x" cannot put the default output anywhere else."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return safe[:100] or "experiment"


def _run_command(args) -> str:
    """The command that resumes this run (for the interruption message)."""
    parts = ["ufm", "run"] + ([args.config] if args.config else []) + ["--out", str(args.out)]
    parts += ["--quick"] if args.quick else []
    parts += ["--shard", args.shard] if args.shard else []
    for item in args.set or []:
        parts += ["--set", item]
    return " ".join(shlex.quote(p) for p in parts)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler preempting or requeueing the job) raised as an interruption, so
    that it ends like Ctrl-C: finished units saved, the resume command printed."""


def _on_sigterm(signum, frame):
    raise Terminated


def _disk_error(err: OSError, args) -> str:
    """One line (and the resume command) for a write that failed, instead of a traceback."""
    where = f" {err.filename}" if err.filename else ""
    what = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        advice = "free some space, then resume with"
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = "choose a folder you can write (--out), or resume there with"
    else:
        advice = "resume with"
    return (f"ufm run: could not write{where}: {what}. Finished units are saved in {args.out}/ "
            f"(nothing is replaced before its new version is whole); {advice}:\n"
            f"  {_run_command(args)}")


def _run_script(args, script: shipped.Shipped) -> int:
    """`ufm run NAME` for a shipped script: `python3 SCRIPT [--quick] --out DIR`, in this
    Python, its output and exit status passed through."""
    refused = [flag for flag, given in (("--set", args.set), ("--host-devices", args.host_devices),
                                        ("--shard", args.shard),
                                        ("--distributed", args.distributed),
                                        ("--coordinator", args.coordinator)) if given]
    if refused:
        print(f"ufm run: {script.name} is a script; {', '.join(refused)} is not allowed for it "
              "(it takes --quick and --out)", file=sys.stderr)
        return 2
    out = args.out or str(Path("runs") / script.name)
    command = [sys.executable, str(script.path), "--out", out] + (["--quick"] if args.quick else [])
    print(f"ufm run: {script.name} (script): {' '.join(shlex.quote(c) for c in command)}",
          file=sys.stderr)
    return subprocess.call(command)


def _cmd_run(args) -> int:
    shard = None
    if args.shard is not None:
        try:
            shard = results.parse_shard(args.shard)
        except InputError as err:
            print(f"ufm run: {err}", file=sys.stderr)
            return 2
        if args.distributed or args.coordinator or multihost.requested_by_environment():
            print("ufm run: --shard is for independent processes (a job array); not with "
                  "--distributed, --coordinator or JAX_COORDINATOR_ADDRESS", file=sys.stderr)
            return 2
        if not args.out:
            print("ufm run: --shard needs --out: the folder every shard shares", file=sys.stderr)
            return 2
    if args.config and not Path(args.config).exists() and shipped.looks_like_name(args.config):
        try:
            found = shipped.find(args.config)
        except InputError as err:
            print(f"ufm run: {err}", file=sys.stderr)
            return 2
        if found.kind == "script":
            return _run_script(args, found)
    if args.host_devices is not None and args.host_devices < 1:
        print(f"ufm run: --host-devices {args.host_devices} is not allowed: an integer >= 1",
              file=sys.stderr)
        return 2
    if args.distributed or args.coordinator or multihost.requested_by_environment():
        try:
            multihost.initialize(args.coordinator, args.num_processes, args.process_id)
        except ValueError as err:
            print(f"ufm run: {err}", file=sys.stderr)
            return 2
        import jax

        joined = multihost.joined()
        ids = joined["local_device_ids"]
        print(f"ufm run: process {multihost.index()} of {multihost.count()} "
              f"({joined['cluster']}): {jax.local_device_count()} local "
              f"{jax.default_backend()} devices"
              + (f", local device ids {ids}" if ids is not None else ""), file=sys.stderr)
    else:  # before anything starts JAX; one process per host keeps JAX's own device choice
        batching.use_host_devices(args.host_devices)
    main = multihost.is_main()
    try:
        chosen = experiment.as_experiment(args.config, args.set or (), quick=args.quick)
    except ConfigError as err:
        print(f"ufm run: {err}", file=sys.stderr)
        return 2
    args.out = Path(args.out) if args.out else Path("runs") / folder_name(chosen.name)
    if args.out.exists() and not args.out.is_dir():
        print(f"ufm run: {args.out} is a file, not a folder; choose another --out",
              file=sys.stderr)
        return 2
    if main:
        hosts = f" on {multihost.count()} processes" if multihost.count() > 1 else ""
        print(f"ufm run: {chosen.name}: {experiment.describe(chosen)}{hosts} -> {args.out}",
              file=sys.stderr)
    # SIGTERM ends the run as Ctrl-C does (a handler can only be set from the main thread).
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = experiment.run(chosen, out=args.out, progress=not args.no_progress,
                                shard=shard)
    except KeyboardInterrupt as err:
        why = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        print(f"\nufm run: {why}; finished units are saved in {args.out}/. Resume with:\n"
              f"  {_run_command(args)}", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    except InputError as err:  # a bad file or folder, missing dataset files, ...
        print(f"ufm run: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the disk: full, read-only, not ours
        print(_disk_error(err, args), file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if not main:
        return 0  # process 0 writes the folder, the figures and the summary
    if shard is not None and result.out is None:
        done = result.units - result.pending
        units = f"{result.mine} unit" + ("" if result.mine == 1 else "s")
        print(f"ufm run: shard {shard[0]}/{shard[1]}: its {units} finished"
              f" ({result.resumed} from checkpoints) in {result.seconds:.1f} s; {done} of "
              f"{result.units} units of the experiment are finished. The table is assembled "
              f"in {args.out}/ when the last shard finishes, or by running this command again "
              "once they all have.", file=sys.stderr)
        return 0
    if not args.no_plots:
        try:
            experiment.figures(args.out)
        except OSError as err:  # the results are whole; only a figure could not be written
            print(_disk_error(err, args), file=sys.stderr)
            return 1
    if shard is not None:
        print(f"ufm run: shard {shard[0]}/{shard[1]}: every unit is finished; this shard "
              f"assembled the table in {args.out}/", file=sys.stderr)
    print(experiment.summary(args.out))
    resumed = (f"; resumed {result.resumed} of {result.units} units from checkpoints"
               if result.resumed else "")
    print(f"wall time {result.seconds:.1f} s{resumed}; results in {args.out}/")
    return 0


def _cmd_list(args) -> int:
    try:
        items = shipped.available()
        if args.paths:
            for item in items:
                print(item.path)
        else:
            print(shipped.listing())
    except InputError as err:
        print(f"ufm list: {err}", file=sys.stderr)
        return 2
    return 0


def _cmd_config(args) -> int:
    from ufm.running import reference
    from ufm.running import registry as kinds

    if args.markdown:
        print(reference.page(), end="")
        return 0
    if args.kind is None:
        for name in kinds.KIND_MODULES:
            about = textwrap.shorten(kinds.get(name).about.split(";")[0], 84)
            print(f"{name:<14} {about}")
        print("\nufm config KIND: every key of that kind (ufm config --markdown: all, as "
              "docs/configuration.md)")
        return 0
    try:
        print(reference.text(args.kind))
    except ConfigError as err:
        print(f"ufm config: {err}", file=sys.stderr)
        return 2
    return 0


def _cmd_export(args) -> int:
    from ufm.running import export

    if not args.tensorboard:
        print("ufm export: say what to write: --tensorboard", file=sys.stderr)
        return 2
    try:
        written = export.tensorboard(args.dir, args.out)
    except (InputError, ResultsFolderError) as err:
        print(f"ufm export: {err}", file=sys.stderr)
        return 2
    where = Path(args.out) if args.out else Path(args.dir) / "tensorboard"
    print(f"ufm export: {len(written)} TensorBoard runs in {where}/; view them with "
          f"tensorboard --logdir {where}")
    return 0


def _cmd_show(args) -> int:
    path = Path(args.dir) / results.RESULTS
    if not path.is_file():
        print(f"ufm show: {args.dir} is not a results folder ({results.RESULTS} is missing)",
              file=sys.stderr)
        return 2
    if args.all:
        try:
            table = results.read_table(path)
        except ResultsFolderError as err:
            print(f"ufm show: {err}", file=sys.stderr)
            return 2
        columns = list(table)
        print(",".join(columns))
        for i in range(len(table["row"])):
            print(",".join(fmt(table[c][i]) for c in columns))
        return 0
    try:
        print(experiment.summary(args.dir))
    except ResultsFolderError as err:
        print(f"ufm show: {err}", file=sys.stderr)
        return 2
    return 0


def _cmd_plot(args) -> int:
    if not (Path(args.dir) / results.RESULTS).is_file():
        print(f"ufm plot: {args.dir} is not a results folder ({results.RESULTS} is missing)",
              file=sys.stderr)
        return 2
    try:
        written = experiment.figures(args.dir, metrics=args.metric, x=args.x, y=args.y)
    except (ResultsFolderError, KeyError, ValueError) as err:
        print(f"ufm plot: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ufm", description="Unconstrained feature model "
                                     "simulator: neural collapse, landscapes, grids.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment (default: the built-in one)")
    run.add_argument("config", nargs="?", help="an experiment TOML file, or the name of a shipped "
                     "experiment (`ufm list`); default: the built-in one")
    run.add_argument("--out", help="results folder (default: runs/<name>)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a key, e.g. --set problem.loss=mse --set steps=1000")
    run.add_argument("--no-plots", action="store_true", help="skip the figures")
    run.add_argument("--quick", action="store_true",
                     help="a smoke run: the kind's quick settings (few steps, one seed, ...)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--shard", metavar="I/N",
                     help="a job array's task I of N (independent processes, no coordinator): "
                     "run shard I of the units into --out, shared by the shards; the last one "
                     "to finish assembles the table (e.g. --shard "
                     "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    run.add_argument("--host-devices", type=int, metavar="N",
                     help="on a CPU, split it into N JAX devices and shard each batch over "
                     "them (default: the usable cores, at most "
                     f"{batching.MAX_HOST_DEVICES}; 1: one device)")
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
    listed = sub.add_parser("list", help="list the shipped experiments (run one: ufm run NAME)")
    listed.add_argument("--paths", action="store_true", help="print their files' paths only")
    listed.set_defaults(func=_cmd_list)
    configs = sub.add_parser("config", help="the configuration reference: every key of a kind "
                             "(type, default, allowed values, meaning)")
    configs.add_argument("kind", nargs="?", help="grid, benign, origin_phase, saddle_escape, "
                         "net or transfer (none: list them)")
    configs.add_argument("--markdown", action="store_true",
                         help="every kind as Markdown (docs/configuration.md)")
    configs.set_defaults(func=_cmd_config)
    exports = sub.add_parser("export", help="write a results folder's histories for other "
                             "tools (TensorBoard)")
    exports.add_argument("dir")
    exports.add_argument("--tensorboard", action="store_true",
                         help="TensorBoard event files, one run per row (view: tensorboard "
                         "--logdir DIR/tensorboard)")
    exports.add_argument("--out", help="where to write them (default: DIR/tensorboard)")
    exports.set_defaults(func=_cmd_export)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `ufm show DIR | head`: the reader has all it wanted
        try:
            sys.stdout = open(os.devnull, "w")  # nothing more to flush at exit
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
