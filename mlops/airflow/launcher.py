"""Starts and stops this checkout's Airflow: `python -m mlops.airflow standalone | start | stop | status`.

Airflow 3 lives in its own environment (`.venvs/airflow`, see /work/shared/STACK.md); this module
only spawns it, so it runs from the ML environment or any plain Python (stdlib and core only).
Everything Airflow needs is set in one place, `airflow_env()`: `AIRFLOW_HOME=<repo>/airflow_home`,
`dags/` as the DAGs folder, no example DAGs, the API on 127.0.0.1, the ML runtime's python for
the tasks (`MLOPS_ML_PYTHON`), the project config (`MLOPS_CONFIG`), the OpenLineage provider's namespace
and transport (`openlineage_env`). The admin login is the one Airflow's simple auth manager reads from
`$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated`, which `ensure_admin_password` writes
before the first start (so Airflow never prints it to a log).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping

from core import openlineage_transport
from core.atomic import write_text
from core.config import ConfigError, load_config
from mlops.airflow import celery_cluster

REPO_ROOT = Path(__file__).resolve().parents[2]

PORT_ENV = "MLOPS_AIRFLOW_PORT"
HOME_ENV = "MLOPS_AIRFLOW_HOME"  # overrides <repo>/airflow_home (tests use a temp folder)
ML_PYTHON_ENV = "MLOPS_ML_PYTHON"
CONFIG_ENV = "MLOPS_CONFIG"
DEFAULT_PORT = 8080
ADMIN_USER = "admin"
PASSWORD_FILE_NAME = "simple_auth_manager_passwords.json.generated"
# Seconds a process waits for SQLite's write lock before "database is locked" (Python's default is 5).
# Under load on two cores the scheduler, the triggerer, the API server and dozens of task workers
# share one SQLite file, and a 5 s wait ended the scheduler (and the triggerer) for good: `airflow
# standalone` does not restart them, so runs stayed "running" with nothing to move them. It stays
# under the workers' EXECUTION_API_TIMEOUT (30 s, below), so a worker's call is answered, not timed out.
SQLITE_BUSY_TIMEOUT_S = 25


class LauncherError(RuntimeError):
    """Airflow could not be started, reached or driven; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class AirflowLayout:
    """Where this checkout keeps Airflow's pieces."""

    root: Path = REPO_ROOT
    home_override: Path | None = None

    @classmethod
    def from_env(cls, root: Path = REPO_ROOT) -> "AirflowLayout":
        home = os.environ.get(HOME_ENV)
        return cls(root=root, home_override=Path(home).resolve() if home else None)

    @property
    def home(self) -> Path:
        return self.home_override or self.root / "airflow_home"

    @property
    def dags_folder(self) -> Path:
        return self.root / "dags"

    @property
    def airflow_bin(self) -> Path:
        return self.root / ".venvs" / "airflow" / "bin"

    @property
    def ml_python(self) -> Path:
        return self.root / ".venvs" / "ml" / "bin" / "python"

    @property
    def config_file(self) -> Path:
        return self.root / "mlops.toml"

    @property
    def pid_file(self) -> Path:
        return self.home / "standalone.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "standalone.log"

    @property
    def password_file(self) -> Path:
        return self.home / PASSWORD_FILE_NAME


def airflow_port(environ: Mapping[str, str] = os.environ) -> int:
    text = environ.get(PORT_ENV, str(DEFAULT_PORT))
    if not text.isdigit() or not 1024 <= int(text) <= 65535 - 714:
        raise LauncherError(f"{PORT_ENV} must be a TCP port number in 1024..{65535 - 714} "
                            f"(the log servers use port + 713 and + 714), got {text!r}")
    return int(text)


def airflow_env(layout: AirflowLayout, port: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every Airflow process this project starts.

    `airflow standalone` spawns `airflow scheduler` etc. by name, so the Airflow environment's
    bin/ goes first on PATH. MLOPS_* values already set (e.g. a test's temp config) are kept.
    """
    env = dict(os.environ if base is None else base)
    env.update({
        "AIRFLOW_HOME": str(layout.home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(layout.dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://localhost:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        # Two shared cores: the API server can take longer than the 5 s default to answer a worker.
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
        # The scheduler's and triggerer's log servers sit beside the API port (8080 -> Airflow's own
        # defaults 8793/8794), so a second Airflow on another port (a test) does not collide.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(port + 713),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(port + 714),
        ML_PYTHON_ENV: env.get(ML_PYTHON_ENV) or str(layout.ml_python),
        CONFIG_ENV: env.get(CONFIG_ENV) or str(layout.config_file),
        "PATH": f"{layout.airflow_bin}{os.pathsep}{env.get('PATH', '')}",
        "TF_USE_LEGACY_KERAS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    })
    # The DAGs are this project's: active from the start (monitoring hourly, rollout after each
    # push), unless the caller chose otherwise in Airflow's own variable.
    env.setdefault("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "False")
    if not env.get(celery_cluster.DATABASE_ENV) and "CeleryExecutor" not in env.get(celery_cluster.EXECUTOR_ENV, ""):
        # standalone's own database file, with a lock wait that outlasts a busy moment (see SQLITE_BUSY_TIMEOUT_S).
        env[celery_cluster.DATABASE_ENV] = f"sqlite:///{layout.home / 'airflow.db'}?timeout={SQLITE_BUSY_TIMEOUT_S}"
    env.update(openlineage_env(env))
    return env


_PROVIDER_TRANSPORT_SETTINGS = ("AIRFLOW__OPENLINEAGE__TRANSPORT", "AIRFLOW__OPENLINEAGE__CONFIG_PATH",
                                "AIRFLOW__OPENLINEAGE__CONFIG_CONN_ID", "AIRFLOW__OPENLINEAGE__DISABLED")


def openlineage_env(env: Mapping[str, str]) -> dict[str, str]:
    """Airflow's OpenLineage provider settings, so its task events join ours (metadata/openlineage_airflow.py).

    Namespace: ours (`mlops-suite`) unless one was chosen. Transport: OpenLineage's own configuration
    when there is one (`OPENLINEAGE_URL` ...: the provider and our steps read it alike) or the
    provider's was set; else the file our steps write by default (core/openlineage_transport.py),
    below the pipeline root of the project config. Without a readable config nothing is set and the
    provider stays disabled (it disables itself, silently, when no transport is configured).
    """
    settings: dict[str, str] = {}
    if not (env.get("AIRFLOW__OPENLINEAGE__NAMESPACE") or env.get("OPENLINEAGE_NAMESPACE")):
        settings["AIRFLOW__OPENLINEAGE__NAMESPACE"] = openlineage_transport.NAMESPACE
    if openlineage_transport.user_configured(env) or any(env.get(name) for name in _PROVIDER_TRANSPORT_SETTINGS):
        return settings
    try:
        config = load_config(env[CONFIG_ENV])
    except (ConfigError, OSError, KeyError):
        return settings  # `mlops doctor` and the task itself say what is wrong with the config
    transport = openlineage_transport.default_transport(config.pipeline_root)
    try:  # the file transport opens the file but makes no folder; a task may run before any step made it
        Path(transport["log_file_path"]).parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return settings
    settings["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps(transport)
    return settings


def base_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def health(port: int, timeout: float = 3.0) -> dict[str, Any] | None:
    """Airflow's /api/v2/monitor/health document, or None when nothing answers on the port."""
    try:
        with urllib.request.urlopen(f"{base_url(port)}/api/v2/monitor/health", timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def is_healthy(document: Mapping[str, Any] | None) -> bool:
    """All components report healthy (metadatabase, scheduler, triggerer, dag_processor)."""
    if not document:
        return False
    statuses = [part.get("status") for part in document.values() if isinstance(part, Mapping)]
    return bool(statuses) and all(status == "healthy" for status in statuses)


def admin_password(layout: AirflowLayout) -> str:
    path = layout.password_file
    try:
        passwords = json.loads(path.read_text())
    except FileNotFoundError:
        raise LauncherError(f"{path} does not exist yet: Airflow writes it on its first start "
                            "(`python -m mlops.airflow start`)") from None
    except ValueError as err:
        raise LauncherError(f"{path}: not valid JSON ({err})") from None
    if ADMIN_USER not in passwords:
        raise LauncherError(f"{path} has no password for user {ADMIN_USER!r} (users: {sorted(passwords)})")
    return str(passwords[ADMIN_USER])


def ensure_admin_password(layout: AirflowLayout) -> None:
    """Writes the admin's password into Airflow's generated-passwords file before Airflow first starts.

    Left to itself, Airflow's simple auth manager generates it and prints it to its output, which
    `start` keeps in standalone.log: a password in a log. When the file already names the user,
    Airflow reads it and prints nothing (scripts/secrets_grep.py checks a whole `make run`).
    Created 0600 and renamed into place, so it is never readable by others, not even half-written.
    """
    path = layout.password_file
    try:
        passwords = json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        passwords = {}
    except ValueError:
        return  # not ours to repair: admin_password() names the problem
    if ADMIN_USER in passwords:
        return
    passwords[ADMIN_USER] = secrets.token_urlsafe(12)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(json.dumps(passwords) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def login_banner(layout: AirflowLayout, port: int, show_password: bool | None = None) -> str:
    """Where to log in. The password itself only on a terminal (`show_password` None: whether stdout
    is one): output that is captured (a CI log, `make run > file`) gets the file's name instead."""
    if show_password is None:
        show_password = sys.stdout.isatty()
    try:
        password = admin_password(layout) if show_password else f"(the password is in {layout.password_file})"
    except LauncherError:
        password = f"(see {layout.password_file} once Airflow has started)"
    return (
        f"Airflow UI:  http://localhost:{port}\n"
        f"Log in as:   {ADMIN_USER} / {password}\n"
        f"             (the password is generated on the first start and kept in {layout.password_file})\n"
        f"DAGs folder: {layout.dags_folder}\n"
        f"Logs:        {layout.home / 'logs'}"
    )


def _check_installed(layout: AirflowLayout) -> None:
    if not (layout.airflow_bin / "airflow").exists():
        raise LauncherError(f"{layout.airflow_bin / 'airflow'} not found: build the Airflow environment with `make setup`")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_process_groups(layout: AirflowLayout) -> dict[str, int]:
    """part -> process group of what `start` started: `standalone` alone, or each part of a Celery
    cluster (the pid file has one `<part> <process group>` line each, see celery_cluster)."""
    try:
        text = layout.pid_file.read_text()
    except FileNotFoundError:
        return {}
    groups: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 1 and fields[0].isdigit():
            groups["standalone"] = int(fields[0])
        elif len(fields) == 2 and fields[1].isdigit():
            groups[fields[0]] = int(fields[1])
    return groups


def _read_pid(layout: AirflowLayout) -> int | None:
    """The first part's process group (standalone's, or the Celery cluster's API server's)."""
    groups = read_process_groups(layout)
    return next(iter(groups.values()), None)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


def wait_until_healthy(port: int, timeout: float, process_alive: Callable[[], bool] = lambda: True,
                       progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Polls the health endpoint; fails early when the process we started has died."""
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while time.monotonic() < deadline:
        document = health(port)
        if is_healthy(document):
            return document or {}
        if not process_alive():
            raise LauncherError("Airflow exited before it became healthy")
        if time.monotonic() - last_report > 20:
            state = ", ".join(f"{k}={v.get('status')}" for k, v in (document or {}).items() if isinstance(v, Mapping))
            progress(f"  waiting for Airflow on port {port} ({state or 'not answering yet'}) ...")
            last_report = time.monotonic()
        time.sleep(2)
    raise LauncherError(f"Airflow did not become healthy on port {port} within {timeout:.0f}s")


def start(layout: AirflowLayout, port: int, timeout: float = 600.0, progress: Callable[[str], None] = print) -> bool:
    """Starts `airflow standalone` in the background unless a healthy Airflow answers on `port`.

    Returns True when it started one, False when it reused a running one. The process gets its
    own session (process group), whose id goes into the pid file, so `stop` ends exactly it and
    its children.
    """
    if is_healthy(health(port)):
        progress(f"Airflow is already running on port {port}; reusing it.")
        return False
    _check_installed(layout)
    pid = _read_pid(layout)
    if pid is not None and _pid_alive(pid):
        progress(f"Airflow (pid {pid}) is starting; waiting for it ...")
        wait_until_healthy(port, timeout, lambda: _pid_alive(pid), progress)
        return False
    layout.home.mkdir(parents=True, exist_ok=True)
    ensure_admin_password(layout)
    if _executor() == "CeleryExecutor":
        return _start_celery(layout, port, timeout, progress)
    progress(f"Starting Airflow (AIRFLOW_HOME={layout.home}, port {port}); log: {layout.log_file}")
    with layout.log_file.open("ab") as log:
        process = subprocess.Popen(
            [str(layout.airflow_bin / "airflow"), "standalone"],
            env=airflow_env(layout, port), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=layout.root, start_new_session=True,
        )
    write_text(layout.pid_file, f"{process.pid}\n")
    try:
        wait_until_healthy(port, timeout, lambda: process.poll() is None, progress)
    except LauncherError as err:
        if process.poll() is None:
            stop(layout, progress=lambda _: None)
        raise LauncherError(f"{err}. Last lines of {layout.log_file}:\n{_log_tail(layout.log_file)}") from None
    progress("Airflow is up.")
    return True


def _executor() -> str:
    try:
        return celery_cluster.executor()
    except celery_cluster.CeleryConfigError as err:
        raise LauncherError(str(err)) from None


def _start_celery(layout: AirflowLayout, port: int, timeout: float, progress: Callable[[str], None]) -> bool:
    """Starts the CeleryExecutor's parts (see mlops.airflow.celery_cluster) and waits for health."""
    env = airflow_env(layout, port)
    try:
        workers = celery_cluster.check_celery_settings(env, port)
        progress(f"Starting Airflow with the CeleryExecutor and {workers} workers (AIRFLOW_HOME={layout.home}, "
                 f"port {port}); logs: {layout.home}/<part>.log")
        groups = celery_cluster.start_parts(layout.airflow_bin / "airflow", layout.root, layout.home, env, port, workers)
    except celery_cluster.CeleryConfigError as err:
        raise LauncherError(str(err)) from None
    write_text(layout.pid_file, "".join(f"{part} {group}\n" for part, group in groups.items()))
    try:
        wait_until_healthy(port, timeout, lambda: all(_group_alive(group) for group in groups.values()), progress)
    except LauncherError as err:
        stop(layout, progress=lambda _: None)
        logs = "\n".join(f"--- {part}.log\n{_log_tail(layout.home / f'{part}.log', 15)}" for part in groups)
        raise LauncherError(f"{err}. Last lines of each part's log:\n{logs}") from None
    progress("Airflow is up (CeleryExecutor).")
    return True


def stop(layout: AirflowLayout, timeout: float = 90.0, progress: Callable[[str], None] = print) -> bool:
    """Stops the Airflow this launcher started (the process groups in the pid file), then the task
    processes it left behind. True if it was running."""
    if not any(_pid_alive(group) for group in read_process_groups(layout).values()):
        layout.pid_file.unlink(missing_ok=True)
        progress("No Airflow started by this launcher is running.")
        stop_leftover_tasks(layout, progress=progress)
        return False
    groups = read_process_groups(layout)
    progress(f"Stopping Airflow (process groups {', '.join(f'{part} {group}' for part, group in groups.items())}) ...")
    for group in groups.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_group_alive(group) for group in groups.values()):
        time.sleep(1)
    for part, group in groups.items():
        if _group_alive(group):
            progress(f"  {part} still running after {timeout:.0f}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(group, os.WNOHANG)
    layout.pid_file.unlink(missing_ok=True)
    stop_leftover_tasks(layout, progress=progress)
    progress("Airflow stopped.")
    return True


def stop_leftover_tasks(layout: AirflowLayout, timeout: float = 15.0, progress: Callable[[str], None] = print) -> int:
    """Ends the task processes still running with this layout's AIRFLOW_HOME: Airflow starts each
    task (and its ML process) in a process group of its own, so stopping the scheduler's group
    leaves a running task behind. Returns how many processes it ended."""
    own_group = os.getpgid(0)
    leftovers = {pid: group for pid, group in _processes_with_home(layout.home).items() if group != own_group}
    if not leftovers:
        return 0
    progress(f"  ending {len(leftovers)} task processes Airflow left running (process groups "
             f"{', '.join(str(g) for g in sorted(set(leftovers.values())))})")
    for group in set(leftovers.values()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_running(pid) for pid in leftovers):
        time.sleep(0.5)
    for group in {group for pid, group in leftovers.items() if _running(pid)}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    return len(leftovers)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an ended child its parent has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _processes_with_home(home: Path) -> dict[int, int]:
    """pid -> process group of the processes (Linux /proc, this user's) whose environment has
    AIRFLOW_HOME=`home`; this process and its ancestors excepted."""
    marker = b"AIRFLOW_HOME=" + os.fsencode(str(home))
    ours, pid = set(), os.getpid()
    while pid > 1 and pid not in ours:
        ours.add(pid)
        try:  # the parent pid is the 2nd field after the command name, which may hold spaces
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = os.getpgid(int(entry.name))
        except (OSError, ProcessLookupError):
            continue  # gone, or not ours to read
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader keeps the group "alive" for killpg; reap it if it is our child.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    return True


def standalone(layout: AirflowLayout, port: int) -> int:
    """Runs `airflow standalone` in the foreground; prints the login once the UI answers."""
    if is_healthy(health(port)):
        print(f"Airflow is already running on port {port}.\n{login_banner(layout, port)}")
        return 0
    _check_installed(layout)
    if _executor() == "CeleryExecutor":
        raise LauncherError("`airflow standalone` runs the LocalExecutor only: start the CeleryExecutor's parts "
                            "with `python -m mlops.airflow start` (and stop them with `stop`)")
    layout.home.mkdir(parents=True, exist_ok=True)
    ensure_admin_password(layout)
    process = subprocess.Popen([str(layout.airflow_bin / "airflow"), "standalone"], env=airflow_env(layout, port),
                               cwd=layout.root)
    try:
        wait_until_healthy(port, 900, lambda: process.poll() is None, progress=lambda _: None)
        print(f"\n{'=' * 72}\n{login_banner(layout, port)}\nStop with Ctrl-C.\n{'=' * 72}\n", flush=True)
        return process.wait()
    except LauncherError as err:
        print(f"error: {err}", file=sys.stderr)
        return process.wait() if process.poll() is not None else 1
    except KeyboardInterrupt:
        # The terminal sent SIGINT to the whole foreground group; let standalone shut its parts down.
        return process.wait()
