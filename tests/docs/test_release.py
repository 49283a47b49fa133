"""What a release carries: one version everywhere, the license, the citation, the changelog."""
import importlib.metadata
import re
import tomllib
from pathlib import Path

import ufm

ROOT = Path(__file__).resolve().parents[2]


def test_one_version_read_from_the_metadata():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert ufm.__version__ == importlib.metadata.version("ufm") == version
    citation = (ROOT / "CITATION.cff").read_text()
    assert re.search(r'^version: "([^"]+)"', citation, re.M).group(1) == version
    assert f"## [{version}] - " in (ROOT / "CHANGELOG.md").read_text()


def test_license_and_citation():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    citation = (ROOT / "CITATION.cff").read_text()
    assert citation.count("cff-version: 1.2.0") == 1 and "license: Apache-2.0" in citation
    # The papers the package implements, by their DOI or venue (the README's and docs' sources).
    for reference in ("10.1073/pnas.2015509117", "geometric analysis of neural collapse",
                      "Generalized neural collapse", "pick-all-label", "Riemannian manifold"):
        assert reference in citation, reference
