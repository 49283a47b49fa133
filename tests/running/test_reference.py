"""The configuration reference: generated from the schemas, complete, true to the checks, and
docs/configuration.md up to date."""
from pathlib import Path

import pytest

from ufm import cli
from ufm.running import config, experiment, reference
from ufm.running import registry as kinds

ROOT = Path(__file__).resolve().parents[2]


def _fields():
    for name in kinds.KIND_MODULES:
        for section, fields in kinds.get(name).schema.sections.items():
            for key, field in fields.items():
                yield name, section, key, field


def test_the_docs_page_is_the_generated_reference():
    assert (ROOT / "docs" / "configuration.md").read_text() == reference.page(), (
        "docs/configuration.md is out of date: python3 -m ufm config --markdown > "
        "docs/configuration.md")


def test_every_key_of_every_kind_has_a_meaning_and_what_it_allows():
    fields = list(_fields())
    assert len(fields) > 250  # six kinds, their shared sections counted in each
    for name, section, key, field in fields:
        assert field.meaning and config.allowed_text(field), (name, section, key)
    assert all(kinds.get(name).about for name in kinds.KIND_MODULES)
    page = reference.page()
    for _name, _section, key, _field in fields:
        assert f"| `{key}` |" in page


def test_the_allowed_values_it_names_are_the_ones_checked():
    """For each key with a list of choices, the first value outside it is refused with the
    key in the message; each default resolves."""
    checked = 0
    for name, section, key, field in _fields():
        if not field.choices or field.type != "str":
            continue
        raw = {"kind": name, section: {key: "not-a-choice"}}
        with pytest.raises(config.ConfigError, match=f"{key}='not-a-choice' is not allowed"):
            experiment.resolve(raw)
        checked += 1
    assert checked >= 10
    for name in kinds.KIND_MODULES:
        experiment.resolve({"kind": name})  # every default is allowed
    # Values checked past the engine (by Problem) are named as Problem names them.
    problem = kinds.get("grid").schema.sections["problem"]
    assert "'pick_all_label'" in config.allowed_text(problem["loss"])
    with pytest.raises(Exception, match="loss='hinge' is not allowed: one of"):
        experiment.resolve({"problem": {"loss": "hinge"}})


def test_ufm_config_prints_a_kind(capsys):
    assert cli.main(["config", "grid"]) == 0
    out = capsys.readouterr().out
    for section, fields in kinds.get("grid").schema.sections.items():
        assert f"[{section}]" in out
        assert all(f"  {key} = " in out for key in fields)
    assert "tol = omitted" in out and "K, the number of classes" in out
    assert cli.main(["config"]) == 0 and "transfer" in capsys.readouterr().out
    assert cli.main(["config", "nope"]) == 2
    assert "one of ['grid'" in capsys.readouterr().err
    assert cli.main(["config", "--markdown"]) == 0
    assert capsys.readouterr().out == reference.page()
