"""The model manager: which versions of which models are served, ServerCore + AspiredVersionsManager
+ FileSystemStoragePathSource in one object.

For each model, the integer directories under `base_path` are the versions on disk; the version
policy (`latest {num_versions}` (default: 1), `all {}`, `specific {versions}`) picks the ones to
serve. A new version is loaded completely (SavedModel + warm-up, `servable.py`) before it becomes
visible; the old one keeps answering meanwhile and is unloaded by TF Serving's
availability-preserving rule (`core/availability_preserving_policy.cc`): a version the policy
dropped goes once an aspired version is available, or when nothing is aspired any more. A
directory whose name is not an integer (a push writes `.tmp-...` and renames it) is never looked
at. A version that fails to load is reported (state END with the error) and the server keeps
running; it is tried again only when its directory's content changes.

Version labels follow `ServerCore::UpdateModelVersionLabelMap`: a label may point only at an
AVAILABLE version, unless `allow_version_labels_for_unavailable_models` is set (then only new
labels, or labels keeping their version, may point at unavailable versions). One deliberate
difference: at start-up the labels are checked after the first load instead of before, because
before it no version can be available and TF Serving refuses every label (tensorflow/serving#1230).

Requests read immutable snapshots (a dict swapped in one assignment), so serving never waits for
a load; only loads, unloads and config reloads take the write lock. Errors are `ServingError`s
with TF Serving's codes and messages.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import os
import re
import threading
from pathlib import Path
from typing import Iterable

from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import file_system_storage_path_source_pb2, model_server_config_pb2

from serving.model_server.batching import BatchScheduler
from serving.model_server.servable import RuntimeObserver, Servable, status_from_exception
from serving.status import Code, ServingError, invalid

log = logging.getLogger(__name__)

MODEL_PLATFORM = "tensorflow"
_VERSION_DIR = re.compile(r"[0-9]+")
_MAX_VERSION = 2**63 - 1


class State(enum.IntEnum):
    """`ModelVersionStatus.State` (apis/get_model_status.proto)."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    version: int
    state: State
    error_code: Code = Code.OK
    error_message: str = ""


def status_response(statuses: Iterable[VersionStatus]) -> get_model_status_pb2.GetModelStatusResponse:
    """`ModelManager.model_status`'s answer as the GetModelStatusResponse both APIs return."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in statuses:
        entry = response.model_version_status.add()
        entry.version = status.version
        entry.state = int(status.state)
        entry.status.error_code = int(status.error_code)
        entry.status.error_message = status.error_message
    return response


def version_directories(base_path: Path) -> dict[int, Path]:
    """Integer-named directories under a model's base path (TF Serving ignores everything else)."""
    try:
        entries = list(os.scandir(base_path))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    versions: dict[int, Path] = {}
    for entry in entries:
        if _VERSION_DIR.fullmatch(entry.name) and int(entry.name) <= _MAX_VERSION and entry.is_dir():
            versions[int(entry.name)] = Path(entry.path)
    return versions


VersionPolicy = file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy


def aspired_versions(policy: VersionPolicy, on_disk: Iterable[int]) -> set[int]:
    """The versions the policy wants, among those on disk (FileSystemStoragePathSource's rule)."""
    present = sorted(on_disk)
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(present)
    if choice == "specific":
        return set(present) & set(int(v) for v in policy.specific.versions)
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions > 0 else 1
    return set(present[-count:])


def _directory_fingerprint(path: Path) -> str:
    """Changes whenever a file under `path` is added, removed, resized or rewritten."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            try:
                stat = os.stat(full)
            except OSError:
                continue
            digest.update(f"{os.path.relpath(full, path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def validate_config_list(config: model_server_config_pb2.ModelServerConfig) -> None:
    """What ServerCore::ReloadConfig rejects, with its messages (server_core.cc)."""
    names: set[str] = set()
    for model in config.model_config_list.config:
        if model.name in names:
            raise invalid(f"Illegal to list model {model.name} multiple times in config list")
        names.add(model.name)
        if not model.name:
            raise invalid("ModelSpec has no name specified.")
        if not os.path.isabs(model.base_path) and "://" not in model.base_path:
            raise invalid(
                f"Expected model {model.name} to have an absolute path or URI; got base_path()={model.base_path}"
            )
        if "://" in model.base_path:
            raise ServingError(
                Code.UNIMPLEMENTED, f"Model {model.name}: only local base paths are supported here, got {model.base_path}"
            )
        if not model.model_platform:
            raise invalid(
                "Illegal setting neither ModelServerConfig::model_type (deprecated) nor ModelServerConfig::model_platform."
            )
        if model.model_platform != MODEL_PLATFORM:
            raise invalid(f"Model {model.name} requests unsupported platform {model.model_platform}")


class ModelsUnavailableError(ServingError):
    """The new config was applied, but a model it added has no version that loaded."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.UNKNOWN, message)


class ModelManager:
    """ServerCore + AspiredVersionsManager + FileSystemStoragePathSource, in one object."""

    def __init__(
        self,
        *,
        allow_version_labels_for_unavailable_models: bool = False,
        enable_signature_method_name_check: bool = False,
        observer: RuntimeObserver | None = None,
        scheduler: BatchScheduler | None = None,
    ) -> None:
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._check_method_name = enable_signature_method_name_check  # TF Serving's default: off
        self._observer = observer
        self._scheduler = scheduler
        self._write_lock = threading.RLock()
        self._config = model_server_config_pb2.ModelServerConfig()
        # Snapshots read without a lock by request threads; replaced, never mutated.
        self._routes: dict[str, dict[int, Servable]] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._history: dict[str, dict[int, VersionStatus]] = {}
        self._failed: dict[tuple[str, int], str] = {}  # (model, version) -> fingerprint that failed
        self._warned_missing: set[str] = set()

    # --- reads (request path) ---

    @property
    def config(self) -> model_server_config_pb2.ModelServerConfig:
        with self._write_lock:
            copy = model_server_config_pb2.ModelServerConfig()
            copy.CopyFrom(self._config)
            return copy

    def get_servable(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """ServerCore::GetServableHandle: by version, by label, or the highest available version."""
        if not name:
            raise invalid("ModelSpec has no name specified.")
        if label is not None:
            resolved = self._labels.get(name, {}).get(label)
            if resolved is None:
                raise invalid(f"Unrecognized servable version label: {label}")
            version = resolved
        versions = self._routes.get(name, {})
        if version is None:
            if not versions:
                raise ServingError(Code.NOT_FOUND, f"Servable not found for request: Latest({name})")
            return versions[max(versions)]
        servable = versions.get(version)
        if servable is None:
            raise ServingError(Code.NOT_FOUND, f"Servable not found for request: Specific({name}, {version})")
        return servable

    def model_status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """GetModelStatusImpl: every version ever seen (highest first), or one version."""
        history = self._history.get(name, {})
        if version is not None:
            status = history.get(version)
            if status is None:
                raise ServingError(Code.NOT_FOUND, f"Could not find version {version} of model {name}")
            return [status]
        if not history:
            raise ServingError(Code.NOT_FOUND, f"Could not find any versions of model {name}")
        return [history[v] for v in sorted(history, reverse=True)]

    def labels(self, name: str) -> dict[str, int]:
        return dict(self._labels.get(name, {}))

    def available_versions(self, name: str) -> list[int]:
        return sorted(self._routes.get(name, {}))

    # --- writes (poller, config reloads) ---

    def reload_config(self, config: model_server_config_pb2.ModelServerConfig, *, initial: bool = False) -> None:
        """Replaces the served models (ServerCore::ReloadConfig); raises ServingError and keeps the
        previous config when the new one is invalid or moves a label onto an unavailable version.
        ModelsUnavailableError means the config was applied but a newly added model has no loaded
        version (TF Serving reports that as UNKNOWN too)."""
        kind = config.WhichOneof("config")
        if kind is None:
            log.info("Taking no action for empty config.")
            return
        if kind != "model_config_list":
            raise invalid(f"Only model_config_list configs are supported, got {kind}")
        validate_config_list(config)
        with self._write_lock:
            new_names = {m.name for m in config.model_config_list.config} - {
                m.name for m in self._config.model_config_list.config
            }
            labels = None if initial else self._label_map(config)
            self._config = model_server_config_pb2.ModelServerConfig()
            self._config.CopyFrom(config)
            self._poll_locked()
            self._labels = labels if labels is not None else self._label_map(config)
            if not initial:
                missing = sorted(n for n in new_names if not self._routes.get(n))
                if missing:
                    details = ", ".join(f"{{name: {n} error: {self._last_error(n)}}}" for n in missing)
                    raise ModelsUnavailableError(f"{len(missing)} model(s) did not become available: {{{details}}}")

    def _last_error(self, name: str) -> str:
        failed = [s for s in self._history.get(name, {}).values() if s.error_code != Code.OK]
        return failed[-1].error_message if failed else "no version found under its base path"

    def _label_map(self, config: model_server_config_pb2.ModelServerConfig) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = {}
        for model in config.model_config_list.config:
            states = self._history.get(model.name, {})
            for label, version in model.version_labels.items():
                allow_any = False
                if self._allow_unavailable_labels:
                    existing = self._labels.get(model.name, {}).get(label)
                    allow_any = existing is None or existing == version
                status = states.get(version)
                if not allow_any and (status is None or status.state != State.AVAILABLE):
                    raise ServingError(
                        Code.FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {model.name}, "
                        f"which is not currently available for inference",
                    )
                result.setdefault(model.name, {})[label] = int(version)
        return result

    def poll(self) -> None:
        """One pass of the file-system source: load new aspired versions, unload dropped ones."""
        with self._write_lock:
            self._poll_locked()

    def _poll_locked(self) -> None:
        configured = {m.name: m for m in self._config.model_config_list.config}
        for model in configured.values():
            self._sync_model(model.name, Path(model.base_path), model.model_version_policy)
        for name in [n for n in self._routes if n not in configured]:
            self._unload_all(name)

    def _sync_model(self, name: str, base_path: Path, policy: VersionPolicy) -> None:
        on_disk = version_directories(base_path)
        if not on_disk and name not in self._warned_missing:
            log.warning("No versions of servable %s found under base path %s", name, base_path)
            self._warned_missing.add(name)
        elif on_disk:
            self._warned_missing.discard(name)
        aspired = aspired_versions(policy, on_disk)
        for version in sorted(aspired, reverse=True):  # the newest first: it is the one users want
            if version in self._routes.get(name, {}):
                continue
            fingerprint = _directory_fingerprint(on_disk[version])
            if self._failed.get((name, version)) == fingerprint:
                continue
            self._load(name, version, on_disk[version], fingerprint)
        while True:  # AvailabilityPreservingPolicy, one unload per step
            serving = self._routes.get(name, {})
            has_aspired_serving = any(v in serving for v in aspired)
            unaspired = sorted(v for v in serving if v not in aspired)
            if unaspired and (not aspired or has_aspired_serving or len(unaspired) > 1):
                self._unload(name, unaspired[0])
                continue
            break

    def _set_status(self, name: str, status: VersionStatus) -> None:
        versions = dict(self._history.get(name, {}))
        versions[status.version] = status
        self._history = {**self._history, name: versions}

    def _load(self, name: str, version: int, path: Path, fingerprint: str) -> None:
        self._set_status(name, VersionStatus(version, State.START))
        self._set_status(name, VersionStatus(version, State.LOADING))
        log.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
        try:
            servable = Servable.load(name, version, path, self._observer, self._scheduler, self._check_method_name)
        except Exception as err:  # noqa: BLE001 - a broken version must never take the server down
            status = status_from_exception(err)
            self._failed[(name, version)] = fingerprint
            self._set_status(name, VersionStatus(version, State.END, status.code, status.message))
            log.error("Loading servable version {name: %s version: %d} failed: %s", name, version, status.status_string())
            return
        self._failed.pop((name, version), None)
        self._routes = {**self._routes, name: {**self._routes.get(name, {}), version: servable}}
        self._set_status(name, VersionStatus(version, State.AVAILABLE))
        log.info("Successfully loaded servable version {name: %s version: %d}", name, version)

    def _unload(self, name: str, version: int) -> None:
        self._set_status(name, VersionStatus(version, State.UNLOADING))
        remaining = {v: s for v, s in self._routes.get(name, {}).items() if v != version}
        self._routes = {**self._routes, name: remaining}
        # In-flight requests keep their own reference; the model is freed when they finish.
        self._set_status(name, VersionStatus(version, State.END))
        log.info("Unloaded servable version {name: %s version: %d}", name, version)

    def _unload_all(self, name: str) -> None:
        for version in sorted(self._routes.get(name, {})):
            self._unload(name, version)
        routes = dict(self._routes)
        routes.pop(name, None)
        self._routes = routes

    def close(self) -> None:
        with self._write_lock:
            for name in list(self._routes):
                self._unload_all(name)
