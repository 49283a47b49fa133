"""The leaves: `ufm.errors` (one family of input errors) and `ufm._atomic` (files that appear
whole or not at all)."""
import numpy as np
import pytest

import ufm
from ufm import _atomic
from ufm.errors import ConfigError, InputError


def test_input_errors_are_one_family():
    assert issubclass(ConfigError, InputError) and issubclass(InputError, ValueError)
    assert ufm.ConfigError is ConfigError and ufm.running.config.ConfigError is ConfigError


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "table.csv"
    _atomic.write_text(path, "old")

    def half_written(tmp):
        tmp.write_text("ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _atomic.replace_atomically(path, half_written)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]  # no temporary left


def test_arrays_round_trip(tmp_path):
    _atomic.write_arrays(tmp_path / "a.npz", {"x": np.arange(3.0)})
    with np.load(tmp_path / "a.npz") as data:
        np.testing.assert_array_equal(data["x"], [0.0, 1.0, 2.0])
