"""Pushing a SavedModel to TF Serving's model base path: `<model_base_dir>/<model_name>/<version>/`.

TF Serving watches the base path and loads any integer directory it finds, so a version
directory must never exist half-written: the model is copied into a hidden temp directory in the
same parent (TF Serving ignores names that are not integers), flushed to disk, and renamed into
place in one step. Version numbers are allocated, and `models.config` is updated, under an
exclusive lock, so concurrent pushes (two Airflow tasks, two machines on a shared disk with
working flock) get distinct versions.

A marker file records each version's fingerprint: pushing the same model again returns the
version it already has instead of serving a duplicate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import secrets
import shutil
from pathlib import Path

from core import atomic
from core.errors import DataError
from serving import model_config as mc

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "mlops_fingerprint.txt"
PUSH_LOCK_FILE = ".push.lock"
TEMP_PREFIX = ".tmp-"
SAVED_MODEL_FILE = "saved_model.pb"
VARIABLES_DIR = "variables"


@dataclasses.dataclass(frozen=True)
class PushResult:
    model_name: str
    version: int
    path: Path  # the version directory TF Serving loads
    reused: bool  # this exact model (same fingerprint) was already pushed; nothing was copied


def push_model(
    model_dir: Path,
    model_base_dir: Path,
    model_name: str,
    *,
    fingerprint: str | None = None,
    config_file: Path | None = None,
) -> PushResult:
    """Copies the SavedModel at `model_dir` in as the next version of `model_name`.

    `fingerprint` identifies the model (default: sha256 of saved_model.pb and variables/*).
    With `config_file`, the version is added to the model's served versions in that
    `models.config`, and `stable` is pointed at it only when the model has no `stable` yet:
    moving an existing label is the rollout's decision, not the push's.
    """
    model_dir = Path(model_dir)
    if not (model_dir / SAVED_MODEL_FILE).is_file():
        raise DataError(f"{model_dir}: not a SavedModel directory (no {SAVED_MODEL_FILE})")
    mc.check_name("model name", model_name)
    if fingerprint is None:
        fingerprint = model_fingerprint(model_dir)
    elif not fingerprint or fingerprint != fingerprint.strip() or "\n" in fingerprint:
        raise DataError(f"fingerprint must be a non-empty single line without surrounding spaces, got {fingerprint!r}")

    model_root = Path(model_base_dir).resolve() / model_name
    model_root.mkdir(parents=True, exist_ok=True)
    with mc.exclusive_lock(model_root / PUSH_LOCK_FILE):
        _remove_abandoned_temp_dirs(model_root)
        existing = find_version_by_fingerprint(model_root, fingerprint)
        if existing is not None:
            version, reused = existing, True
            log.info("model %s with fingerprint %s is already version %d", model_name, fingerprint, version)
        else:
            versions = mc.version_directories(model_root)
            version, reused = (versions[-1] + 1 if versions else 1), False
            _copy_atomically(model_dir, model_root, version, fingerprint)
            log.info("pushed %s as %s version %d", model_dir, model_name, version)
        if config_file is not None:
            # Also on reuse: a push that died between the rename and this update is repaired.
            mc.update_model_config(Path(config_file), lambda config: _serve_version(config, model_name, model_root, version))
    return PushResult(model_name=model_name, version=version, path=model_root / str(version), reused=reused)


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over saved_model.pb and every file under variables/, names included, in sorted order."""
    model_dir = Path(model_dir)
    files = [model_dir / SAVED_MODEL_FILE]
    variables = model_dir / VARIABLES_DIR
    if variables.is_dir():
        files += sorted(p for p in variables.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def find_version_by_fingerprint(model_root: Path, fingerprint: str) -> int | None:
    """The pushed version whose marker holds `fingerprint`, if any (versions without a marker are skipped)."""
    for version in mc.version_directories(Path(model_root)):
        marker = Path(model_root) / str(version) / FINGERPRINT_FILE
        if marker.is_file() and marker.read_text(encoding="utf-8").strip() == fingerprint:
            return version
    return None


def _copy_atomically(model_dir: Path, model_root: Path, version: int, fingerprint: str) -> None:
    temp = model_root / f"{TEMP_PREFIX}{version}-{secrets.token_hex(4)}"
    target = model_root / str(version)
    try:
        try:
            shutil.copytree(model_dir, temp)
        except (shutil.Error, OSError) as err:
            raise DataError(f"cannot copy the SavedModel {model_dir} for {target}: {err}") from err
        (temp / FINGERPRINT_FILE).write_text(fingerprint + "\n", encoding="utf-8")
        atomic.fsync_tree(temp)
        # rename(2) onto a missing name is atomic: TF Serving sees no directory or a complete one.
        os.rename(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    atomic.fsync_directory(model_root)


def _remove_abandoned_temp_dirs(model_root: Path) -> None:
    """Temp dirs left by a push that died; safe to delete because only the lock holder creates them."""
    for entry in model_root.iterdir():
        if entry.name.startswith(TEMP_PREFIX) and entry.is_dir():
            log.warning("removing %s, left by an interrupted push", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _serve_version(config: mc.ModelServerConfig, model_name: str, model_root: Path, version: int) -> None:
    mc.ensure_model(config, model_name, model_root)
    served = mc.served_versions(config, model_name)
    if version not in served:
        mc.set_served_versions(config, model_name, [*served, version])
    if mc.STABLE_LABEL not in mc.labels(config, model_name):
        mc.set_label(config, model_name, mc.STABLE_LABEL, version)
