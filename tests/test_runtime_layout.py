"""The code's layout, in all four packages (rada_export, cli, calibration, runtimes): small modules,
without import cycles, each using only public names of the others."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Each package by its installed name; cli/, calibration/ and runtimes/ install under rada_export.
PACKAGES = {"rada_export": REPO / "rada_export", "rada_export.cli": REPO / "cli",
            "rada_export.calibration": REPO / "calibration", "rada_export.runtimes": REPO / "runtimes"}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every Python file of the four packages (a package is its __init__)."""
    out = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


MODULES = _modules()


def _package_of(module: str) -> str:
    """The package a module's relative imports start from: itself for a package, else its parent."""
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _runtime_imports(tree: ast.Module, module: str) -> list[tuple[str, list[str]]]:
    """(module of these packages, names taken from it) for each import in ``module`` of one of ours."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module).split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target not in MODULES:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((sub, []) if sub in MODULES else (target, [alias.name]))
        elif isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names if alias.name in MODULES]
    return out


def _private_uses(tree: ast.Module, module: str) -> list[str]:
    """Private names of other modules that ``module`` imports or reads (``x._name`` on anything but self/cls)."""
    found = []
    for target, names in _runtime_imports(tree, module):
        found += [f"{module} imports {target}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{module}:{node.lineno} reads {ast.unparse(node)}")
    return found


def test_code_files_stay_under_600_lines():
    long = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert all(n < 600 for n in long.values()), {k: v for k, v in long.items() if v >= 600}


def test_no_module_uses_a_private_name_of_another():
    found = []
    for name, path in MODULES.items():
        found += _private_uses(ast.parse(path.read_text()), name)
    assert not found, found


def test_no_import_cycles():
    graph = {
        name: {module for module, _ in _runtime_imports(ast.parse(path.read_text()), name)} - {name}
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


def test_the_layout_checks_see_every_package_and_resolve_relative_imports():
    """A package the checks missed, or an import they misread, would pass them unseen."""
    assert {"rada_export.validate", "rada_export.export.bundle", "rada_export.cli.common",
            "rada_export.calibration.selection", "rada_export.runtimes.runtime"} <= set(MODULES)
    code = "from ..errors import RadaError\nfrom . import reparam\nfrom rada_export.runtimes import manifest as mf\n"
    assert _runtime_imports(ast.parse(code), "rada_export.export.bundle") == [
        ("rada_export.errors", ["RadaError"]), ("rada_export.export.reparam", []), ("rada_export.runtimes.manifest", [])]
    code = "from .recipe import _constants\nfrom .. import validate\n"
    assert _runtime_imports(ast.parse(code), "rada_export.calibration.selection") == [
        ("rada_export.calibration.recipe", ["_constants"]), ("rada_export.validate", [])]
    assert _private_uses(ast.parse(code + "x = rt._fused_runner()\n"), "rada_export.calibration.selection") == [
        "rada_export.calibration.selection imports rada_export.calibration.recipe._constants",
        "rada_export.calibration.selection:3 reads rt._fused_runner"]
