"""TF Serving's model config file (`models.config`, a `ModelServerConfig` text proto).

TF Serving polls this file (`--model_config_file_poll_wait_seconds`) and reloads it whenever it
changes, so every write is atomic (temp file + rename: the server never reads half a file) and
every read-modify-write holds an exclusive lock shared with `serving.push`, so a push and a
rollout never overwrite each other's change.

The model server refuses to start when a version label points at a version it does not serve
(tensorflow/serving#1230, #1608), so labels are validated here, with the label and version named,
before anything is written.

Only TensorFlow Serving's protos are imported (no TensorFlow): the CLI and the gateway stay fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import operator
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from core import atomic
from core.errors import DataError

ModelServerConfig = model_server_config_pb2.ModelServerConfig
ModelConfig = model_server_config_pb2.ModelConfig

STABLE_LABEL = "stable"
CANARY_LABEL = "canary"
MODEL_PLATFORM = "tensorflow"
# The REST path `/v1/models/{name}/labels/{label}` cannot carry these characters.
_FORBIDDEN_NAME_CHARS = frozenset("/:\n\r\t ")


class ModelConfigError(DataError):
    """The model config is malformed or inconsistent (e.g. a label on a version that is not served)."""


def read_model_config(path: Path) -> ModelServerConfig:
    """Parses and validates `path`; a syntax error is reported with the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelConfigError(f"{path}: model config file not found") from None
    except UnicodeDecodeError as err:
        raise ModelConfigError(f"{path}: model config is not UTF-8 text ({err})") from None
    config = ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        # TF Serving's words (protobuf's C++ text-format parser), then the file and position.
        line, column = err.GetLine(), err.GetColumn()
        where = f"{path}:{line}:{column}" if line else str(path)
        detail = re.sub(r"^\d+:\d+ : ", "", str(err))
        position = f"{line}:{column}: " if line else ""
        raise ModelConfigError(
            f"{where}: Error parsing text-format tensorflow.serving.ModelServerConfig: {position}{detail}"
        ) from None
    validate_model_config(config, source=str(path))
    return config


def write_model_config(config: ModelServerConfig, path: Path) -> None:
    """Validates `config`, then replaces `path` atomically so a polling server never sees a partial file."""
    path = Path(path)
    validate_model_config(config, source=str(path))
    atomic.write_text(path, text_format.MessageToString(config))


def lock_path(config_path: Path) -> Path:
    """The lock file guarding `config_path`: hidden, next to it, never deleted (deleting races)."""
    config_path = Path(config_path)
    return config_path.parent / f".{config_path.name}.lock"


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive `flock` on `path` (created if missing); blocks until it is free.

    flock locks belong to the open file description, so two threads or two processes each
    opening the file exclude each other, and the kernel releases the lock if the holder dies.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def update_model_config(path: Path, fn: Callable[[ModelServerConfig], None]) -> ModelServerConfig:
    """Read-modify-write of `path` under its lock: `fn` edits the config in place.

    A missing file starts from an empty config. Nothing is written when `fn` raises or the
    result fails validation, so the served config is never left inconsistent.
    """
    path = Path(path)
    with exclusive_lock(lock_path(path)):
        config = read_model_config(path) if path.exists() else ModelServerConfig()
        fn(config)
        write_model_config(config, path)
        return config


def get_model(config: ModelServerConfig, name: str) -> ModelConfig:
    """The entry for model `name`; ModelConfigError listing the known names if it is absent."""
    for model in _model_list(config):
        if model.name == name:
            return model
    known = sorted(model.name for model in _model_list(config))
    raise ModelConfigError(f"model {name!r} is not in the model config (models: {known})")


def ensure_model(config: ModelServerConfig, name: str, base_path: Path | str) -> ModelConfig:
    """Returns model `name`, adding it (platform tensorflow, serving no version yet) if absent.

    An existing entry with a different base path is an error rather than silently repointed:
    the same name on two directories means two pipelines are fighting over one model.
    """
    check_name("model name", name)
    base = str(Path(base_path).resolve())
    for model in _model_list(config):
        if model.name == name:
            if Path(model.base_path).resolve() != Path(base):
                raise ModelConfigError(
                    f"model {name!r} already has base_path {model.base_path!r} in the model config; "
                    f"refusing to repoint it to {base!r}"
                )
            return model
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base
    model.model_platform = MODEL_PLATFORM
    model.model_version_policy.specific.SetInParent()
    return model


def served_versions(config: ModelServerConfig, name: str) -> list[int]:
    """The versions TF Serving serves for `name`, ascending.

    With the `specific` policy that is its list. With `latest` (the default: the highest one)
    or `all`, TF Serving decides from the integer directories under `base_path`, so they are
    read from disk the same way.
    """
    model = get_model(config, name)
    policy = model.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "specific":
        return sorted(set(int(v) for v in policy.specific.versions))
    on_disk = version_directories(Path(model.base_path))
    if choice == "all":
        return on_disk
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions > 0 else 1
    return on_disk[-count:]


def set_served_versions(config: ModelServerConfig, name: str, versions: Iterable[int]) -> None:
    """Serves exactly `versions` (policy `specific`); labels must still point at served versions."""
    model = get_model(config, name)
    wanted = sorted(set(_check_version(v) for v in versions))
    for label, version in model.version_labels.items():
        if version not in wanted:
            raise ModelConfigError(
                f"model {name!r}: cannot stop serving version {version}: label {label!r} points at it "
                f"(move or remove the label first; served would be {wanted})"
            )
    model.model_version_policy.Clear()
    specific = model.model_version_policy.specific
    specific.SetInParent()
    specific.versions.extend(wanted)


def set_label(config: ModelServerConfig, name: str, label: str, version: int) -> None:
    """Points `label` of model `name` at `version`, which must be served (tensorflow/serving#1230)."""
    check_name("label", label)
    version = _check_version(version)
    served = served_versions(config, name)
    if version not in served:
        raise ModelConfigError(_unserved_label_message(name, label, version, served))
    get_model(config, name).version_labels[label] = version


def remove_label(config: ModelServerConfig, name: str, label: str) -> None:
    """Removes `label` from model `name`; removing an absent label is a no-op (idempotent)."""
    model = get_model(config, name)
    if label in model.version_labels:
        del model.version_labels[label]


def labels(config: ModelServerConfig, name: str) -> dict[str, int]:
    """Label -> version of model `name`."""
    return {label: int(version) for label, version in get_model(config, name).version_labels.items()}


def version_directories(base_path: Path) -> list[int]:
    """Integer-named subdirectories of a model's base path, ascending (what TF Serving sees)."""
    if not base_path.is_dir():
        return []
    return sorted(int(entry.name) for entry in base_path.iterdir() if entry.name.isdigit() and entry.is_dir())


def validate_model_config(config: ModelServerConfig, *, source: str = "model config") -> None:
    """Rejects what TF Serving would reject at load: duplicate names, labels on unserved versions."""
    if config.WhichOneof("config") == "custom_model_config":
        raise ModelConfigError(f"{source}: custom_model_config is not supported; use model_config_list")
    seen: set[str] = set()
    for model in _model_list(config):
        if not model.name:
            raise ModelConfigError(f"{source}: a model entry has no name")
        if model.name in seen:
            raise ModelConfigError(f"{source}: model {model.name!r} appears more than once")
        seen.add(model.name)
        if not model.base_path:
            raise ModelConfigError(f"{source}: model {model.name!r} has no base_path")
        if not model.version_labels:
            continue
        served = served_versions(config, model.name)
        policy = model.model_version_policy.WhichOneof("policy_choice")
        if policy != "specific" and not Path(model.base_path).is_dir():
            continue  # e.g. a container path; the versions cannot be known from here
        for label, version in model.version_labels.items():
            if version not in served:
                raise ModelConfigError(f"{source}: " + _unserved_label_message(model.name, label, version, served))


def _unserved_label_message(name: str, label: str, version: int, served: list[int]) -> str:
    return (
        f"model {name!r}: label {label!r} points at version {version}, which is not served "
        f"(served versions: {served}); TF Serving refuses to start with such a label "
        f"(tensorflow/serving#1230)"
    )


def _model_list(config: ModelServerConfig) -> Iterable[ModelConfig]:
    return config.model_config_list.config


def check_name(what: str, value: str) -> None:
    """Rejects names TF Serving cannot route: they appear in REST paths like /v1/models/{name}/labels/{label}."""
    if not isinstance(value, str) or not value or _FORBIDDEN_NAME_CHARS & set(value):
        raise ModelConfigError(
            f"{what} {value!r} is not usable: it must be a non-empty string without '/', ':' or "
            f"whitespace (it is part of TF Serving's REST paths)"
        )


def _check_version(version: int) -> int:
    try:
        number = operator.index(version)  # ints and numpy integers, not floats or strings
    except TypeError:
        number = -1
    if isinstance(version, bool) or number < 0:
        raise ModelConfigError(f"a model version must be a non-negative integer, got {version!r}")
    return number
