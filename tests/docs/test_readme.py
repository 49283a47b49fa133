"""The README's Python code runs as written: its blocks, in order, in one namespace."""
import re
import warnings
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_code_runs_as_written(tmp_path, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # no moved name in the README
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="(?!ufm)")
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    history = namespace["res"].history
    assert namespace["res"].status != "diverged" and history["nc1"][-1] < 1e-2 * history["nc1"][0]
    assert namespace["p"].verdict == "strict saddle" and namespace["p"].n_negative > 0
    assert 0.0 <= namespace["result"].final["nc1"] < 1.0
