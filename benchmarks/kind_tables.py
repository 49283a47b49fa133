"""The results tables of quick versions of every shipped experiment file, recorded and compared:
the check that a refactoring of the run machinery changed no number.

    python benchmarks/kind_tables.py record DIR            # run each file quickly, keep its table
    python benchmarks/kind_tables.py compare BEFORE AFTER  # cell by cell, timing columns aside

Each file runs through the `ufm` command with its kind's quick settings merged into it (few
steps, one seed, few starts, two epochs: `ufm.running.kind.Kind.quick`, the settings of `ufm run
FILE
--quick`), so the whole set takes minutes on a CPU. `compare`
prints, per file, the number of rows and columns compared and the largest relative difference
of a number; text cells must be equal. Columns renamed since the recording are matched through
RENAMED.
"""
from __future__ import annotations

import argparse
import csv
import math
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
# Columns that measure time or the machine, not the mathematics.
TIMING = {"seconds", "wall_seconds"}
# Old column name -> new (layer-wise NC1 of networks is named as in the UFM's histories).
RENAMED = {f"layer_nc1_{j}": f"nc1_layer{j}" for j in range(64)}


def _quick(kind: str) -> dict:
    """The kind's quick settings, defined once with the kind (`ufm.running.kind.Kind.quick`; what
    `ufm run FILE --quick` merges in)."""
    from ufm.running import registry as kinds

    return kinds.get(kind).quick


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def quick_file(path: Path, directory: Path) -> Path:
    """The experiment file with its kind's quick settings merged in (a file, not --set overrides, so
    the same input reaches every version of the code)."""
    raw = tomllib.loads(path.read_text())
    for section, values in _quick(raw.get("kind", "grid")).items():
        raw.setdefault(section, {}).update(values)
    lines = [f"{k} = {_toml(v)}" for k, v in raw.items() if not isinstance(v, (dict, list))
             or (isinstance(v, list) and not all(isinstance(t, dict) for t in v))]
    for table in raw.get("zip", []):
        lines += ["[[zip]]"] + [f'"{k}" = {_toml(v)}' for k, v in table.items()]
    for key, value in raw.items():
        if isinstance(value, dict):
            lines += [f"[{key}]"] + [f'"{k}" = {_toml(v)}' for k, v in value.items()]
    out = directory / path.name
    out.write_text("\n".join(lines) + "\n")
    return out


def _kind(path: Path) -> str:
    return tomllib.loads(path.read_text()).get("kind", "solve")


def record(directory: Path, only=None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for path in sorted(EXPERIMENTS.glob("*.toml")):
        if only and path.stem not in only:
            continue
        kind = _kind(path)
        if (directory / f"{path.stem}.csv").is_file():
            continue  # recorded already
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, "-m", "ufm", "run", str(quick_file(path, Path(tmp))),
                       "--out", f"{tmp}/out", "--no-plots", "--no-progress"]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{path.stem}: failed\n{done.stderr[-2000:]}")
                continue
            shutil.copy(f"{tmp}/out/results.csv", directory / f"{path.stem}.csv")
            print(f"{path.stem} ({kind}): recorded", flush=True)


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{RENAMED.get(k, k): v for k, v in row.items()} for row in csv.DictReader(handle)]


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return None


# Values this small are round-off around a vanishing quantity (a gap at the optimum, an NC metric
# at collapse): compared by absolute difference, since their relative difference means nothing.
ROUND_OFF = 1e-10


def compare(before: Path, after: Path, tolerance: float = 0.0) -> bool:
    """Cell by cell. Numbers: the largest relative difference, where either value is above
    ROUND_OFF, and the largest absolute difference where both are below it; the tables agree
    when both are within `tolerance` (0: bit for bit)."""
    same = True
    for old in sorted(before.glob("*.csv")):
        new = after / old.name
        if not new.is_file():
            print(f"{old.stem}: missing after")
            same = False
            continue
        a, b = _read(old), _read(new)
        if len(a) != len(b):
            print(f"{old.stem}: {len(a)} rows before, {len(b)} after")
            same = False
            continue
        columns = [c for c in a[0] if c not in TIMING]
        missing = [c for c in columns if c not in b[0]]
        worst, worst_small, text_diffs = 0.0, 0.0, []
        for r, (x, y) in enumerate(zip(a, b)):
            for c in columns:
                if c in missing or x[c] == y[c]:
                    continue
                u, v = _number(x[c]), _number(y[c])
                if u is not None and v is not None and not (math.isnan(u) and math.isnan(v)):
                    if max(abs(u), abs(v)) < ROUND_OFF:
                        worst_small = max(worst_small, abs(u - v))
                    else:
                        worst = max(worst, abs(u - v) / max(abs(u), abs(v)))
                elif not (u is not None and v is not None):
                    text_diffs.append(f"row {r} {c}: {x[c]!r} -> {y[c]!r}")
        added = [c for c in b[0] if c not in a[0] and c not in TIMING]
        ok = (not missing and not text_diffs and worst <= tolerance
              and worst_small <= tolerance)
        same &= ok
        print(f"{old.stem}: {len(a)} rows x {len(columns)} columns, "
              f"largest relative difference {worst:.1e}, "
              f"absolute below {ROUND_OFF:.0e} {worst_small:.1e}"
              + (f"; missing after: {missing}" if missing else "")
              + (f"; new columns: {added}" if added else "")
              + (f"; text differs: {text_diffs[:3]}" if text_diffs else ""))
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("dir", type=Path)
    rec.add_argument("--only", nargs="+", help="experiment names (file stems)")
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("before", type=Path)
    cmp_.add_argument("after", type=Path)
    cmp_.add_argument("--tolerance", type=float, default=0.0,
                      help="largest difference that counts as equal (default 0: bit for bit)")
    args = parser.parse_args()
    if args.command == "record":
        record(args.dir, args.only)
        return 0
    return 0 if compare(args.before, args.after, args.tolerance) else 1


if __name__ == "__main__":
    sys.exit(main())
