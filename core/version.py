"""The code version recorded with every execution: a hash of the project's sources, plus git."""

from __future__ import annotations

import ast
import functools
import hashlib
import subprocess
from pathlib import Path
from typing import Sequence

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SOURCE_PACKAGES = ("core", "mlops", "beam_jobs", "transforms", "trainer", "serving", "metadata", "monitoring", "validation")


@functools.lru_cache(maxsize=None)
def source_hash() -> str:
    """sha256 over the project's Python sources: changes whenever the code does, git or not."""
    files = [path for package in SOURCE_PACKAGES if (PROJECT_ROOT / package).is_dir()
             for path in sorted((PROJECT_ROOT / package).rglob("*.py"))]
    return _digest(files, PROJECT_ROOT)


@functools.lru_cache(maxsize=None)
def modules_hash(modules: tuple[str, ...], *, follow_imports: bool = True) -> str:
    """sha256 over the sources of `modules` and, with `follow_imports`, every project module they
    import at any depth (at module level or inside a function: steps import their heavy code lazily).

    A step's cache key uses this instead of `source_hash()`, so editing the gateway does not make
    training run again while editing `transforms/features.py` re-runs every step that reads it.
    """
    names = module_closure(modules) if follow_imports else sorted(modules)
    files = {name: _module_file(name, PROJECT_ROOT) for name in names}
    missing = [name for name, path in files.items() if path is None]
    if missing:
        raise ValueError(f"no project module {missing} under {PROJECT_ROOT}")
    return _digest([path for path in files.values() if path is not None], PROJECT_ROOT)


def module_closure(modules: Sequence[str], root: Path = PROJECT_ROOT, packages: Sequence[str] = SOURCE_PACKAGES) -> list[str]:
    """`modules`, the project modules they import (transitively) and their parent packages, sorted."""
    found: dict[str, Path] = {}
    pending = list(modules)
    while pending:
        name = pending.pop()
        if name in found or name.split(".")[0] not in packages:
            continue
        path = _module_file(name, root)
        if path is None:
            continue  # `from package import function`: the name is not a module
        found[name] = path
        parts = name.split(".")
        pending.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        pending.extend(imported_names(path, name))
    missing = [name for name in modules if name not in found]
    if missing:
        raise ValueError(f"no project module {missing} under {root} (packages {list(packages)})")
    return sorted(found)


def _module_file(name: str, root: Path) -> Path | None:
    base = root.joinpath(*name.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def imported_names(path: Path, module: str, *, skip_type_checking: bool = False) -> set[str]:
    """Every dotted name an `import` statement in the file could refer to as a module: `a.b` and
    `a.b.name` for `from a.b import name`, relative imports resolved against `module`. With
    `skip_type_checking`, imports under `if TYPE_CHECKING:` (which never run) are left out."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    skipped: set[int] = set()
    if skip_type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped.update(id(child) for statement in node.body for child in ast.walk(statement))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


def _digest(files: Sequence[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def git_revision() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def code_version() -> str:
    return f"git:{git_revision()} src:{source_hash()}"
