"""Starting the embedded model server: the flags, the model config (re-read when it changes), the
poller of the base paths, and the wiring of manager, REST and gRPC servers and metrics.

    python -m serving.model_server --port=8500 --rest_api_port=8501 \\
        --model_config_file=var/serving/models.config --model_config_file_poll_wait_seconds=1

or in-process (tests, benchmarks): `handle = start_model_server(...); ...; handle.stop()`.

The flags are `tensorflow_model_server`'s (model_servers/main.cc), parsed as tensorflow::Flags
parses them: `--flag=value`, booleans as `--flag`, `--flag=true` or `--flag=false`; no abbreviations.
- honoured: --port, --rest_api_port, --grpc_socket_path (gRPC on `unix:<path>` as well as the TCP
  port), --rest_api_timeout_in_ms (default 30000 as TF Serving's; a REST call that takes longer is
  answered 504 DEADLINE_EXCEEDED, and its model call finishes on its worker thread, since it cannot be
  interrupted), --grpc_channel_arguments (`k=v,...`, integers as integers, given to grpcio as server
  options after this server's own), --model_name, --model_base_path, --model_config_file,
  --model_config_file_poll_wait_seconds, --file_system_poll_wait_seconds, --monitoring_config_file,
  --allow_version_labels_for_unavailable_models, --rest_api_num_threads, --grpc_max_threads,
  --tensorflow_intra_op_parallelism, --tensorflow_inter_op_parallelism, --enable_batching,
  --batching_parameters_file, --version; and this server's own --host and --rest_api_max_body_bytes;
- accepted and logged once (a WARNING, INFO for a false boolean), else ignored: the flags in
  IGNORED_FLAGS below, each with what happens instead (TF Lite's --prefer_tflite_model and
  --num_tflite_*, --enable_profiler, warm-up, load threads and retries, XLA, TPU, session and
  platform configs, ...): TF Lite models and the profiler service are out of scope;
- refused at start: --ssl_config_file and --use_alts_credentials (serving plaintext where TF Serving
  would serve TLS/ALTS would be worse than not starting);
- start-up failures print "Failed to start server. Error: ..." (on stderr) and exit with 255, as
  main.cc's `return -1`; a config that does not parse names the file and position, then TF
  Serving's "Error parsing text-format tensorflow.serving.ModelServerConfig: <line>:<column>: ...".
  As tensorflow::Flags: a flag value of the wrong type, or `--help`, prints the usage and exits
  with 255; an unknown argument is printed ("unknown argument: ...") with the usage, and the server
  starts anyway. `--port=0` serves gRPC only on --grpc_socket_path (neither: TF Serving's
  "At least one of ..." start-up failure); `--rest_api_port=0`, the default, serves no REST.
  In-process, `start_model_server` takes 0 as "any free port" and None as "do not listen".

Differences, each deliberate:
- start-up checks version labels after the first load, so a label on a version that loaded is
  accepted without `--allow_version_labels_for_unavailable_models` (tensorflow/serving#1230);
- the config file is reloaded when its content changes (TF Serving reloads it on every poll, which
  undoes a HandleReloadConfigRequest a second later);
- a version that fails at start-up does not stop the server: it is reported in the model status;
- `--rest_api_max_body_bytes` bounds a REST body (400 with the limit named; TF Serving has none);
- no request is used partly: an unknown key in a columnar `inputs` object and an out-of-range
  int8/int16/uint8 value are refused (TF Serving ignores the key and wraps the value), and a string
  output that is not UTF-8 is written as `{"b64": ...}` (TF Serving writes invalid JSON);
- `--enable_batching` merges concurrent Predict calls (not Classify/Regress/MultiInference) and
  reads the `BatchingParameters` fields that shape batches; padding options are accepted and
  ignored (this server needs no fixed batch sizes);
- a gRPC tensor with fewer values than its shape is filled up to at most 4,194,304 elements
  (TF Serving tries to allocate whatever the shape says: a 60-byte request asking for 10^9
  strings can take the process down).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Sequence

from core.errors import DataError
from serving.model_server.metrics import ServingMetrics, read_monitoring_config

if TYPE_CHECKING:  # the real imports wait until a server starts: TensorFlow takes ~14 s to import
    from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

    from serving.model_server.batching import BatchScheduler
    from serving.model_server.grpc_api import GrpcServer
    from serving.model_server.manager import ModelManager
    from serving.model_server.rest_api import RestServer

log = logging.getLogger(__name__)

DEFAULT_GRPC_PORT = 8500
DEFAULT_REST_PORT = 8501
DEFAULT_REST_TIMEOUT_MS = 30_000  # TF Serving's (server.h: http_timeout_in_ms)
# main.cc returns -1 when BuildAndStart fails: the shell sees 255.
START_FAILURE_EXIT_STATUS = 255


class StartupError(Exception):
    """The server cannot start: bad flags, an unreadable config, or a port already taken."""


# server.cc's words when neither --port nor --grpc_socket_path is given.
NO_GRPC_LISTENER = "INVALID_ARGUMENT: At least one of server_options.grpc_port or server_options.grpc_socket_path must be set."


# --- The server -------------------------------------------------------------------------------


def _read_model_config(path: Path) -> "ModelServerConfig":
    from serving.model_config import read_model_config

    return read_model_config(path)


def _single_model_config(model_name: str, model_base_path: str) -> "ModelServerConfig":
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = os.path.abspath(model_base_path)
    model.model_platform = "tensorflow"
    return config


def _configure_tensorflow_threads(intra: int, inter: int) -> None:
    """Applies --tensorflow_*_op_parallelism; TensorFlow only accepts it before its runtime starts."""
    import tensorflow as tf

    for value, getter, setter, flag in (
        (intra, tf.config.threading.get_intra_op_parallelism_threads, tf.config.threading.set_intra_op_parallelism_threads, "intra"),
        (inter, tf.config.threading.get_inter_op_parallelism_threads, tf.config.threading.set_inter_op_parallelism_threads, "inter"),
    ):
        if value <= 0 or getter() == value:
            continue
        try:
            setter(value)
        except RuntimeError:
            log.warning(
                "--tensorflow_%s_op_parallelism=%d ignored: TensorFlow's runtime is already initialised in this process",
                flag,
                value,
            )


class _Poller:
    """One thread that re-scans the base paths and re-reads the config file on their intervals."""

    def __init__(
        self,
        manager: "ModelManager",
        *,
        file_system_poll_wait_seconds: float,
        config_file: Path | None,
        config_poll_wait_seconds: float,
        initial_config_digest: str | None,
    ) -> None:
        self._manager = manager
        self._fs_interval = file_system_poll_wait_seconds
        self._config_file = config_file
        self._config_interval = config_poll_wait_seconds if config_file is not None else 0.0
        self._config_digest = initial_config_digest
        self._rejected_digest: str | None = None
        self.last_config_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-poller", daemon=True)

    def start(self) -> None:
        if self._fs_interval > 0 or self._config_interval > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        now = time.monotonic()
        next_fs = now + self._fs_interval if self._fs_interval > 0 else float("inf")
        next_config = now + self._config_interval if self._config_interval > 0 else float("inf")
        while not self._stop.wait(max(0.0, min(next_fs, next_config) - time.monotonic())):
            now = time.monotonic()
            if now >= next_config:
                self._check_config_file()
                next_config = time.monotonic() + self._config_interval
            if now >= next_fs:
                try:
                    self._manager.poll()
                except Exception:  # noqa: BLE001 - polling must survive anything the disk throws at it
                    log.exception("file-system poll failed")
                next_fs = time.monotonic() + self._fs_interval

    def _check_config_file(self) -> None:
        assert self._config_file is not None
        try:
            digest = hashlib.sha256(self._config_file.read_bytes()).hexdigest()
        except OSError as err:
            self._report(f"cannot read {self._config_file}: {err}", None)
            return
        if digest in (self._config_digest, self._rejected_digest):
            return
        from serving.model_server.manager import ModelsUnavailableError

        try:
            self._manager.reload_config(_read_model_config(self._config_file))
        except ModelsUnavailableError as err:
            self._config_digest, self._rejected_digest = digest, None
            self.last_config_error = f"{self._config_file}: applied, but {err}"
            log.warning("%s", self.last_config_error)
            return
        except Exception as err:  # noqa: BLE001 - a bad config keeps the previous one serving
            self._report(f"{self._config_file}: new config rejected, still serving the previous one: {err}", digest)
            return
        self._config_digest, self._rejected_digest, self.last_config_error = digest, None, None
        log.info("Reloaded model config from %s", self._config_file)

    def _report(self, message: str, digest: str | None) -> None:
        if digest is None or digest != self._rejected_digest:
            log.error("%s", message)
        self._rejected_digest = digest
        self.last_config_error = message


@dataclasses.dataclass
class ModelServerHandle:
    """A running server. `stop()` (or leaving a `with` block) shuts everything down."""

    rest_port: int  # 0: REST is not served
    grpc_port: int  # 0: gRPC only on grpc_socket_path
    host: str
    manager: "ModelManager"
    metrics: ServingMetrics
    _rest: "RestServer | None"
    _grpc: "GrpcServer"
    _poller: _Poller
    _executor: concurrent.futures.ThreadPoolExecutor
    _stopped: bool = False
    _scheduler: "BatchScheduler | None" = None
    grpc_socket_path: str | None = None

    @property
    def rest_url(self) -> str:
        return f"http://{self._client_host()}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self._client_host()}:{self.grpc_port}"

    @property
    def last_config_error(self) -> str | None:
        """Why the latest config file change was rejected (None when it was applied)."""
        return self._poller.last_config_error

    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else ("[::1]" if self.host == "::" else self.host)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._poller.stop()
        if self._rest is not None:
            self._rest.stop()
        self._grpc.stop()
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._scheduler is not None:
            self._scheduler.stop()
        self.manager.close()

    def __enter__(self) -> "ModelServerHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_model_server(
    *,
    port: int | None = DEFAULT_GRPC_PORT,
    rest_api_port: int | None = DEFAULT_REST_PORT,
    host: str = "127.0.0.1",
    model_name: str | None = None,
    model_base_path: str | Path | None = None,
    model_config_file: str | Path | None = None,
    model_config_file_poll_wait_seconds: float = 0.0,
    file_system_poll_wait_seconds: float = 1.0,
    monitoring_config_file: str | Path | None = None,
    allow_version_labels_for_unavailable_models: bool = False,
    enable_signature_method_name_check: bool = False,
    rest_api_num_threads: int = 0,
    grpc_max_threads: int = 0,
    tensorflow_intra_op_parallelism: int = 0,
    tensorflow_inter_op_parallelism: int = 0,
    rest_api_max_body_bytes: int | None = None,
    enable_batching: bool = False,
    batching_parameters_file: str | Path | None = None,
    grpc_socket_path: str | Path | None = None,
    grpc_channel_arguments: str = "",
    rest_api_timeout_in_ms: int = 0,
) -> ModelServerHandle:
    """Loads the models, then serves gRPC on `port` and REST on `rest_api_port` (0 = a free port,
    None = not at all; gRPC needs a port or `grpc_socket_path`).

    Returns once every version found at start-up has been loaded (or has failed and is reported).
    Raises StartupError for unusable flags, and the config's own DataError / ServingError.
    `rest_api_timeout_in_ms` <= 0 (the default here, unlike the command line's 30000) sets no limit.
    """
    if model_config_file and model_base_path:
        raise StartupError("give either --model_config_file or --model_base_path, not both")
    if not model_config_file and not model_base_path:
        raise StartupError("nothing to serve: give --model_config_file or --model_name with --model_base_path")
    if port is None and not grpc_socket_path:
        raise StartupError(NO_GRPC_LISTENER)
    channel_arguments = parse_grpc_channel_arguments(grpc_channel_arguments)
    _configure_tensorflow_threads(tensorflow_intra_op_parallelism, tensorflow_inter_op_parallelism)

    from serving.model_server.grpc_api import GrpcServer
    from serving.model_server.manager import ModelManager
    from serving.model_server.rest_api import DEFAULT_MAX_BODY_BYTES, RestApiHandler, RestServer

    scheduler = None
    if enable_batching:
        from serving.model_server.batching import BatchScheduler, read_batching_parameters

        try:
            options = read_batching_parameters(Path(batching_parameters_file) if batching_parameters_file else None)
        except DataError as err:
            raise StartupError(str(err)) from None
        scheduler = BatchScheduler(options)
    metrics = ServingMetrics()
    manager = ModelManager(
        allow_version_labels_for_unavailable_models=allow_version_labels_for_unavailable_models,
        enable_signature_method_name_check=enable_signature_method_name_check,
        observer=metrics.record_runtime,
        scheduler=scheduler,
    )
    config_path = Path(model_config_file) if model_config_file else None
    digest = None
    if config_path is not None:
        digest = hashlib.sha256(config_path.read_bytes()).hexdigest() if config_path.is_file() else None
        config = _read_model_config(config_path)
    else:
        config = _single_model_config(model_name or "default", str(model_base_path))
    manager.reload_config(config, initial=True)
    metrics_path = read_monitoring_config(Path(monitoring_config_file)) if monitoring_config_file else None

    workers = rest_api_num_threads if rest_api_num_threads > 0 else 4 * (os.cpu_count() or 1)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rest-worker")
    grpc_server = GrpcServer(
        manager,
        host=host,
        port=port,
        max_workers=grpc_max_threads if grpc_max_threads > 0 else 4 * (os.cpu_count() or 1),
        metrics=metrics,
        socket_path=str(grpc_socket_path) if grpc_socket_path else None,
        channel_arguments=channel_arguments,
    )
    rest_server = None if rest_api_port is None else RestServer(
        RestApiHandler(manager, metrics),
        host=host,
        port=rest_api_port,
        executor=executor,
        max_body_bytes=rest_api_max_body_bytes or DEFAULT_MAX_BODY_BYTES,
        metrics_path=metrics_path,
        metrics_page=metrics.exposition,
        timeout_in_ms=rest_api_timeout_in_ms,
    )
    try:
        grpc_port = grpc_server.start()
        rest_port = rest_server.start() if rest_server is not None else 0
    except OSError as err:
        grpc_server.stop(0)
        if rest_server is not None:
            rest_server.stop()
        executor.shutdown(wait=False)
        manager.close()
        raise StartupError(f"cannot listen on {host}: {err}") from None
    poller = _Poller(
        manager,
        file_system_poll_wait_seconds=file_system_poll_wait_seconds,
        config_file=config_path,
        config_poll_wait_seconds=model_config_file_poll_wait_seconds,
        initial_config_digest=digest,
    )
    poller.start()
    return ModelServerHandle(
        rest_port=rest_port,
        grpc_port=grpc_port,
        host=host,
        manager=manager,
        metrics=metrics,
        _rest=rest_server,
        _grpc=grpc_server,
        _poller=poller,
        _executor=executor,
        _scheduler=scheduler,
        grpc_socket_path=str(grpc_socket_path) if grpc_socket_path else None,
    )


# --- Command line -----------------------------------------------------------------------------

# tensorflow_model_server's flags (model_servers/main.cc) that mean nothing to this server: accepted
# so that TF Serving's command lines (its own test harness's among them) start it, and logged once
# when given. Name -> (value type, what happens instead).
IGNORED_FLAGS: dict[str, tuple[str, str]] = {
    "rest_api_enable_cors_support": ("bool", "no CORS headers are added"),
    "enable_per_model_batching_parameters": ("bool", "batching_params.pbtxt in a SavedModel is not read"),
    "num_load_threads": ("int", "versions are loaded by the manager's own thread"),
    "num_unload_threads": ("int", "versions are unloaded by the manager's own thread"),
    "max_num_load_retries": ("int", "a version that fails to load is reported in the model status"),
    "load_retry_interval_micros": ("int", "a version that fails to load is reported in the model status"),
    "flush_filesystem_caches": ("bool", "there are no file-system caches to flush"),
    "tensorflow_session_parallelism": ("int", "use --tensorflow_intra_op_parallelism and --tensorflow_inter_op_parallelism"),
    "tensorflow_session_config_file": ("str", "TensorFlow's default session options apply"),
    "platform_config_file": ("str", "only the tensorflow platform is served"),
    "per_process_gpu_memory_fraction": ("float", "TensorFlow's default GPU memory growth applies"),
    "saved_model_tags": ("str", "SavedModels are loaded with the 'serve' tag"),
    "enable_model_warmup": ("bool", "warm-up requests (assets.extra/tf_serving_warmup_requests) are not replayed"),
    "num_request_iterations_for_warmup": ("int", "warm-up requests are not replayed"),
    "remove_unused_fields_from_bundle_metagraph": ("bool", "the MetaGraphDef is not kept in memory"),
    "prefer_tflite_model": ("bool", "TF Lite models are not served by this stand-in"),
    "num_tflite_pools": ("int", "TF Lite models are not served by this stand-in"),
    "num_tflite_interpreters_per_pool": ("int", "TF Lite models are not served by this stand-in"),
    "xla_cpu_compilation_enabled": ("bool", "TensorFlow's own XLA settings apply"),
    "xla_gpu_compilation_enabled": ("bool", "TensorFlow's own XLA settings apply"),
    "enable_profiler": ("bool", "there is no profiler service"),
    "thread_pool_factory_config_file": ("str", "requests run on the server's own thread pools"),
    "mixed_precision": ("str", "models run in the precision they were saved in"),
    "skip_initialize_tpu": ("bool", "there is no TPU support"),
    "enable_grpc_healthcheck_service": ("bool", "there is no grpc.health.v1 service; ModelService.GetModelStatus answers instead"),
    "enable_serialization_as_tensor_content": ("bool", "output tensors are written in the typed *_val fields"),
}
# Serving plaintext where TF Serving would serve TLS or ALTS would be worse than not starting.
REFUSED_FLAGS: dict[str, tuple[str, str]] = {
    "ssl_config_file": ("str", "TLS is not supported by this stand-in"),
    "use_alts_credentials": ("bool", "ALTS is not supported by this stand-in"),
}
_INT32 = (-(2**31), 2**31 - 1)


def parse_grpc_channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """--grpc_channel_arguments "k=v,k=v" as TF Serving's server.cc reads it: a value that is a 32-bit
    integer is passed as an integer, any other as a string (gRPC ignores keys it does not know)."""
    arguments: list[tuple[str, int | str]] = []
    for item in text.split(",") if text else ():
        if not item:
            continue
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise StartupError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        value = value.split("=", 1)[0]  # TF Serving keeps what is between the first and second '='
        number = value.strip()
        digits = number[1:] if number[:1] in "+-" else number
        is_int32 = digits.isascii() and digits.isdigit() and _INT32[0] <= int(number) <= _INT32[1]
        arguments.append((key, int(number) if is_int32 else value))
    return arguments


def _flag_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "t", "y"):
        return True
    if lowered in ("0", "false", "no", "f", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_FLAG_TYPES = {"int": int, "float": float, "str": str}


def _add_flag(parser: argparse.ArgumentParser, name: str, kind: str, default: object, help_text: str) -> None:
    if kind == "bool":  # tensorflow::Flags: --flag, --flag=true, --flag=false
        parser.add_argument(f"--{name}", type=_flag_bool, nargs="?", const=True, default=default, help=help_text)
    else:
        parser.add_argument(f"--{name}", type=_FLAG_TYPES[kind], default=default, help=help_text)


class FlagValueError(Exception):
    """A flag's value is not of its type (tensorflow::Flags::Parse returns false)."""


class _FlagParser(argparse.ArgumentParser):
    """argparse that reports a bad flag value to `main` instead of exiting with argparse's status 2."""

    def error(self, message: str) -> NoReturn:
        raise FlagValueError(message)


def build_arg_parser() -> argparse.ArgumentParser:
    parser = _FlagParser(
        prog="python -m serving.model_server",
        description="TF Serving's REST and gRPC APIs over a model base path (a tensorflow_model_server stand-in).",
        allow_abbrev=False,  # tensorflow::Flags knows no abbreviations
        add_help=False,  # --help is tensorflow::Flags': the usage, then exit status 255
    )
    add = parser.add_argument
    add("--port", type=int, default=DEFAULT_GRPC_PORT,
        help="gRPC port (0: no TCP port, then --grpc_socket_path is needed)")
    add("--grpc_socket_path", default="", help="also serve gRPC on this UNIX socket (a path)")
    add("--rest_api_port", type=int, default=0, help="REST port (0, the default: REST is not served)")
    add("--rest_api_timeout_in_ms", type=int, default=DEFAULT_REST_TIMEOUT_MS,
        help="answer a REST call with 504 DEADLINE_EXCEEDED after this long (<= 0: no limit)")
    add("--grpc_channel_arguments", default="", help="comma-separated key=value gRPC server arguments")
    add("--host", default="0.0.0.0", help="address to listen on (TF Serving listens on all interfaces)")
    add("--model_name", default="default", help="name of the single model served from --model_base_path")
    add("--model_base_path", default=None, help="directory holding the model's integer version directories")
    add("--model_config_file", default=None, help="a ModelServerConfig text proto (models.config)")
    add("--model_config_file_poll_wait_seconds", type=float, default=0.0, help="re-read the config file this often (0: never)")
    add("--file_system_poll_wait_seconds", type=float, default=1.0, help="re-scan the base paths this often")
    add("--monitoring_config_file", default=None, help="a MonitoringConfig text proto enabling Prometheus metrics")
    _add_flag(parser, "allow_version_labels_for_unavailable_models", "bool", False,
              "let a new label point at a version that is not loaded")
    _add_flag(parser, "enable_signature_method_name_check", "bool", False,
              "refuse Classify/Regress/MultiInference on a signature of another method_name (off: TF2 exports serve them)")
    add("--rest_api_num_threads", type=int, default=0, help="REST worker threads (0: 4 per CPU)")
    add("--grpc_max_threads", type=int, default=0, help="gRPC worker threads (0: 4 per CPU)")
    add("--tensorflow_intra_op_parallelism", type=int, default=0, help="threads inside one op (0: TensorFlow decides)")
    add("--tensorflow_inter_op_parallelism", type=int, default=0, help="ops run in parallel (0: TensorFlow decides)")
    add("--rest_api_max_body_bytes", type=int, default=None, help="largest REST request body accepted")
    _add_flag(parser, "enable_batching", "bool", False, "run concurrent Predict calls on one signature as one model call")
    add("--batching_parameters_file", default=None, help="a BatchingParameters text proto (with --enable_batching)")
    _add_flag(parser, "version", "bool", False, "print the versions and exit")
    for name, (kind, reason) in IGNORED_FLAGS.items():
        _add_flag(parser, name, kind, None, f"accepted and ignored: {reason}")
    for name, (kind, reason) in REFUSED_FLAGS.items():
        _add_flag(parser, name, kind, None, f"refused when set: {reason}")
    return parser


def _check_unsupported_flags(args: argparse.Namespace) -> None:
    """Logs each ignored flag given; StartupError for a security flag that cannot be honoured."""
    for name, (_kind, reason) in REFUSED_FLAGS.items():
        if getattr(args, name):
            raise StartupError(f"--{name} is not supported: {reason}")
    for name, (kind, reason) in IGNORED_FLAGS.items():
        value = getattr(args, name)
        if value is None:
            continue
        shown = str(value).lower() if kind == "bool" else value
        level = logging.INFO if value is False or value == "" else logging.WARNING
        log.log(level, "--%s=%s accepted and ignored: %s", name, shown, reason)


def _versions() -> str:
    from importlib import metadata

    def version_of(distribution: str) -> str:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (
        f"TensorFlow ModelServer: mlops-suite stand-in (tensorflow-serving-api {version_of('tensorflow-serving-api')})\n"
        f"TensorFlow Library: {version_of('tensorflow')}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_arg_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
    except FlagValueError as err:
        print(err, file=sys.stderr, flush=True)
        print(parser.format_help(), end="", flush=True)
        return START_FAILURE_EXIT_STATUS
    if unknown[:1] == ["--help"]:
        print(parser.format_help(), end="", flush=True)
        return START_FAILURE_EXIT_STATUS
    if args.version:
        print(_versions(), flush=True)
        return 0
    if unknown:  # main.cc prints the first one with the usage, and starts anyway
        print(f"unknown argument: {unknown[0]}", flush=True)
        print(parser.format_help(), end="", flush=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        _check_unsupported_flags(args)
        handle = start_model_server(
            # A port of 0 is "do not listen" on tensorflow_model_server's command line.
            port=args.port or None,
            rest_api_port=args.rest_api_port or None,
            host=args.host,
            model_name=args.model_name,
            model_base_path=args.model_base_path,
            model_config_file=args.model_config_file,
            model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
            file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
            monitoring_config_file=args.monitoring_config_file,
            allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
            enable_signature_method_name_check=args.enable_signature_method_name_check,
            rest_api_num_threads=args.rest_api_num_threads,
            grpc_max_threads=args.grpc_max_threads,
            tensorflow_intra_op_parallelism=args.tensorflow_intra_op_parallelism,
            tensorflow_inter_op_parallelism=args.tensorflow_inter_op_parallelism,
            rest_api_max_body_bytes=args.rest_api_max_body_bytes,
            enable_batching=args.enable_batching,
            batching_parameters_file=args.batching_parameters_file,
            grpc_socket_path=args.grpc_socket_path or None,
            grpc_channel_arguments=args.grpc_channel_arguments,
            rest_api_timeout_in_ms=args.rest_api_timeout_in_ms,
        )
    except Exception as err:  # noqa: BLE001 - reported the way tensorflow_model_server does
        status = getattr(err, "status_string", None)
        print(f"Failed to start server. Error: {status() if callable(status) else err}", file=sys.stderr, flush=True)
        return START_FAILURE_EXIT_STATUS
    # TF Serving's own start-up lines: scripts wait for them and read the ports from them.
    if handle.grpc_port:
        print(f"Running gRPC ModelServer at {args.host}:{handle.grpc_port} ...", flush=True)
    if handle.grpc_socket_path:
        print(f"Running gRPC ModelServer at UNIX socket {handle.grpc_socket_path} ...", flush=True)
    if handle.rest_port:
        print(f"Exporting HTTP/REST API at:{args.host}:{handle.rest_port} ...", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        handle.stop()
    return 0
