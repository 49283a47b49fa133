"""Job arrays: `ufm run FILE --out DIR --shard I/N` in independent processes sharing DIR, no
coordinator; the last shard in (or any later run) assembles the one-process table."""
import re
import subprocess
import sys

import pytest

import ufm
from ufm import cli
from ufm.running import experiment, results

from .test_multihost import GRID, _table, _ufm_env


def _shard_files(out):
    """shard folder -> the unit checkpoints it holds."""
    area = next((out / results.SHARDS).iterdir())
    return {d.name: sorted(p.name for p in (d / results.CHECKPOINTS).glob("*.npz"))
            for d in sorted(area.iterdir()) if d.is_dir()}


def test_three_shards_in_separate_processes_give_the_one_process_table(tmp_path):
    exp = tmp_path / "grid.toml"
    exp.write_text(GRID)
    out = tmp_path / "array"
    procs = [subprocess.Popen([sys.executable, "-m", "ufm", "run", str(exp), "--out", str(out),
                               "--shard", f"{i}/3", "--no-plots", "--no-progress"],
                              env=_ufm_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(3)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    assert any("assembled the table" in err for _, err in outputs), outputs
    ufm.run(exp, out=tmp_path / "one", progress=False)
    one, array = _table(tmp_path / "one"), _table(out)
    assert list(one) == list(array) and len(one["row"]) == 24
    for key in one:
        assert list(map(str, one[key])) == list(map(str, array[key])), key
    # Shards never wrote the same file: every unit in exactly one shard's folder, its own.
    held = _shard_files(out)
    assert sorted(held) == ["0-of-3", "1-of-3", "2-of-3"]
    tags = [t for files in held.values() for t in files]
    assert len(tags) == len(set(tags)) == len(list((out / results.CHECKPOINTS).glob("*.npz")))


def test_a_missing_shard_is_run_later_and_any_later_run_assembles(tmp_path, capsys):
    exp = tmp_path / "grid.toml"
    exp.write_text(GRID)
    out = tmp_path / "array"
    first = experiment.run(exp, out=out, progress=False, shard=(0, 2))
    assert first.out is None and first.pending > 0 and not (out / results.RESULTS).exists()
    # Shard 1 crashed (never ran); running shard 0 again finds its units done, assembles nothing.
    assert cli.main(["run", str(exp), "--out", str(out), "--shard", "0/2", "--no-plots",
                     "--no-progress"]) == 0
    assert re.search(r"its (\d+) units? finished \(\1 from checkpoints\)",
                     capsys.readouterr().err)
    assert not (out / results.RESULTS).exists()
    # Shard 1 runs later: the last one in assembles.
    last = experiment.run(exp, out=out, progress=False, shard=(1, 2))
    assert last.out == out and len(last.rows) == 24 and last.resumed == last.units
    table = _table(out)
    # The table is gone (say, a crash while it was written): a run without --shard rebuilds
    # it from the shards' checkpoints, running nothing.
    (out / results.RESULTS).unlink()
    again = experiment.run(exp, out=out, progress=False)
    assert again.resumed == again.units
    rebuilt = _table(out)
    assert list(rebuilt) == list(table)
    assert all(list(map(str, rebuilt[k])) == list(map(str, table[k])) for k in table)


def test_shards_are_checked_before_anything_runs(tmp_path, capsys):
    exp = tmp_path / "grid.toml"
    exp.write_text(GRID)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        assert cli.main(["run", str(exp), "--out", str(tmp_path / "x"), f"--shard={bad}"]) == 2
        assert "--shard" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert cli.main(["run", str(exp), "--shard", "0/2"]) == 2
    assert "--shard needs --out" in capsys.readouterr().err
    # A folder holding another configuration is refused, shard or not.
    other = tmp_path / "other.toml"
    other.write_text(GRID.replace("steps = 200", "steps = 100"))
    ufm.run(other, out=tmp_path / "taken", progress=False)
    with pytest.raises(results.DifferentConfiguration):
        experiment.run(exp, out=tmp_path / "taken", progress=False, shard=(0, 2))
