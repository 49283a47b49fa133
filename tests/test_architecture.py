"""The package's layers: no import cycle inside ufm/ (imports inside functions and the kinds
registry's module names count), and `import ufm` stays light with every module an attribute."""
import ast
import subprocess
import sys
from pathlib import Path

import ufm
from ufm import kinds

PACKAGE = Path(ufm.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    """Module -> the ufm modules it imports anywhere in its source (a package's lazy
    `__getattr__` aside: it imports on attribute access, after everything is loaded)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        tree = ast.parse(path.read_text())
        if path.name == "__init__.py":  # drop the lazy attribute hook
            tree.body = [n for n in tree.body
                         if not (isinstance(n, ast.FunctionDef) and n.name == "__getattr__")]
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.startswith("ufm")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.startswith("ufm"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    edges.add(sub if _is_module(sub) else node.module)
        if name == "ufm.kinds":  # the registry imports its kinds by name
            edges |= set(kinds.KIND_MODULES.values())
        graph[name] = edges - {name}
    return graph


def _cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "ufm.grid" in graph["ufm.kinds"] and "ufm.frames" in graph["ufm.problem"]
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_finds_a_planted_cycle():
    graph = import_graph()
    graph["ufm.frames"] = graph["ufm.frames"] | {"ufm.solvers"}  # frames is a leaf: plant one
    assert _cycle(graph) is not None


def test_import_ufm_is_light_and_modules_are_attributes():
    code = ("import sys, ufm; light = not any(m in sys.modules for m in "
            "('flax', 'matplotlib', 'ufm.grid', 'ufm.nets')); "
            "mods = [ufm.grid, ufm.landscape, ufm.theory, ufm.nets, ufm.experiment]; "
            "print(light, ufm.run is ufm.experiment.run, ufm.nets.train.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "ufm.nets.training"]
