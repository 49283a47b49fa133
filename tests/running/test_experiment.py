"""`ufm.running.experiment`: files loaded (a missing or invalid file named), overrides applied and
checked, quick versions merged from the kind."""
import textwrap

import pytest

import ufm
from ufm.running import config, experiment


def _write(tmp_path, text):
    path = tmp_path / "exp.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_missing_file_and_invalid_toml(tmp_path):
    with pytest.raises(config.ConfigError, match="does not exist"):
        ufm.running.experiment.load(tmp_path / "nope.toml")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        ufm.running.experiment.load(_write(tmp_path, "[problem\n"))


def test_overrides():
    exp = ufm.running.experiment.apply_overrides(ufm.running.experiment.load_default(),
                                 ["num_classes=4", "solver.steps=20", "loss=mse", "seeds=[5]"])
    assert exp.problem["num_classes"] == 4 and exp.solver["steps"] == 20
    assert exp.problem["loss"] == "mse" and exp.run["seeds"] == [5]
    with pytest.raises(config.ConfigError, match="hyper.lam_W=-1.0"):
        ufm.running.experiment.apply_overrides(exp, ["lam_W=-1"])
    with pytest.raises(config.ConfigError, match="unknown key"):
        ufm.running.experiment.apply_overrides(exp, ["nonsense=1"])


def test_a_quick_version_merges_the_kinds_quick_settings_over_the_file():
    exp = experiment.resolve({"solver": {"steps": 5000}, "run": {"seeds": [0, 1, 2]}})
    quick = experiment.quick_version(exp)
    assert quick.solver["steps"] == 300 and quick.run["seeds"] == [0]
    assert exp.solver["steps"] == 5000  # the experiment itself is a value, unchanged
