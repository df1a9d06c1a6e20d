"""The wall between the gateway and the model server.

The gateway (serving/gateway/) is a light process in front of the model server: it must start in
a second and never load TensorFlow (it speaks TF Serving's protocol through
`serving.tensor_protos`) nor the model server's code. The model server (serving/model_server/)
must not depend on the gateway in front of it. Checked twice: statically (every import statement
in every file) and dynamically (a fresh interpreter imports every gateway module).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
GATEWAY = PROJECT_ROOT / "serving" / "gateway"
MODEL_SERVER = PROJECT_ROOT / "serving" / "model_server"


def _package_files(folder: Path) -> list[Path]:
    assert folder.is_dir(), f"{folder.relative_to(PROJECT_ROOT)}/ does not exist: the boundary cannot be checked"
    files = sorted(folder.rglob("*.py"))
    assert files, f"{folder.relative_to(PROJECT_ROOT)}/ holds no Python file"
    return files


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path) -> set[str]:
    """Every module an import statement in `path` names, `from a import b` counted as `a` and `a.b`."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("forbidden", ["serving.model_server", "tensorflow"])
def test_no_gateway_file_imports_the_model_server_or_tensorflow(forbidden):
    offenders = {
        str(path.relative_to(PROJECT_ROOT)): sorted(module for module in _imported_modules(path) if _is_within(module, forbidden))
        for path in _package_files(GATEWAY)
    }
    offenders = {path: modules for path, modules in offenders.items() if modules}
    assert offenders == {}, f"the gateway must not import {forbidden}"


def test_no_model_server_file_imports_the_gateway():
    offenders = {
        str(path.relative_to(PROJECT_ROOT)): sorted(module for module in _imported_modules(path) if _is_within(module, "serving.gateway"))
        for path in _package_files(MODEL_SERVER)
    }
    offenders = {path: modules for path, modules in offenders.items() if modules}
    assert offenders == {}, "the model server must not import the gateway"


def test_importing_every_gateway_module_loads_no_tensorflow():
    modules = [_module_name(path) for path in _package_files(GATEWAY) if path.name != "__main__.py"]
    # The protos are loaded too, as the gateway does at start-up (serving.tensor_protos.serving_apis).
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "from serving.tensor_protos import serving_apis\n"
        "serving_apis()\n"
        "print(json.dumps(sorted(m for m in sys.modules if m in ('tensorflow', 'tensorflow.python') or m.startswith('tensorflow.python.') "
        "or m == 'serving.model_server' or m.startswith('serving.model_server.'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing serving.gateway loaded {loaded[:10]}"
