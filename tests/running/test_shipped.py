"""The shipped experiments by name: `ufm list`, `ufm run NAME` (files and scripts), `ufm.run`."""
import tomllib
from pathlib import Path

import pytest

from ufm import cli
from ufm.running import experiment, shipped

ROOT = Path(__file__).resolve().parents[2]


def test_every_file_of_experiments_is_listed_with_its_kind_and_description():
    listed = {s.name: s for s in shipped.available()}
    files = sorted(p for p in (ROOT / "experiments").iterdir() if p.suffix in (".toml", ".py"))
    assert sorted(listed) == [p.stem for p in files] and len(files) >= 20
    for path in files:
        item = listed[path.stem]
        assert item.path.resolve() == path.resolve() and item.description, item
        if path.suffix == ".toml":
            raw = tomllib.loads(path.read_text())
            assert (item.kind, item.description) == (raw.get("kind", "grid"), raw["description"])
        else:
            assert item.kind == "script" and len(item.description) <= 110
    assert listed["closed_forms"].kind == "grid" and listed["benign_landscape"].kind == "benign"


def test_a_name_loads_the_shipped_file_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    by_name = experiment.as_experiment("closed_forms", quick=True)
    by_path = experiment.as_experiment(ROOT / "experiments" / "closed_forms.toml", quick=True)
    assert by_name == by_path
    # A file of that name in the working folder wins over the shipped one.
    (tmp_path / "closed_forms").write_text('name = "mine"\n[problem]\nnum_classes = 3\n'
                                           'feature_dim = 4\nn_per_class = 2\n')
    assert experiment.as_experiment("closed_forms").name == "mine"


def test_unknown_names_and_scripts_are_refused_with_what_exists(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(experiment.ConfigError, match="no shipped experiment.*closed_forms"):
        experiment.as_experiment("closed_form")
    with pytest.raises(experiment.ConfigError, match="a shipped script.*ufm run softmax_vs_tammes"):
        experiment.as_experiment("softmax_vs_tammes")
    assert cli.main(["run", "closed_form"]) == 2
    assert "shipped ones (`ufm list`): benign_landscape" in capsys.readouterr().err
    # A path is a path: no shipped lookup for a name with a folder or a suffix.
    with pytest.raises(experiment.ConfigError, match="'experiments/nope.toml' does not exist"):
        experiment.as_experiment("experiments/nope.toml")


def test_ufm_list_prints_every_name(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for item in shipped.available():
        assert f"{item.name} " in out
    assert f"{len(shipped.available())} shipped experiments" in out
    assert cli.main(["list", "--paths"]) == 0
    paths = capsys.readouterr().out.split()
    assert [Path(p).name for p in paths] == [s.path.name for s in shipped.available()]


def test_ufm_run_name_runs_a_shipped_script_with_quick_and_out(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "shipped"
    folder.mkdir()
    (folder / "echo_args.py").write_text(
        '"""Writes its arguments."""\nimport sys, pathlib\n'
        'out = pathlib.Path(sys.argv[sys.argv.index("--out") + 1])\nout.mkdir(parents=True)\n'
        '(out / "argv.txt").write_text(" ".join(sys.argv[1:]))\nsys.exit(3)\n')
    monkeypatch.setattr(shipped, "INSTALLED", folder)
    monkeypatch.chdir(tmp_path)
    assert [s.name for s in shipped.available()] == ["echo_args"]
    assert cli.main(["run", "echo_args", "--quick", "--out", "o"]) == 3  # its exit status
    assert (tmp_path / "o" / "argv.txt").read_text() == "--out o --quick"
    assert "echo_args (script)" in capsys.readouterr().err
    assert cli.main(["run", "echo_args", "--set", "x=1"]) == 2
    assert "--set is not allowed" in capsys.readouterr().err
