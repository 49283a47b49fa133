"""The configuration reference, generated from the kinds' schemas: every section and key of
every experiment kind with its type, default, allowed values and meaning. `ufm config KIND`
prints one kind; `page()` is docs/configuration.md (a test holds the file to it).

Regenerate the page after changing a schema:

    python3 -m ufm config --markdown > docs/configuration.md
"""
from __future__ import annotations

import textwrap

from ufm.running import config
from ufm.running import registry as kinds
from ufm.running.config import Field


def _default(field: Field) -> str:
    if field.default is None:
        return "omitted"
    return config.toml_value(field.default)


def _type(field: Field) -> str:
    name = {"int": "integer", "float": "number", "str": "string", "bool": "boolean",
            "ints": "list of integers", "floats": "list of numbers"}[field.type]
    return name + (" (axis)" if field.axis else "")


def text(kind: str) -> str:
    """One kind's reference for a terminal: its paragraph, then per section every key as
    `key = default`, its type and allowed values, and its meaning."""
    record = kinds.get(kinds.canonical(kind))
    lines = [f"kind = {record.name!r}", *textwrap.wrap(record.about, 96), ""]
    for section, fields in record.schema.sections.items():
        lines.append(f"[{section}]")
        width = max(len(f"{k} = {_default(f)}") for k, f in fields.items())
        for key, field in fields.items():
            head = f"{key} = {_default(field)}"
            lines.append(f"  {head:<{width}}  {_type(field)}: {config.allowed_text(field)}")
            lines += ["      " + line for line in textwrap.wrap(field.meaning, 90)]
        lines.append("")
    lines.append("(axis): a list of values makes a grid axis (numbers also {linspace = [a, b, n]}"
                 " or {logspace = [a, b, n]}); [[zip]] tables advance lists together.")
    return "\n".join(lines)


def _cell(value: str) -> str:
    return value.replace("|", "\\|")


def _table(fields: dict[str, Field]) -> list[str]:
    rows = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    rows += [f"| `{key}` | {_type(f)} | `{_cell(_default(f))}` | {_cell(config.allowed_text(f))} "
             f"| {_cell(f.meaning)} |" for key, f in fields.items()]
    return rows


def page() -> str:
    """The reference of every kind as Markdown (docs/configuration.md). A section a kind shares
    with one listed before it is named, not repeated."""
    out = ["# Configuration reference", "",
           "Every key of every experiment kind: its type, default, allowed values and meaning,",
           "generated from the schemas (`ufm config KIND` prints one kind; this page is",
           "`python3 -m ufm config --markdown`, and a test fails when it is out of date).",
           "A key of type *(axis)* may be a list: a grid axis (numbers may also be",
           "`{linspace = [start, stop, num]}` or `{logspace = [start, stop, num]}`);",
           "`[[zip]]` tables advance lists together; every kind has `name`, `description` and",
           "`kind` at the top level and `[quick.<section>]` tables for `ufm run FILE --quick`.",
           ""]
    seen: list[tuple[str, str, dict]] = []
    for name in kinds.KIND_MODULES:
        record = kinds.get(name)
        out += [f"## `kind = \"{name}\"`", "", record.about, ""]
        for section, fields in record.schema.sections.items():
            same = next((f"[{s}] of `{k}`" for k, s, f in seen if f == fields), None)
            out.append(f"### `[{section}]`")
            out.append("")
            out += [f"As {same}.", ""] if same else [*_table(fields), ""]
            if same is None:
                seen.append((name, section, fields))
    return "\n".join(out).rstrip() + "\n"
