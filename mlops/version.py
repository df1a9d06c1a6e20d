"""The code version recorded with every execution: a hash of the project's sources, plus git."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SOURCE_PACKAGES = ("mlops", "beam_jobs", "transforms", "trainer", "serving", "metadata", "monitoring", "validation")


@functools.lru_cache(maxsize=None)
def source_hash() -> str:
    """sha256 over the project's Python sources: changes whenever the code does, git or not."""
    digest = hashlib.sha256()
    for package in SOURCE_PACKAGES:
        folder = PROJECT_ROOT / package
        for path in sorted(folder.rglob("*.py")) if folder.is_dir() else ():
            digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
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
