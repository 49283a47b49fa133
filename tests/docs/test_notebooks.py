"""Every notebook in notebooks/ runs top to bottom (quick settings), and the README's figure
script writes every figure."""
import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
USES = ("landscape", "grids_from_python", "generalized_nc", "imbalance", "explore_ufm",
        "net_vs_ufm")


def test_there_is_a_notebook_per_use():
    assert {p.stem for p in NOTEBOOKS} >= set(USES)
    for path in NOTEBOOKS:  # each opens with what it shows and the paper behind it
        first = nbformat.read(path, as_version=4).cells[0]
        assert first.cell_type == "markdown" and first.source.startswith("# "), path.name
        assert any(year in first.source for year in ("2021", "2022", "2023", "2024")), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("UFM_NOTEBOOK_QUICK", "1")  # notebooks that train use tiny settings
    notebook = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for cell in notebook.cells if cell.cell_type == "code"
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.xdist_group("default_run")  # draws the default run's figure from the shared run
def test_figure_script_writes_every_figure(default_run, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    spec = importlib.util.spec_from_file_location("figures", ROOT / "docs" / "figures.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    assert figures.main(["--quick", "--out", str(tmp_path), "--default-run",
                         str(default_run)]) == 0
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    assert written == sorted(figures.FIGURES)
    for name in written:  # the committed gallery has the same figures
        assert (ROOT / "docs" / name).is_file(), name
        assert (tmp_path / name).stat().st_size > 5000


def test_the_readmes_headless_command_runs_a_notebook(tmp_path):
    """`python3 -m jupyter nbconvert --execute` (the README's command, the dev extra's
    nbconvert) executes a notebook and keeps its outputs."""
    import subprocess
    import sys

    readme = (ROOT / "README.md").read_text()
    assert "python3 -m jupyter nbconvert --to notebook --execute --inplace" in readme
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import ufm\nprint(ufm.Problem(num_classes=3, feature_dim=2, n_per_class=1).num_samples)")])
    path = tmp_path / "tiny.ipynb"
    nbformat.write(notebook, path)
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook",
                    "--execute", "--inplace", str(path)], check=True, capture_output=True)
    cell = nbformat.read(path, as_version=4).cells[0]
    assert cell.outputs and cell.outputs[0]["text"].strip() == "3"
