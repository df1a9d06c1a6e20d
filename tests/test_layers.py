"""The import rules of docs/ARCHITECTURE.md, checked on every project module.

- Packages are layered; a package imports only itself and the packages below it (LAYERS).
- `core` imports no project package; `mlops` (the orchestration layer) is imported only by the
  programs on top: dags/, tests/, benchmarks/ and `__main__` modules.
- No module imports another package's private module (a `_name` module is its package's own).
- No import cycles between modules (imports under `if TYPE_CHECKING:` do not count).
- Every name imported from a project module exists there: a lazy import inside a function would
  otherwise fail only when that function first runs (in an Airflow task, say).

Imports are read with `ast`, lazy ones inside functions included: they run too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from core.version import imported_names

ROOT = Path(__file__).resolve().parent.parent

# Bottom first. Each package may import the ones before it, never the ones after.
LAYERS = ("core", "transforms", "beam_jobs", "validation", "trainer", "metadata", "serving", "monitoring", "mlops")
# Programs on top of everything: they may import any package and nothing imports them.
PROGRAMS = ("dags", "tests", "benchmarks", "scripts")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every project module or name `module` imports (that runs), as dotted names."""
    top_level = set(LAYERS) | set(PROGRAMS)
    return {name for name in imported_names(path, module, skip_type_checking=True)
            if name.split(".")[0] in top_level}


def _project_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for top in LAYERS + PROGRAMS:
        folder = ROOT / top
        assert folder.is_dir(), f"{top}/ is missing: update LAYERS/PROGRAMS and docs/ARCHITECTURE.md"
        for path in sorted(folder.rglob("*.py")):
            modules[_module_name(path)] = path
    return modules


MODULES = _project_modules()
IMPORTS = {module: _imports(path, module) for module, path in MODULES.items()}


def _resolve(name: str) -> str | None:
    """The project module an imported dotted name lives in (`a.b.func` -> `a.b`)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def test_every_package_imports_only_the_packages_below_it():
    rank = {package: i for i, package in enumerate(LAYERS)}
    wrong = []
    for module, names in IMPORTS.items():
        top = module.split(".")[0]
        if top not in rank:
            continue
        for name in sorted(names):
            imported = name.split(".")[0]
            if imported in PROGRAMS or rank[imported] > rank[top]:
                wrong.append(f"{module} imports {name} ({imported} is above {top})")
    assert not wrong, "\n".join(wrong)


def test_core_imports_no_project_package():
    wrong = [f"{module} imports {name}" for module, names in IMPORTS.items() if module.split(".")[0] == "core"
             for name in sorted(names) if name.split(".")[0] != "core"]
    assert not wrong, "\n".join(wrong)


def test_only_programs_and_main_modules_import_the_orchestration_layer():
    wrong = []
    for module, names in IMPORTS.items():
        top = module.split(".")[0]
        if top in PROGRAMS or top == "mlops" or module.endswith(".__main__"):
            continue
        wrong.extend(f"{module} imports {name}" for name in sorted(names) if name.split(".")[0] == "mlops")
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_another_packages_private_module():
    wrong = []
    for module, names in IMPORTS.items():
        for name in sorted(names):
            target = _resolve(name)
            if target is None:
                continue
            private = [part for part in target.split(".") if part.startswith("_") and not part.startswith("__")]
            if private and target.rpartition(".")[0] != module.rpartition(".")[0] and not module.startswith("tests."):
                wrong.append(f"{module} imports the private {target}")
    assert not wrong, "\n".join(wrong)


def _cycles() -> list[list[str]]:
    graph = {module: sorted({target for name in names if (target := _resolve(name)) and target != module})
             for module, names in IMPORTS.items()}
    # A package's __init__ re-exporting its own modules is not a cycle worth naming.
    graph = {module: [t for t in targets if not module.startswith(t + ".")] for module, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles():
    cycles = _cycles()
    assert not cycles, "modules importing each other: " + "; ".join(" <-> ".join(c) for c in cycles)


def _defined_names(path: Path) -> set[str] | None:
    """The names a module defines at its top level (None when it has a module `__getattr__`)."""
    names: set[str] = set()
    pending = list(ast.parse(path.read_bytes(), filename=str(path)).body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == "__getattr__":
                return None
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            pending.extend(node.body)
            pending.extend(getattr(node, "orelse", []))
            pending.extend(getattr(node, "finalbody", []))
            for handler in getattr(node, "handlers", []):
                pending.extend(handler.body)
    return names


def test_every_name_imported_from_a_project_module_exists_there():
    missing = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_bytes(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level or node.module not in MODULES:
                continue
            defined = _defined_names(MODULES[node.module])
            if defined is None:
                continue
            missing.extend(f"{module}: `from {node.module} import {alias.name}` (line {node.lineno})"
                           for alias in node.names
                           if alias.name != "*" and alias.name not in defined
                           and f"{node.module}.{alias.name}" not in MODULES)
    assert not missing, "imported names that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("package", LAYERS)
def test_the_rules_see_every_package(package):
    """Guards the guards: a package the walk misses would pass every rule above."""
    assert any(module.split(".")[0] == package for module in MODULES)
