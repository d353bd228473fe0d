"""The house rules of ``src/segformer``, read from the source: short functions and files, imports that run one way.

The rules (the README's "Architecture"): no function over 60 lines, no module over 450; the imports between the
project's modules form no cycle; the commands (``segformer.cli``), the trainer (``segformer.train``), the benchmark
and the server are imported only from above them, never by the library they are built on.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "segformer"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 450
# module prefix -> the module prefixes allowed to import it (every other importer is an upward arrow)
TOP_LAYERS = {
    "segformer.cli": ("segformer.cli", "segformer.__main__"),
    "segformer.train": ("segformer.cli",),
    "segformer.benchmark": ("segformer.cli",),
    "segformer.serve": ("segformer.serve", "segformer.cli"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def parsed_modules() -> dict[str, ast.Module]:
    return {module_name(path): ast.parse(path.read_text(), str(path)) for path in sorted(SOURCE.rglob("*.py"))}


def project_imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """The project modules ``tree`` imports anywhere (module level or inside functions); ``from segformer.x import
    y`` counts as ``segformer.x.y`` when that is a module. The bare package facade ``segformer`` is left out."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        found |= {name for name in names if name in modules and name != "segformer"}
    return found


def import_graph() -> dict[str, set[str]]:
    trees = parsed_modules()
    return {name: project_imports(tree, set(trees)) - {name} for name, tree in trees.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules, first = last), or None (depth-first search)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], stack[len(stack) :] = "open", [node]
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def is_within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_no_function_over_the_limit():
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, tree in parsed_modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_module_over_the_limit():
    long = {
        str(path.relative_to(SOURCE)): count
        for path in SOURCE.rglob("*.py")
        if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_imports_form_no_cycle():
    assert find_cycle(import_graph()) is None


@pytest.mark.parametrize("layer", sorted(TOP_LAYERS))
def test_no_upward_import(layer):
    upward = sorted(
        f"{importer} imports {target}"
        for importer, targets in import_graph().items()
        for target in targets
        if is_within(target, layer)
        and not is_within(importer, layer)
        and not any(is_within(importer, allowed) for allowed in TOP_LAYERS[layer])
    )
    assert not upward, upward


def test_the_cycle_finder_finds_a_cycle():
    """The oracle of the cycle test: a known cycle is found, a known chain is not."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
