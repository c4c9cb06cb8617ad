"""Layers point one way: the training phases are siblings that share lower modules, never each
other, no module of ``alignment`` imports, however indirectly, itself, and the library that trains never
imports the app that collects data (``feedback_app``): only the top layer does, to turn one into the other's
input.

Read from the source with ``ast`` (nothing is imported): imports at module level and inside functions,
``if TYPE_CHECKING:`` blocks included.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "alignment"
PHASES = {f"alignment.{name}" for name in ("sft", "rm", "dpo", "kto", "ppo")}

# The top layer: the only modules of alignment/ that may import feedback_app, and why.
APP_IMPORTERS = {
    "alignment.cli": "the `align` command line mounts the app's own commands (`align app`, `align feedback`)",
    "alignment.pipeline": "turns a feedback store named as a phase's data into the JSONL file the phase reads "
                          "(export_feedback_stores -> feedback_app.export.materialise), for pipelines and, "
                          "through it, `align rm|dpo|sft`; reads a store's head-to-head report for the pipeline's "
                          "report (head_to_head_lines -> feedback_app.headtohead)",
}


def _module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = _module_names()


def _app_imports(path: Path) -> list[tuple[str, int]]:
    """Every ``feedback_app`` module that the file imports (module level or in a function), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        found += [(n, node.lineno) for n in names if n == "feedback_app" or n.startswith("feedback_app.")]
    return found


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


def test_the_library_never_imports_the_app():
    """alignment/ trains on files; only the top layer (APP_IMPORTERS) reads the feedback app's store, and no
    other module imports that layer, so nothing below it reaches the app even indirectly."""
    assert _app_imports(MODULES["alignment.cli"]), "the walker must see the CLI's `from feedback_app.cli import`"
    found = [f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {target}"
             for m in sorted(MODULES) if m not in APP_IMPORTERS for target, line in _app_imports(MODULES[m])]
    assert not found, "the library never imports feedback_app (export a store in the top layer):\n" + "\n".join(found)
    above = [f"{m} imports {target} ({MODULES[m].relative_to(PACKAGE.parent)}:{line})"
             for m in sorted(GRAPH) if m not in APP_IMPORTERS
             for target, line in sorted(GRAPH[m].items()) if target in APP_IMPORTERS]
    assert not above, "only the top layer imports the top layer:\n" + "\n".join(above)
