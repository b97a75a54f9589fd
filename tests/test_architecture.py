"""The layering rules of DESIGN.md, read from the source: imports point one way, never in a cycle."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"cli", "train", "evaluate", "export", "compare", "profile", "speed", "catalog"}
HEAVY = {"onnxruntime", "tensorrt"}


def _modules() -> dict[str, ast.Module]:
    found = {}
    for folder, prefix in (("inceptionctl", ""), ("backends", "backends.")):
        for path in sorted((ROOT / folder).glob("*.py")):
            found[prefix + path.stem] = ast.parse(path.read_text(), str(path))
    return found


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` blocks (never run)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for body in node.body for n in ast.walk(body))
    return skip


def _imports(name: str, tree: ast.Module) -> tuple[set[str], set[str]]:
    """(our modules imported, top-level packages imported) by one module, lazy imports included."""
    ours, packages = set(), set()
    skip = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            packages.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 and not name.startswith("backends."):
                ours.update([module.split(".")[0]] if module else [a.name for a in node.names])
            elif module.startswith("inceptionctl."):
                ours.add(module.split(".", 1)[1].split(".")[0])
            elif module == "inceptionctl":
                ours.update(a.name for a in node.names)
            else:
                packages.add(module.split(".")[0])
    return ours - {"__version__", "backends"}, packages


MODULES = _modules()
GRAPH = {name: _imports(name, tree) for name, tree in MODULES.items()}


def test_no_import_cycle():
    graph = {k: {m for m in ours if m in GRAPH and m != k} for k, (ours, _) in GRAPH.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_layers_point_down(name):
    ours, packages = GRAPH[name]
    if name.startswith("backends.") or name not in COMMANDS | {"__init__", "__main__"}:
        assert not ours & COMMANDS, f"{name} (lower layer or plugin) imports {ours & COMMANDS}"
    if not name.startswith("backends."):
        assert not packages & HEAVY, f"inceptionctl.{name} imports {packages & HEAVY}"


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if not n.startswith("backends.")))
def test_the_core_never_finds_a_backend_in_sys_modules(name):
    tree = MODULES[name]
    uses = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "modules"
            and isinstance(n.value, ast.Name) and n.value.id == "sys"]
    assert not uses, f"inceptionctl/{name}.py looks a backend up in sys.modules"


def test_no_function_is_over_100_lines():
    long = [f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for name, tree in MODULES.items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > 100]
    assert not long, long
