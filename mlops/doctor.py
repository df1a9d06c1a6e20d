"""`mlops doctor`: what a first run needs on this machine, checked, with what to do for each miss.

Checks, in the order a first run meets them: the two virtual environments (present, installed by
the Makefile, not older than their lock files), the ML Metadata store (its server first when one
is configured), Airflow's health endpoint (and, with the CeleryExecutor, its Redis broker), the model server's and the gateway's ports (ours
answering, or free for `make run`; anything else there is a miss), the model base path and
`models.config`, where OpenLineage events go (and whether a configured lineage service answers),
and free disk where the pipeline, the prediction log and Airflow write.

Each check ends `ok`, `warn` (nothing is wrong, but a first run still has to create it) or `fail`
(a first run would stop here); the exit code is 1 when any check failed. Nothing is changed on
disk, except that MLMD registers the project's types on a store it can open, as every command does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Callable, Iterable

import requests

from core.config import Config
from mlops.airflow import celery_cluster, launcher

OK, WARN, FAIL = "ok", "warn", "fail"
DEFAULT_MIN_FREE_MB = 2048
REPO_ROOT = Path(__file__).resolve().parent.parent
_PROBE_SECONDS = 3.0
# The Makefile's environments: directory, the lock files whose change triggers a rebuild, install marker.
ENVIRONMENTS = (
    ("ML runtime", ".venvs/ml", ("requirements/ml.lock", "setup.py")),
    ("Airflow environment", ".venvs/airflow", ("requirements/airflow.lock",)),
)
INSTALL_MARKER = ".installed"


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str  # what was found
    fix: str = ""  # what to do about it (empty when ok)

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Setup:
    """Where to look: the checkout (for .venvs and lock files), the config, the ports."""

    root: Path
    config: Config
    airflow_port: int
    airflow_home: Path
    gateway_rest_port: int
    gateway_grpc_port: int
    log_dir: Path
    min_free_mb: int = DEFAULT_MIN_FREE_MB


def check_environment(root: Path, label: str, relative: str, locks: Iterable[str]) -> Check:
    name = f"{label} ({relative})"
    venv = root / relative
    python = venv / "bin" / "python"
    if not python.exists():
        return Check(name, FAIL, f"{python} does not exist", "`make setup` (or `make run`) builds it from the lock file")
    marker = venv / INSTALL_MARKER
    if not marker.exists():
        return Check(name, FAIL, f"{venv} exists but was never completely installed ({marker.name} is missing)",
                     "`make setup` installs it again")
    newer = [lock for lock in locks if (root / lock).exists() and (root / lock).stat().st_mtime > marker.stat().st_mtime]
    if newer:
        return Check(name, FAIL, f"{', '.join(newer)} changed after the install (newer than {marker.name})",
                     "`make setup` brings the environment up to date")
    return Check(name, OK, f"installed from {', '.join(locks)}")


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=_PROBE_SECONDS):
            return True
    except OSError:
        return False


def check_metadata(config: Config) -> list[Check]:
    from metadata.store import connect, describe

    settings = config.metadata
    where = describe(settings)
    checks = []
    if settings.backend == "sqlite":
        path = Path(settings.sqlite_path)
        if not path.exists():
            parent = _existing_ancestor(path.parent)
            if not os.access(parent, os.W_OK):
                return [Check("ML Metadata store", FAIL, f"{path} cannot be created: {parent} is not writable",
                              f"make {parent} writable, or point [metadata] sqlite_path elsewhere")]
            return [Check("ML Metadata store", WARN, f"{path} does not exist yet", "the first pipeline run creates it")]
    else:
        server = "PostgreSQL" if settings.backend == "postgresql" else "MySQL"
        if not _tcp_open(settings.host, settings.port):
            return [Check(f"{server} server", FAIL, f"nothing answers on {settings.host}:{settings.port}",
                          f"start {server}, or fix [metadata] host and port in the config")]
        checks.append(Check(f"{server} server", OK, f"{settings.host}:{settings.port} accepts connections"))
    try:
        store = connect(settings)
    except Exception as err:  # noqa: BLE001 - any failure to open the store is the finding
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        fix = ("the file is not an ML Metadata store MLMD can open: move it away (a new one is created)"
               if settings.backend == "sqlite" else
               "check [metadata] user, password and database, and that the user may create tables")
        return [*checks, Check("ML Metadata store", FAIL, f"{where}: {message}", fix)]
    runs = len(store.get_contexts_by_type("PipelineRun"))
    return [*checks, Check("ML Metadata store", OK, f"{where} opens; {runs} pipeline runs recorded")]


def check_airflow(port: int, home: Path) -> Check:
    document = launcher.health(port, timeout=_PROBE_SECONDS)
    url = f"{launcher.base_url(port)}/api/v2/monitor/health"
    if document is None:
        return Check("Airflow", FAIL, f"nothing answers on {url}",
                     f"`make run` (or `make airflow`) starts it; its log is {home / 'standalone.log'}")
    if not launcher.is_healthy(document):
        sick = sorted(key for key, value in document.items() if isinstance(value, dict) and value.get("status") != "healthy")
        return Check("Airflow", FAIL, f"{url} reports unhealthy: {', '.join(sick) or json.dumps(document)[:200]}",
                     f"see {home / 'standalone.log'}; `make stop` then `make run` restarts it")
    return Check("Airflow", OK, f"{url}: every component healthy")


def _redis_answers_ping(host: str, port: int) -> str | None:
    """Redis's reply to PING (`+PONG`, or `-NOAUTH ...` when it wants a password), None when nothing answers."""
    try:
        with socket.create_connection((host, port), timeout=_PROBE_SECONDS) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(256).decode(errors="replace").strip() or None
    except OSError:
        return None


def check_celery_broker(environ: Any = os.environ) -> list[Check]:
    """With the CeleryExecutor (AIRFLOW__CORE__EXECUTOR), the Redis broker must answer; nothing to check otherwise."""
    try:
        if celery_cluster.executor(environ) != "CeleryExecutor":
            return []
        host, port = celery_cluster.redis_address(environ.get(celery_cluster.BROKER_ENV, ""))
    except celery_cluster.CeleryConfigError as err:
        return [Check("Celery broker (Redis)", FAIL, str(err), "see docs/DEPLOY.md, \"Celery workers\"")]
    reply = _redis_answers_ping(host, port)
    if reply is None:
        return [Check("Celery broker (Redis)", FAIL, f"nothing answers on {host}:{port}",
                      "start Redis (`redis-server`, or `docker compose --profile celery up redis`)")]
    if not (reply.startswith("+PONG") or reply.startswith("-NOAUTH")):
        return [Check("Celery broker (Redis)", FAIL, f"{host}:{port} is not Redis (PING got {reply[:60]!r})",
                      f"point {celery_cluster.BROKER_ENV} at the Redis server")]
    return [Check("Celery broker (Redis)", OK, f"{host}:{port} answers PING")]


def _json_from(url: str) -> Any:
    try:
        return requests.get(url, timeout=_PROBE_SECONDS).json()
    except (requests.RequestException, ValueError):
        return None


def _is_gateway(port: int) -> bool:
    document = _json_from(f"http://127.0.0.1:{port}/healthz")
    return isinstance(document, dict) and {"status", "models", "log_failure"} <= set(document)


def _is_model_server(port: int, model_name: str) -> bool:
    # TF Serving answers a model status, or for an unknown model its {"error": ...}.
    document = _json_from(f"http://127.0.0.1:{port}/v1/models/{model_name}")
    return isinstance(document, dict) and ("model_version_status" in document or "error" in document)


def _port_check(name: str, port: int, ours: Callable[[], bool], what: str, fix: str) -> Check:
    if port == 0:
        return Check(name, OK, "0: a free port is picked at start")
    if not _tcp_open("127.0.0.1", port):
        return Check(name, OK, f"{port} is free")
    if ours():
        return Check(name, OK, f"{port}: {what} answers")
    return Check(name, FAIL, f"{port} is taken by another program, not {what}", fix)


def check_ports(setup: Setup) -> list[Check]:
    serving = setup.config.serving
    model = lambda: _is_model_server(serving.rest_port, serving.model_name)  # noqa: E731
    gateway = lambda: _is_gateway(setup.gateway_rest_port)  # noqa: E731
    model_fix = "stop what holds it (`ss -ltnp` names it), or set [serving] rest_port / grpc_port in the config"
    gateway_fix = "stop what holds it (`ss -ltnp` names it), or set MLOPS_GATEWAY_REST_PORT / MLOPS_GATEWAY_GRPC_PORT"
    return [
        _port_check("model server REST port", serving.rest_port, model, "the model server", model_fix),
        # A gRPC port cannot be asked who it is cheaply: it is ours when its REST twin is.
        _port_check("model server gRPC port", serving.grpc_port, model, "the model server", model_fix),
        _port_check("gateway REST port", setup.gateway_rest_port, gateway, "the gateway", gateway_fix),
        _port_check("gateway gRPC port", setup.gateway_grpc_port, gateway, "the gateway", gateway_fix),
    ]


def check_models(config: Config) -> list[Check]:
    from serving import model_config

    serving = config.serving
    base = serving.model_base_dir / serving.model_name
    if not serving.model_config_file.exists():
        return [Check("models.config", WARN, f"{serving.model_config_file} does not exist yet",
                      "`make run` creates it; `mlops serve` needs it (a pushed model, e.g. `mlops pipeline run`)")]
    try:
        parsed = model_config.read_model_config(serving.model_config_file)
        model_config.validate_model_config(parsed, source=str(serving.model_config_file))
        served = model_config.served_versions(parsed, serving.model_name)
        labels = model_config.labels(parsed, serving.model_name)
    except model_config.ModelConfigError as err:
        return [Check("models.config", FAIL, str(err), "fix or remove the file; a push rewrites it")]
    missing = [v for v in served if not (base / str(v) / "saved_model.pb").exists()]
    if missing:
        return [Check("model base path", FAIL, f"versions {missing} are in models.config but have no {base}/<version>/saved_model.pb",
                      "push them again (`mlops push`), or remove them from models.config")]
    if not served:
        return [Check("models.config", WARN, f"{serving.model_config_file} lists no version of {serving.model_name} yet",
                      "the first pipeline run pushes one")]
    shown = ", ".join(f"{label}={version}" for label, version in sorted(labels.items())) or "no labels"
    return [Check("models.config", OK, f"{serving.model_name}: versions {served} in {base} ({shown})")]


def check_openlineage(config: Config) -> Check:
    """Where the steps' OpenLineage events go, and for a lineage service whether it answers."""
    from urllib.parse import urlsplit

    from openlineage.client import OpenLineageClient

    from metadata import openlineage

    if not openlineage.user_configured():
        return Check("OpenLineage", OK, f"events go to {config.pipeline_root / openlineage.DEFAULT_EVENTS_FILE} (the default)")
    try:
        transport = OpenLineageClient().transport
    except ValueError as err:  # the client's own words for a configuration it cannot use
        return Check("OpenLineage", FAIL, str(err), "fix OPENLINEAGE_URL / OPENLINEAGE__TRANSPORT__* / openlineage.yml")
    kind = type(transport).__name__
    url = getattr(transport, "url", None)
    if url is None:
        path = getattr(getattr(transport, "config", None), "log_file_path", None)
        return Check("OpenLineage", OK, f"events go to {path}" if path else f"events go to the {kind}")
    where = urlsplit(url)
    port = where.port or (443 if where.scheme == "https" else 80)
    if not _tcp_open(where.hostname or "localhost", port):
        return Check("OpenLineage", FAIL, f"nothing answers on {url} (the lineage service)",
                     "start the lineage service (e.g. Marquez), or unset OPENLINEAGE_URL to write events to a file")
    return Check("OpenLineage", OK, f"{url} accepts connections")


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_disk(name: str, path: Path, min_free_mb: int) -> Check:
    where = _existing_ancestor(path)
    free_mb = shutil.disk_usage(where).free // (1024 * 1024)
    detail = f"{free_mb} MB free on the file system of {where}"
    if free_mb < min_free_mb:
        return Check(f"free disk: {name}", FAIL, f"{detail}; needs at least {min_free_mb} MB",
                     f"free space there, or move it to a larger disk ({path})")
    if not os.access(where, os.W_OK):
        return Check(f"free disk: {name}", FAIL, f"{where} is not writable", f"make it writable, or move it ({path})")
    return Check(f"free disk: {name}", OK, detail)


def _disks(setup: Setup) -> list[Check]:
    return [check_disk(name, path, setup.min_free_mb) for name, path in (
        ("pipeline root", setup.config.pipeline_root), ("prediction logs", setup.log_dir), ("Airflow logs", setup.airflow_home / "logs"))]


# Groups of checks by the name `--skip` takes (a serving-only host skips airflow), in report order.
GROUPS: dict[str, Callable[[Setup], list[Check]]] = {
    "environments": lambda s: [check_environment(s.root, label, relative, locks) for label, relative, locks in ENVIRONMENTS],
    "metadata": lambda s: check_metadata(s.config),
    "airflow": lambda s: [check_airflow(s.airflow_port, s.airflow_home), *check_celery_broker()],
    "ports": check_ports,
    "models": lambda s: check_models(s.config),
    "openlineage": lambda s: [check_openlineage(s.config)],
    "disk": _disks,
}


def run_checks(setup: Setup, skip: Iterable[str] = ()) -> list[Check]:
    unknown = set(skip) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown check groups {sorted(unknown)}; known: {list(GROUPS)}")
    return [check for name, group in GROUPS.items() if name not in skip for check in group(setup)]


def format_report(checks: list[Check]) -> str:
    counts = {status: sum(c.status == status for c in checks) for status in (OK, WARN, FAIL)}
    lines = [f"mlops doctor: {counts[OK]} ok, {counts[WARN]} to be created by the first run, {counts[FAIL]} missing"]
    width = max(len(c.name) for c in checks)
    for check in checks:
        lines.append(f"  {check.status.upper():<4}  {check.name:<{width}}  {check.detail}")
        if check.fix and check.status != OK:
            lines.append(f"        {'':<{width}}  -> {check.fix}")
    return "\n".join(lines)


def setup_from(config: Config, root: Path, gateway_config: str | None, min_free_mb: int) -> Setup:
    from serving.gateway.config import load_gateway_settings

    gateway = load_gateway_settings(gateway_config)
    # `make run` starts `mlops serve` in the checkout, so a relative log directory is below it.
    log_dir = gateway.log_dir if gateway.log_dir.is_absolute() else root / gateway.log_dir
    return Setup(root=root, config=config, airflow_port=launcher.airflow_port(),
                 airflow_home=launcher.AirflowLayout.from_env(root).home, gateway_rest_port=gateway.rest_port,
                 gateway_grpc_port=gateway.grpc_port, log_dir=log_dir, min_free_mb=min_free_mb)
