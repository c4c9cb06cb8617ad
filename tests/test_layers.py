"""Layers point one way: the training phases are siblings that share lower modules, never each
other, and no module of ``alignment`` imports, however indirectly, itself.

Read from the source with ``ast`` (nothing is imported): imports at module level and inside functions,
``if TYPE_CHECKING:`` blocks included.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "alignment"
PHASES = {f"alignment.{name}" for name in ("sft", "rm", "dpo", "kto", "ppo")}

# A later slice adds: no module under alignment/ imports feedback_app (the library that trains never imports
# the app that collects data; today alignment.cli and alignment.data.preferences still do).


def _module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = _module_names()


def _imports(name: str, path: Path) -> dict[str, int]:
    """The ``alignment`` modules that module ``name`` imports, each with the first line that does."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if target in MODULES and target != name:
            found.setdefault(target, line)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this module is in
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:  # `from alignment import distributed` imports the submodule
                submodule = f"{base}.{alias.name}"
                add(submodule if submodule in MODULES else base, node.lineno)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_the_graph_sees_the_imports():
    """The parser finds what the test relies on (a guard against a walker that finds nothing)."""
    assert {"alignment.sft", "alignment.rm", "alignment.dpo", "alignment.kto", "alignment.ppo"} <= set(MODULES)
    assert "alignment.training" in GRAPH["alignment.dpo"]  # module level
    assert "alignment.distributed" in GRAPH["alignment.dpo"]  # `from alignment import distributed as dist`
    assert "alignment.sft" in GRAPH["alignment.phases"]  # inside a function


def test_no_phase_imports_another_phase():
    crossings = [f"{module} imports {target} ({MODULES[module].relative_to(PACKAGE.parent)}:{line})"
                 for module in sorted(PHASES) for target, line in sorted(GRAPH[module].items()) if target in PHASES]
    assert not crossings, "phases share lower modules, never each other:\n" + "\n".join(crossings)


def test_no_import_cycle():
    state: dict[str, str] = {}  # module -> "open" while on the DFS path, "done" after
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(GRAPH):
        if module not in state and (cycle := visit(module)):
            steps = [f"{a} -> {b} ({MODULES[a].relative_to(PACKAGE.parent)}:{GRAPH[a][b]})"
                     for a, b in zip(cycle, cycle[1:])]
            raise AssertionError("import cycle:\n" + "\n".join(steps))
