"""`ufm.running.registry` and `ufm.running.kind`: every registered kind is a `Kind` value of its
name, its quick settings fit its own schema, and a kind that does not exist is named."""
import pytest

from ufm.errors import ConfigError
from ufm.running import experiment, registry
from ufm.running.kind import Kind


@pytest.mark.parametrize("name", sorted(registry.KIND_MODULES))
def test_every_kind_is_a_value_of_its_name_and_runs_its_quick_settings(name):
    kind = registry.get(name)
    assert isinstance(kind, Kind) and kind.name == name
    quick = experiment.quick_version(experiment.resolve({"kind": name}))
    for section, values in kind.quick.items():
        for key, value in values.items():
            assert quick.sections[section][key] == value


def test_aliases_and_unknown_kinds():
    assert registry.canonical("solve") == "grid"
    with pytest.raises(ConfigError, match=r"kind='nope' is not allowed: one of \['grid'"):
        registry.get("nope")
