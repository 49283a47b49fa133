"""The experiments shipped with ufm, by name: `ufm list`, `ufm run NAME`, `ufm.run("NAME")`.

They are the files of the repository's `experiments/` folder: experiment files (TOML, any kind)
and a few scripts (Python, run as `python3 FILE [--quick] [--out DIR]`). The wheel carries them
as the package data `ufm/_shipped/` (pyproject.toml maps the folder there), so an installed
package finds them in any working directory; a checkout (an editable install, or `PYTHONPATH`)
finds its own `experiments/`. Listing reads the files as data: a TOML file's `name`, `kind` and
`description`, a script's docstring; nothing is imported or executed.
"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path
from typing import NamedTuple

from ufm.errors import InputError

PACKAGE = Path(__file__).resolve().parents[1]
INSTALLED = PACKAGE / "_shipped"  # in a wheel
CHECKOUT = PACKAGE.parent / "experiments"  # in a clone of the repository
SUFFIXES = (".toml", ".py")


class Shipped(NamedTuple):
    """A shipped experiment: its name (the file's stem), file, kind ("script" for a Python
    script) and one-line description."""

    name: str
    path: Path
    kind: str
    description: str


def folder() -> Path:
    """Where the shipped experiments are: the installed package data, else the checkout's
    `experiments/`."""
    for candidate in (INSTALLED, CHECKOUT):
        if candidate.is_dir():
            return candidate
    raise InputError(f"no shipped experiments found (looked in {INSTALLED} and {CHECKOUT}); "
                     "reinstall ufm")


def _describe(path: Path) -> Shipped:
    if path.suffix == ".toml":
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as err:
            return Shipped(path.stem, path, "?", f"(unreadable: {err})")
        return Shipped(path.stem, path, str(raw.get("kind", "grid")),
                       str(raw.get("description", "")))
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except (SyntaxError, UnicodeDecodeError, OSError) as err:
        doc = f"(unreadable: {err})"
    return Shipped(path.stem, path, "script", _first_sentence(doc))


def _first_sentence(doc: str) -> str:
    """A docstring's first paragraph on one line; when long, its first sentence, or its first
    words."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    if len(paragraph) <= 100:
        return paragraph
    ends = [i for i in (paragraph.find(". "), paragraph.find("? ")) if i > 0]
    if ends and min(ends) < 100:
        return paragraph[:min(ends) + 1]
    return paragraph[:paragraph.rfind(" ", 0, 97)] + " ..."


def available() -> list[Shipped]:
    """Every shipped experiment, sorted by name."""
    here = folder()
    return [_describe(p) for p in sorted(here.iterdir())
            if p.suffix in SUFFIXES and p.is_file() and not p.name.startswith(("_", "."))]


def names() -> list[str]:
    """The names `ufm run NAME` takes."""
    return [s.name for s in available()]


def looks_like_name(text: str | Path) -> bool:
    """Whether `text` could be a shipped experiment's name rather than a path: no folder, no
    suffix ("closed_forms", not "closed_forms.toml" or "experiments/closed_forms")."""
    text = str(text)
    return bool(text) and "/" not in text and "\\" not in text and "." not in text


def find(name: str) -> Shipped:
    """The shipped experiment called `name`; InputError (with the names there are) if none."""
    for item in available():
        if item.name == name:
            return item
    raise InputError(f"no experiment file {name!r} here and no shipped experiment of that name; "
                     f"the shipped ones (`ufm list`): {', '.join(names())}")


def listing() -> str:
    """`ufm list`: one line per shipped experiment (name, kind, description)."""
    items = available()
    width = max(len(s.name) for s in items)
    kind_width = max(len(s.kind) for s in items)
    lines = [f"{s.name:<{width}}  {s.kind:<{kind_width}}  {s.description}" for s in items]
    return "\n".join(lines + [f"\n{len(items)} shipped experiments in {folder()}; run one with "
                              "`ufm run NAME` (a smoke run: `ufm run NAME --quick`)"])
