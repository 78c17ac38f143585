"""The import graph of recpipe/: no cycle; models know only models and the feature
declarations; Airflow is imported by the bridge module alone (DAG files aside)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "recpipe"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module.startswith("recpipe"):
                found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imp in _imports(path):
            known = [m for m in modules if imp == m or imp.startswith(m + ".")]
            targets.add(max(known, key=len) if known else imp)
        graph[name] = targets - {name}
    return graph


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack, node, nxt]))
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_models_import_nothing_but_models_and_feature_declarations():
    graph = _graph()
    for name, targets in graph.items():
        if name.startswith("recpipe.models"):
            bad = [t for t in targets if t.startswith("recpipe") and not t.startswith(("recpipe.models",
                                                                                     "recpipe.features"))]
            assert not bad, f"{name} imports {bad}"


def test_airflow_is_imported_by_the_bridge_only():
    importers = {name for name, targets in _graph().items() if any(t.split(".")[0] == "airflow" for t in targets)}
    assert importers == {"recpipe.airflow_bridge"}
