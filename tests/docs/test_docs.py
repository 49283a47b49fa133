"""Every reference a reader can follow points at something in this repository: docs/ files
named in code, notebooks, experiment files and the README exist, a "section N" of a docs page
is one of its headings, and the README's images and links to local files exist."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SOURCES = sorted(
    [ROOT / "README.md"]
    + [p for folder in ("ufm", "experiments", "notebooks", "docs", "benchmarks", "tests")
       for p in (ROOT / folder).rglob("*")
       if p.suffix in (".py", ".md", ".toml", ".ipynb") and p.is_file()])
DOC_REFERENCE = re.compile(r"docs/[A-Za-z0-9_./-]*[A-Za-z0-9_]")
SECTION_REFERENCE = re.compile(r"(docs/[A-Za-z0-9_.-]+\.md),? sections? (\d+)")


def _references(pattern):
    for path in SOURCES:
        text = path.read_text()
        for match in pattern.finditer(text):
            yield path, match


def test_there_is_something_to_check():
    assert len(SOURCES) > 50
    assert sum(1 for _ in _references(DOC_REFERENCE)) > 20


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_docs_references_exist(path):
    text = path.read_text()
    for match in DOC_REFERENCE.finditer(text):
        target = ROOT / match.group(0)
        assert target.exists(), f"{path.relative_to(ROOT)} refers to {match.group(0)}"
    for match in SECTION_REFERENCE.finditer(text):
        headings = re.findall(r"^## (\d+)\.", (ROOT / match.group(1)).read_text(), re.M)
        assert match.group(2) in headings, (f"{path.relative_to(ROOT)} refers to "
                                            f"{match.group(0)}")
    # files that live outside the repository (the team's notes) are never referenced
    assert not re.search(r"\.\./shared|SCIENCE\.md|DESIGN\.md|STYLE\.md", text), path


def test_readme_images_and_local_links_exist():
    text = (ROOT / "README.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) >= 7  # the default run's figure and the gallery
    links = re.findall(r"(?<!!)\[[^\]]*\]\(([^)#]+)(?:#[^)]*)?\)", text)
    for target in images + links:
        if "://" in target:
            continue
        assert (ROOT / target).exists(), target


def test_the_docs_site_lists_every_module_notebook_and_page():
    """The API reference has an entry for every public module, the site's nav every notebook
    and every page it names exists (mkdocs build --strict, CI's .ci/docs, checks the links and
    references themselves)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    package = root / "ufm"
    modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
               for p in package.rglob("*.py")
               if not any(part.startswith("_") and part != "__init__.py"
                          for part in p.relative_to(root).parts)}
    documented = set(re.findall(r"^::: (\S+)$", "".join(
        p.read_text() for p in (root / "docs" / "reference").glob("*.md")), re.M))
    assert modules - documented == set(), "add them to a page of docs/reference/"
    assert documented - modules == set()
    nav = (root / "mkdocs.yml").read_text()
    pages = re.findall(r"^\s+- (?:[^:\n]+: )?(\S+\.(?:md|ipynb))$", nav, re.M)
    assert pages and all((root / "docs" / page).is_file() for page in pages), pages
    notebooks = {f"notebooks/{p.name}" for p in (root / "notebooks").glob("*.ipynb")}
    assert notebooks <= set(pages)
    assert (root / "docs" / "notebooks").resolve() == (root / "notebooks").resolve()
