"""The package's own rules: what it may import, and that importing it stays cheap."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[3]
PACKAGE = PROJECT_ROOT / "serving" / "model_server"
# The shared pieces of serving/ the model server builds on; the gateway and the clients are not among them.
ALLOWED_SERVING_MODULES = {"serving.status", "serving.protocol", "serving.model_config", "serving.tensor_protos"}


def _project_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.split(".")[0] in ("core", "serving", "mlops", "monitoring")}


def test_the_model_server_imports_only_core_and_the_shared_serving_modules():
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) > 10, f"the package moved? found {modules}"
    wrong = [
        f"{path.name} imports {name}"
        for path in modules
        for name in sorted(_project_imports(path))
        if not (name.startswith(("core.", "serving.model_server")) or name in ALLOWED_SERVING_MODULES)
    ]
    assert not wrong, "\n".join(wrong)


def test_importing_the_package_does_not_import_tensorflow():
    """`mlops serve`, the gateway's tests and `--help` import it; TensorFlow waits until a server starts."""
    code = "import sys, serving.model_server; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
