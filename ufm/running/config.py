"""The one config engine of every experiment kind: TOML tables -> a checked `Experiment`, with
every default written out, grid axes, [[zip]] tables, --set overrides.

A kind describes its file by a `Schema`: sections of `Field`s (default, type, whether the field
may be a grid axis, its allowed values or rule). The engine, for every kind alike:

    name = "my-experiment"          top level: name, description, kind, [[zip]], the sections
    [section]  key = value          a value; a list (or {linspace = [start, stop, num]},
                                    {logspace = [start, stop, num]} for numbers) makes an axis
    [[zip]]    key = [...]          lists of one length that advance together; a key is
                                    "section.key" or a key that only one section has
    [run]      seeds = [...]        the innermost axis of every kind

The grid is the Cartesian product of the axes (sections and fields in schema order), then the
[[zip]] tables, then the seeds. logspace takes the end values themselves (geometric spacing, as
numpy.geomspace), not their exponents. Everything is checked here, before anything compiles:
an unknown key, a wrong type or an out-of-range value raises `ConfigError` naming the key, the
value and what is allowed. A kind adds its own checks of values in combination (its `check`).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from ufm.errors import ConfigError, InputError  # noqa: F401 (raised by the engine; re-exported)

TYPES = ("int", "float", "str", "bool", "ints", "floats")
TYPE_NAMES = {"int": "an integer", "float": "a number", "str": "a string",
              "bool": "true or false", "ints": "a list of integers",
              "floats": "a list of numbers"}


class Field(NamedTuple):
    """One key of a section. `type`: one of TYPES ("ints" / "floats": a list of them as one
    value). `axis`: a list of values makes a grid axis. `optional`: None (the default rule)
    is allowed. `choices`: the allowed values. `rule`: a test of one value and the text that
    says what is allowed (e.g. (lambda v: v >= 1, "an integer >= 1")). `meaning`: one line
    for the configuration reference (`ufm config KIND`); `allowed`: what is allowed, for the
    reference, where the value is checked past the engine (by `Problem`, `TrainSettings`)."""

    default: Any
    type: str
    axis: bool = False
    optional: bool = False
    choices: tuple = ()
    rule: tuple[Callable[[Any], bool], str] | None = None
    meaning: str = ""
    allowed: str = ""


def explained(section: dict[str, Field], meanings: dict[str, str | tuple[str, str]]
              ) -> dict[str, Field]:
    """`section` with each field's meaning (and, given as (meaning, allowed), the allowed
    values checked past the engine) from `meanings`; every field must have one."""
    missing = set(section) - set(meanings)
    if missing or set(meanings) - set(section):
        raise KeyError(f"meanings for {sorted(section)}: missing {sorted(missing)}, "
                       f"unknown {sorted(set(meanings) - set(section))}")
    out = {}
    for key, field in section.items():
        meaning, allowed = (meanings[key], "") if isinstance(meanings[key], str) else meanings[key]
        out[key] = field._replace(meaning=meaning, allowed=allowed or field.allowed)
    return out


def allowed_text(field: Field) -> str:
    """What a field allows, in words: its documented values, choices, rule or type (and
    "omitted" where None is allowed; "or a list of them" where it may be a grid axis)."""
    if field.allowed:
        text = field.allowed
    elif field.choices:
        text = "one of " + ", ".join(repr(c) if isinstance(c, str) else str(c)
                                     for c in field.choices)
    else:
        text = _describe(field)
    if field.optional and "omit" not in text:
        text += ", or omitted"
    return text


@dataclasses.dataclass(frozen=True)
class Schema:
    """A kind's sections (section -> key -> Field, in file order) and zip aliases (a bare zip
    key that names a field of another name, e.g. "solver" -> ("solver", "name"))."""

    sections: dict
    aliases: dict = dataclasses.field(default_factory=dict)
    default_name: str = "experiment"


TOP_LEVEL = ("name", "description", "kind", "zip", "quick")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A resolved experiment: every key of every section present, values checked. Sections are
    attributes too (`experiment.problem["loss"]`). Frozen: its fields are never reassigned
    (`resolve` makes a new one); what a kind derives from it once
    (a grid's configurations) is kept in `derived`, which is not part of its value."""

    name: str
    description: str
    kind: str
    sections: dict  # section -> key -> value (a list for an axis)
    zips: list = dataclasses.field(default_factory=list)  # [{(section, key): [values]}]
    # [quick.<section>] tables: this file's own smoke-run settings (`ufm run FILE --quick`),
    # merged over its kind's (`ufm.running.kind.Kind.quick`); checked when applied
    quick: dict = dataclasses.field(default_factory=dict)
    derived: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def __getattr__(self, name):
        if name != "sections" and name in self.__dict__.get("sections", {}):
            return self.sections[name]
        raise AttributeError(name)

    def to_dict(self) -> dict:
        """The raw form `resolve` reads back (zip keys as "section.key")."""
        zipped = self.zipped()
        return {"name": self.name, "description": self.description, "kind": self.kind,
                **{s: {k: v for k, v in values.items() if (s, k) not in zipped}
                   for s, values in self.sections.items()},
                "zip": [{f"{s}.{k}": list(v) for (s, k), v in t.items()} for t in self.zips],
                **({"quick": {s: dict(v) for s, v in self.quick.items()}} if self.quick else {})}

    def zipped(self) -> set:
        return {key for table in self.zips for key in table}


class Point(NamedTuple):
    """One configuration of an experiment: every (section, key) -> value, the axes that vary
    ((section, key), value) in grid order, and the seed."""

    values: dict
    varying: tuple
    seed: int


def _describe(field: Field) -> str:
    return field.rule[1] if field.rule else TYPE_NAMES[field.type]


def _check_value(where: str, value, field: Field):
    """One value of a field, type-checked (ints widened to floats for numbers)."""
    if value is None and field.optional:
        return None
    t = field.type
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    integer = lambda v: isinstance(v, int) and not isinstance(v, bool)
    ok = {"int": integer, "float": number, "str": lambda v: isinstance(v, str),
          "bool": lambda v: isinstance(v, bool),
          "ints": lambda v: isinstance(v, list) and all(integer(x) for x in v),
          "floats": lambda v: isinstance(v, list) and all(number(x) for x in v)}[t](value)
    if not ok:
        raise ConfigError(f"{where}={value!r} is not allowed: {TYPE_NAMES[t]}")
    if t == "float":
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}={value!r} is not allowed: {_describe(field)}")
    if t == "floats":
        value = [float(v) for v in value]
    if field.choices and value not in field.choices:
        raise ConfigError(f"{where}={value!r} is not allowed: one of {list(field.choices)}")
    if field.rule and not field.rule[0](value):
        raise ConfigError(f"{where}={value!r} is not allowed: {field.rule[1]}")
    return value


SPACINGS = ("linspace", "logspace")
# Bounds on what an experiment file may make before anything is allocated: values on one axis,
# configurations in a grid (axes x zips x seeds), bytes and nesting of the file itself.
MAX_AXIS_VALUES = 100_000
MAX_POINTS = 1_000_000
MAX_FILE_BYTES = 1 << 20
MAX_NESTING = 8


def _spaced(where: str, value: dict) -> list:
    """{linspace = [start, stop, num]} or {logspace = [start, stop, num]} as a list of floats;
    logspace takes the end values themselves (geometric spacing), not their exponents."""
    if len(value) != 1 or next(iter(value)) not in SPACINGS:
        raise ConfigError(f"{where}={value!r} is not allowed: a value, a list, "
                          "{linspace = [start, stop, num]} or {logspace = [start, stop, num]}")
    (kind, spec), = value.items()
    if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[2], int)
            and not isinstance(spec[2], bool) and spec[2] >= 1
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in spec[:2])):
        raise ConfigError(f"{where}.{kind}={spec!r} is not allowed: [start, stop, num] with an "
                          "integer num >= 1")
    start, stop, num = float(spec[0]), float(spec[1]), spec[2]
    if num > MAX_AXIS_VALUES:
        raise ConfigError(f"{where}.{kind}={spec!r} is not allowed: num at most "
                          f"{MAX_AXIS_VALUES} values on one axis")
    if kind == "logspace":
        if not (start > 0 and stop > 0):
            raise ConfigError(f"{where}.logspace={spec!r} is not allowed: start and stop > 0")
        return [float(v) for v in np.geomspace(start, stop, num)]
    return [float(v) for v in np.linspace(start, stop, num)]


def _is_axis(field: Field, value) -> bool:
    """A list of values (for list-valued fields: a list of lists)."""
    if not field.axis or not isinstance(value, list):
        return False
    if field.type in ("ints", "floats"):
        return bool(value) and all(isinstance(v, list) for v in value)
    return True


def axis_values(field: Field, value: Any) -> list:
    """The values a field takes over the grid (one, unless it is an axis)."""
    return list(value) if _is_axis(field, value) else [value]


def _resolve_field(where: str, value, field: Field):
    if isinstance(value, dict):
        if not (field.axis and field.type == "float"):
            raise ConfigError(f"{where}={value!r} is not allowed: {_describe(field)}"
                              + (" or a list of them" if field.axis else ""))
        value = _spaced(where, value)
    if isinstance(value, list) and not value and field.type not in ("ints", "floats"):
        raise ConfigError(f"{where}=[] is not allowed: a value or a non-empty list")
    if isinstance(value, list) and field.type not in ("ints", "floats") and not field.axis:
        raise ConfigError(f"{where}={value!r} is not allowed: one value (it cannot be a grid "
                          "axis)")
    if _is_axis(field, value):
        return [_check_value(where, v, field) for v in value]
    if field.type == "floats" and not isinstance(value, list) and value is not None:
        value = [value]  # a list field given one number
    return _check_value(where, value, field)


def _unknown(where: str, key: str, allowed) -> ConfigError:
    return ConfigError(f"unknown key {where}{key!r}: allowed keys are {', '.join(allowed)}")


def _zip_key(schema: Schema, key: str) -> tuple[str, str]:
    """A [[zip]] key as (section, key): "section.key", an alias, or a key one section has."""
    if key in schema.aliases:
        return schema.aliases[key]
    if "." in key:
        section, field = key.split(".", 1)
        if field in schema.sections.get(section, {}):
            return section, field
    owners = [s for s, fields in schema.sections.items() if key in fields and fields[key].axis]
    if len(owners) == 1:
        return owners[0], key
    allowed = [f"{s}.{k}" for s, fields in schema.sections.items()
               for k, f in fields.items() if f.axis] + list(schema.aliases)
    raise _unknown("zip.", key, allowed)


def resolve(raw: dict, schema: Schema, kind: str) -> Experiment:
    """Check a parsed experiment file against a kind's schema and fill in every default."""
    if not isinstance(raw, dict):
        raise ConfigError(f"an experiment is a table of keys, got {raw!r}")
    allowed = TOP_LEVEL + tuple(schema.sections)
    for key in raw:
        if key not in allowed:
            raise _unknown("", key, allowed)
    name = raw.get("name", schema.default_name)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"name={name!r} is not allowed: a non-empty string")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"description={description!r} is not allowed: a string")
    sections = {}
    for section, fields in schema.sections.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"[{section}] must be a table, got {given!r}")
        for key in given:
            if key not in fields:
                raise _unknown(f"{section}.", key, fields)
        sections[section] = {}
        for key, field in fields.items():
            value = given.get(key, field.default)
            if isinstance(value, list):
                value = list(value)
            sections[section][key] = _resolve_field(f"{section}.{key}", value, field)
    zips = _resolve_zips(raw.get("zip", []), raw, schema)
    return Experiment(name, description, kind, sections, zips, _resolve_quick(raw, schema))


def _resolve_quick(raw: dict, schema: Schema) -> dict:
    """[quick.<section>] tables: keys of the schema's sections (values are checked when the
    quick version is built)."""
    quick = raw.get("quick", {})
    if not isinstance(quick, dict) or not all(isinstance(v, dict) for v in quick.values()):
        raise ConfigError(f"quick={quick!r} is not allowed: [quick.<section>] tables of keys")
    for section, values in quick.items():
        if section not in schema.sections:
            raise _unknown("quick.", section, schema.sections)
        for key in values:
            if key not in schema.sections[section]:
                raise _unknown(f"quick.{section}.", key, schema.sections[section])
    return {section: dict(values) for section, values in quick.items()}


def _resolve_zips(given, raw: dict, schema: Schema) -> list[dict]:
    if isinstance(given, dict):
        given = [given]
    if not isinstance(given, list) or not all(isinstance(t, dict) for t in given):
        raise ConfigError(f"zip={given!r} is not allowed: [[zip]] tables of key = [values]")
    zips, seen = [], set()
    for table in given:
        resolved = {}
        for key, values in table.items():
            section, field_name = _zip_key(schema, key)
            field = schema.sections[section][field_name]
            if not field.axis:
                raise ConfigError(f"zip.{key} is not allowed: {section}.{field_name} cannot be "
                                  "a grid axis")
            if (section, field_name) in seen or field_name in raw.get(section, {}):
                raise ConfigError(f"zip.{key} is not allowed: {section}.{field_name} is already "
                                  "set elsewhere (in its section or another [[zip]])")
            seen.add((section, field_name))
            checked = _resolve_field(f"{section}.{field_name}", values, field)
            if not _is_axis(field, checked):
                raise ConfigError(f"zip.{key}={values!r} is not allowed: a list of values")
            resolved[(section, field_name)] = checked
        lengths = {f"{s}.{k}": len(v) for (s, k), v in resolved.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"zip lists must have equal lengths, got {lengths}")
        if resolved:
            zips.append(resolved)
    return zips


def points(experiment: Experiment, schema: Schema) -> list[Point]:
    """Every configuration: the Cartesian product of the axes (sections and fields in schema
    order), then every [[zip]] (its fields advance together), then the seeds (innermost)."""
    zipped = experiment.zipped()
    axes = []  # (keys, values): keys a tuple of (section, key)
    for section, fields in schema.sections.items():
        for key, field in fields.items():
            if (section, key) not in zipped:
                values = axis_values(field, experiment.sections[section][key])
                axes.append((((section, key),), [(v,) for v in values]))
    for table in experiment.zips:
        keys = tuple(table)
        axes.append((keys, list(zip(*(table[k] for k in keys)))))
    varying = [keys for keys, values in axes if len(values) > 1 or
               any(k in zipped for k in keys)]
    seeds = experiment.sections.get("run", {}).get("seeds", [0])
    total = math.prod(len(values) for _, values in axes) * len(seeds)
    if total > MAX_POINTS:
        sizes = " x ".join(f"{len(values)} ({','.join(k for _, k in keys)})"
                           for keys, values in axes if len(values) > 1)
        raise ConfigError(f"the grid has {total:.3g} configurations ({sizes} x {len(seeds)} "
                          f"seeds): at most {MAX_POINTS} in one experiment; split it")
    out = []
    for combo in itertools.product(*(values for _, values in axes)):
        values = {}
        for (keys, _), chosen in zip(axes, combo):
            values.update(zip(keys, chosen))
        vary = tuple((k, values[k]) for keys in varying for k in keys)
        out += [Point(values, vary, seed) for seed in seeds]
    return out


def read_toml(path: str | Path) -> dict:
    """A parsed experiment file (any kind); ConfigError when missing or not TOML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {str(path)!r} does not exist")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: {size} bytes is not allowed for an experiment file: at most "
                          f"{MAX_FILE_BYTES} (long axes: write {{linspace = [start, stop, num]}})")
    with path.open("rb") as file:
        data = file.read(MAX_FILE_BYTES + 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file (byte {err.start} is not UTF-8); an "
                          "experiment file is TOML") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deep (at most {MAX_NESTING} levels of tables "
                          "and arrays)") from None
    _check_nesting(path, raw, 0)
    return raw


def _check_nesting(path, value, depth: int) -> None:
    if depth > MAX_NESTING:
        raise ConfigError(f"{path}: nested too deep (at most {MAX_NESTING} levels of tables and "
                          "arrays)")
    children = value.values() if isinstance(value, dict) else value \
        if isinstance(value, list) else ()
    for child in children:
        _check_nesting(path, child, depth + 1)


def override(raw: dict, schema: Schema, overrides: Sequence[str]) -> dict:
    """`--set key=value` overrides on a raw experiment: "section.key", a key that only one
    section has, or name / description; values in TOML syntax, bare words as strings."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not allowed: write key=value")
        key, text = (s.strip() for s in item.split("=", 1))
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        if key in ("name", "description"):
            raw[key] = value
            continue
        if "." in key:
            section, field = key.split(".", 1)
            if section not in schema.sections:
                raise _unknown("", section, list(schema.sections))
        else:
            owners = [s for s, fields in schema.sections.items() if key in fields]
            if len(owners) != 1:
                raise ConfigError(f"--set {key!r}: unknown key; use section.key with section in "
                                  f"{list(schema.sections)}")
            section, field = owners[0], key
        raw.setdefault(section, {})[field] = value
    return raw


def toml_value(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                         ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dumps(experiment: Experiment, schema: Schema, notes: dict | None = None) -> str:
    """The experiment as TOML with every key written out (None values, meaning 'the default
    rule', as comments). `notes`: section -> a comment line written under its header, or
    section -> {key: comment} written beside those keys (e.g. which keys do not apply)."""
    lines = [f"name = {toml_value(experiment.name)}",
             f"description = {toml_value(experiment.description)}",
             f"kind = {toml_value(experiment.kind)}"]
    for table in experiment.zips:
        lines += ["", "[[zip]]"] + [f'"{s}.{k}" = {toml_value(v)}' for (s, k), v in table.items()]
    zipped = experiment.zipped()
    for section in schema.sections:
        lines += ["", f"[{section}]"]
        note = (notes or {}).get(section)
        if isinstance(note, str):
            lines.append(f"# {note}")
        beside = note if isinstance(note, dict) else {}
        for key, value in experiment.sections[section].items():
            if (section, key) in zipped:
                lines.append(f"# {key}: see [[zip]]")
            elif value is None:
                lines.append(f"# {key} is unset (its default rule applies)")
            else:
                comment = f"  # {beside[key]}" if key in beside else ""
                lines.append(f"{key} = {toml_value(value)}{comment}")
    for section, values in experiment.quick.items():
        lines += ["", f"[quick.{section}]"] + [f"{k} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"
