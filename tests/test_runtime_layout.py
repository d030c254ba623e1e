"""The device runtime's modules: small, without import cycles, each using only public names of the others."""

from __future__ import annotations

import ast
from pathlib import Path

RUNTIMES = Path(__file__).resolve().parents[1] / "runtimes"
MODULES = {path.stem: path for path in sorted(RUNTIMES.glob("*.py"))}


def _runtime_imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module of this package, names taken from it) for each import of a sibling module."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and not module.startswith("rada_export.runtimes"):
                continue
            if node.level > 1:
                continue
            rest = module.removeprefix("rada_export.runtimes").lstrip(".") if node.level == 0 else module
            names = [a.name for a in node.names]
            if rest:
                out.append((rest.split(".")[0], names))
            else:  # from . import x: the names are modules
                out.extend((name, []) for name in names if name in MODULES)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("rada_export.runtimes."):
                    out.append((alias.name.split(".")[2], []))
    return out


def test_code_files_stay_under_600_lines():
    long = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert all(n < 600 for n in long.values()), {k: v for k, v in long.items() if v >= 600}


def test_no_module_uses_a_private_name_of_another():
    found = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for module, names in _runtime_imports(tree):
            found += [f"{name} imports {module}.{n}" for n in names if n.startswith("_")]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    found.append(f"{name}:{node.lineno} reads {ast.unparse(node)}")
    assert not found, found


def test_no_import_cycles():
    graph = {
        name: {module for module, _ in _runtime_imports(ast.parse(path.read_text())) if module in MODULES} - {name}
        for name, path in MODULES.items()
    }

    def reach(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])
        return seen

    cycles = sorted(name for name in graph if name in reach(name))
    assert not cycles, f"modules on an import cycle: {cycles}"
