"""The package's layers: no import cycle inside ufm/ (imports inside functions and the kinds
registry's module names count), imports point down the rooms, every public function is annotated,
and `import ufm` stays light with every module an attribute."""
import ast
import subprocess
import sys
from pathlib import Path

import ufm
from ufm.running import registry as kinds

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
        if name == "ufm.running.registry":  # the registry imports its kinds by name
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


# The rooms, lowest first: a module imports only from its own room or the rooms below it.
# The leaves (`ufm.errors`, `ufm._atomic`, `ufm._lazy`, `ufm._moved`, `ufm._cache`) import nothing
# of ufm.
ROOMS = ("leaves", "ufm.model", "ufm.analysis", "ufm.solvers", "ufm.nets", "ufm.running",
         "ufm.cli", "ufm")
LEAVES = ("ufm.errors", "ufm._atomic", "ufm._lazy", "ufm._moved", "ufm._cache")


def room_of(module: str) -> str:
    if module in LEAVES:
        return "leaves"
    for room in ROOMS[1:-1]:
        if module == room or module.startswith(room + "."):
            return room
    assert module in ("ufm", "ufm.__main__"), f"{module} is in no room (docs/architecture.md)"
    return "ufm"


def layer_violations(graph) -> list[str]:
    rank = {room: i for i, room in enumerate(ROOMS)}
    found = []
    for module, edges in graph.items():
        for target in edges:
            if module in LEAVES or rank[room_of(target)] > rank[room_of(module)]:
                found.append(f"{module} ({room_of(module)}) imports {target} "
                             f"({room_of(target)})")
    return sorted(found)


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "ufm.running.kinds.grid" in graph["ufm.running.registry"]
    assert "ufm.model.frames" in graph["ufm.model.problem"]
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_imports_point_down_the_rooms():
    graph = import_graph()
    assert {room_of(m) for m in graph} == set(ROOMS)  # every room has modules, none is stray
    assert layer_violations(graph) == []


def test_the_checks_find_a_planted_cycle_and_an_upward_import():
    graph = import_graph()
    graph["ufm.model.frames"] = graph["ufm.model.frames"] | {"ufm.model.problem"}
    assert _cycle(graph) is not None
    graph = import_graph()
    graph["ufm.analysis.theory"] = graph["ufm.analysis.theory"] | {"ufm.solvers.driver"}
    graph["ufm.errors"] = {"ufm.model.problem"}
    assert layer_violations(graph) == [
        "ufm.analysis.theory (ufm.analysis) imports ufm.solvers.driver (ufm.solvers)",
        "ufm.errors (leaves) imports ufm.model.problem (ufm.model)"]


def unannotated(source: str) -> list[str]:
    """The public functions and methods (of public classes) at the top of a module's source
    whose return or any parameter (self and cls aside; *args and **options may stay bare) has
    no annotation."""
    missing = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            functions = [(node.name, node)]
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            functions = [(f"{node.name}.{f.name}", f) for f in node.body
                         if isinstance(f, ast.FunctionDef)]
        else:
            continue
        for name, fn in functions:
            if fn.name.startswith("_"):
                continue
            bare = [a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
                    if a.annotation is None and a.arg not in ("self", "cls")]
            if fn.returns is None:
                bare.append("return")
            if bare:
                missing.append(f"{name}({', '.join(bare)})")
    return missing


def test_public_functions_are_annotated():
    missing = {str(path.relative_to(PACKAGE)): unannotated(path.read_text())
               for path in sorted(PACKAGE.rglob("*.py"))}
    assert {k: v for k, v in missing.items() if v} == {}
    planted = "def ok(x: int) -> int:\n    pass\nclass A:\n    def f(self, y):\n        pass\n" \
              "def _private(z):\n    pass\ndef g(w, *args: int) -> None:\n    pass\n"
    assert unannotated(planted) == ["A.f(y, return)", "g(w)"]


def test_the_wheel_lists_every_package_of_the_tree():
    """pyproject.toml lists the packages (to map experiments/ into the wheel): the list is the
    tree's packages, plus the shipped experiments."""
    import tomllib

    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    tree = sorted(_module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py"))
    assert sorted(setuptools["packages"]) == sorted(tree + ["ufm._shipped"])
    assert setuptools["package-dir"] == {"ufm._shipped": "experiments"}


def test_import_ufm_is_light_and_modules_are_attributes():
    code = ("import sys, ufm; light = not any(m in sys.modules for m in "
            "('flax', 'matplotlib', 'ufm.running.kinds.grid', 'ufm.nets')); "
            "mods = [ufm.running.kinds.grid, ufm.analysis.landscape, ufm.analysis.theory, "
            "ufm.nets, ufm.running.experiment]; "
            "print(light, ufm.run is ufm.running.experiment.run, ufm.nets.train.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "ufm.nets.training"]
