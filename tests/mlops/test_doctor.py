"""`mlops doctor` on real set-ups: a healthy checkout in a temp directory, then one broken thing at
a time (a missing venv, a lock file newer than its install, an unreachable metadata server, a port
held by another program, a models.config naming a version that is not on disk, too little disk on
a real 1 MB tmpfs, an unreachable lineage service, a stopped Airflow).

Nothing is faked: the venvs are links to this checkout's, the stores, servers, sockets and file
systems are real. A real Airflow runs in one slow test only; the other whole-command runs use
`--skip airflow` or expect its miss.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from core.config import Config, MetadataConfig, config_from_dict
from mlops import doctor
from mlops.cli import build_parser
from tests.conftest import PROJECT_ROOT
from tests.fixtures.redis import running_redis
from tests.fixtures.servers import free_port


def _checkout(root: Path) -> Path:
    """A checkout whose venvs are this one's, installed after their lock files were written."""
    (root / "requirements").mkdir(parents=True)
    for lock in ("ml.lock", "airflow.lock"):
        shutil.copy(PROJECT_ROOT / "requirements" / lock, root / "requirements" / lock)
    shutil.copy(PROJECT_ROOT / "setup.py", root / "setup.py")
    for name in ("ml", "airflow"):
        venv = root / ".venvs" / name
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "python").symlink_to(PROJECT_ROOT / ".venvs" / name / "bin" / "python")
        (venv / doctor.INSTALL_MARKER).touch()
        marker_time = (venv / doctor.INSTALL_MARKER).stat().st_mtime
        for lock in ("requirements/ml.lock", "requirements/airflow.lock", "setup.py"):
            os.utime(root / lock, (marker_time - 60, marker_time - 60))
    return root


def _config(root: Path, **metadata) -> Config:
    return config_from_dict({
        "pipeline_root": "var/pipeline",
        "serving": {"model_base_dir": "var/serving/models", "model_config_file": "var/serving/models.config",
                    "rest_port": free_port(), "grpc_port": free_port()},
        "metadata": metadata or {"sqlite_path": "var/mlmd/metadata.sqlite"},
    }, root)


def _setup(root: Path, config: Config, **changes) -> doctor.Setup:
    values = dict(root=root, config=config, airflow_port=free_port(), airflow_home=root / "airflow_home",
                  gateway_rest_port=free_port(), gateway_grpc_port=free_port(), log_dir=root / "var/logs/predictions",
                  min_free_mb=1)
    values.update(changes)
    return doctor.Setup(**values)


def _by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {check.name: check for check in checks}


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    return _checkout(tmp_path / "checkout")


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port some other program listens on (a plain socket that speaks no HTTP)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_a_fresh_checkout_passes_all_but_airflow_and_says_what_the_first_run_creates(checkout):
    checks = doctor.run_checks(_setup(checkout, _config(checkout)), skip=["airflow"])
    assert [c.status for c in checks if c.status == doctor.FAIL] == [], doctor.format_report(checks)
    found = _by_name(checks)
    assert found["ML runtime (.venvs/ml)"].status == doctor.OK
    assert found["Airflow environment (.venvs/airflow)"].status == doctor.OK
    assert found["ML Metadata store"].status == doctor.WARN and "does not exist yet" in found["ML Metadata store"].detail
    assert found["models.config"].status == doctor.WARN
    assert {found[f"free disk: {name}"].status for name in ("pipeline root", "prediction logs", "Airflow logs")} == {doctor.OK}
    assert "Airflow" not in found


def test_a_missing_venv_and_a_lock_newer_than_its_install_are_misses_with_make_setup(checkout):
    shutil.rmtree(checkout / ".venvs" / "airflow")
    marker = checkout / ".venvs" / "ml" / doctor.INSTALL_MARKER
    later = marker.stat().st_mtime + 60
    os.utime(checkout / "requirements" / "ml.lock", (later, later))
    found = _by_name(doctor.run_checks(_setup(checkout, _config(checkout)), skip=["airflow", "ports"]))
    ml, airflow = found["ML runtime (.venvs/ml)"], found["Airflow environment (.venvs/airflow)"]
    assert ml.status == doctor.FAIL and "requirements/ml.lock" in ml.detail and "setup.py" not in ml.detail
    assert airflow.status == doctor.FAIL and "does not exist" in airflow.detail
    assert "make setup" in ml.fix and "make setup" in airflow.fix


def test_an_existing_store_opens_and_counts_its_runs(checkout):
    from metadata.store import connect

    config = _config(checkout)
    connect(config.metadata)  # creates it, as the first pipeline run does
    [check] = doctor.check_metadata(config)
    assert (check.status, check.detail) == (doctor.OK, f"sqlite:{config.metadata.sqlite_path} opens; 0 pipeline runs recorded")


def test_an_unreachable_postgresql_server_is_named_with_what_to_fix(checkout):
    config = _config(checkout, backend="postgresql", host="127.0.0.1", port=free_port(), user="mlops", database="mlmd")
    [check] = doctor.check_metadata(config)
    assert (check.name, check.status) == ("PostgreSQL server", doctor.FAIL)
    assert f"nothing answers on 127.0.0.1:{config.metadata.port}" == check.detail
    assert "[metadata] host and port" in check.fix


@pytest.mark.postgres
def test_a_real_postgresql_server_passes_and_a_wrong_password_does_not(checkout, postgres_metadata: MetadataConfig):
    values = {"backend": "postgresql", "host": postgres_metadata.host, "port": postgres_metadata.port,
              "user": postgres_metadata.user, "database": postgres_metadata.database}
    server, store = doctor.check_metadata(_config(checkout, **values, password=postgres_metadata.password))
    assert (server.status, store.status) == (doctor.OK, doctor.OK), (server, store)
    server, store = doctor.check_metadata(_config(checkout, **values, password="not-the-password"))
    assert (server.status, store.status) == (doctor.OK, doctor.FAIL)
    assert "password" in store.fix


def test_airflow_not_answering_is_a_miss_that_says_how_to_start_it(tmp_path):
    check = doctor.check_airflow(free_port(), tmp_path / "airflow_home")
    assert check.status == doctor.FAIL and "nothing answers on http://127.0.0.1:" in check.detail
    assert "make run" in check.fix and str(tmp_path / "airflow_home" / "standalone.log") in check.fix


def test_with_the_celery_executor_the_redis_broker_must_answer(held_port):
    celery = {"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"}
    assert doctor.check_celery_broker({}) == []  # the LocalExecutor needs no broker
    [unset] = doctor.check_celery_broker(celery)
    assert unset.status == doctor.FAIL and "AIRFLOW__CELERY__BROKER_URL must be a Redis URL" in unset.detail
    with running_redis() as url:
        [answering] = doctor.check_celery_broker({**celery, "AIRFLOW__CELERY__BROKER_URL": url})
    assert answering.status == doctor.OK and "answers PING" in answering.detail, answering
    [gone] = doctor.check_celery_broker({**celery, "AIRFLOW__CELERY__BROKER_URL": url})
    assert gone.status == doctor.FAIL and f"nothing answers on 127.0.0.1:{url.split(':')[2].split('/')[0]}" in gone.detail
    assert "redis-server" in gone.fix
    [other] = doctor.check_celery_broker({**celery, "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{held_port}/0"})
    assert other.status == doctor.FAIL, other


def test_a_port_held_by_another_program_is_a_miss_a_free_one_is_not(checkout, held_port):
    config = _config(checkout)
    found = _by_name(doctor.check_ports(_setup(checkout, config, gateway_rest_port=held_port)))
    assert found["gateway REST port"].status == doctor.FAIL
    assert found["gateway REST port"].detail == f"{held_port} is taken by another program, not the gateway"
    assert found["gateway gRPC port"].status == doctor.OK and found["gateway gRPC port"].detail.endswith("is free")
    assert found["model server REST port"].status == doctor.OK


def test_a_running_gateway_on_its_port_is_recognised(checkout, tmp_path):
    from serving.gateway.app import start_gateway
    from serving.gateway.config import GatewaySettings

    gateway = start_gateway(GatewaySettings(rest_port=0, grpc_port=0, model_config_file=None, log_dir=tmp_path / "logs",
                                            state_file=tmp_path / "state.json"))
    try:
        rest_port, grpc_port = int(gateway.url.rsplit(":", 1)[1]), int(gateway.grpc_target.rsplit(":", 1)[1])
        found = _by_name(doctor.check_ports(_setup(checkout, _config(checkout), gateway_rest_port=rest_port,
                                                   gateway_grpc_port=grpc_port)))
    finally:
        gateway.stop()
    assert found["gateway REST port"] == doctor.Check("gateway REST port", doctor.OK, f"{rest_port}: the gateway answers")
    assert found["gateway gRPC port"].status == doctor.OK


def test_models_config_naming_a_version_that_is_not_on_disk_is_a_miss(checkout):
    from serving import model_config

    config = _config(checkout)
    base = config.serving.model_base_dir / "taxi"
    (base / "1").mkdir(parents=True)

    def serve_version_1(parsed) -> None:
        model_config.ensure_model(parsed, "taxi", base)
        model_config.set_served_versions(parsed, "taxi", [1])

    model_config.update_model_config(config.serving.model_config_file, serve_version_1)
    [check] = doctor.check_models(config)
    assert (check.name, check.status) == ("model base path", doctor.FAIL)
    assert "versions [1]" in check.detail and "saved_model.pb" in check.detail
    config.serving.model_config_file.write_text("model_config_list { config { name: ")
    [check] = doctor.check_models(config)
    assert check.status == doctor.FAIL and "parsing" in check.detail.lower()


def test_a_pushed_model_passes_with_its_versions_and_labels(checkout):
    from serving.push import push_model
    from tests.fixtures.tiny_model import export_tiny_model

    config = _config(checkout)
    exported = export_tiny_model(checkout / "exported")
    push_model(exported, config.serving.model_base_dir, "taxi", config_file=config.serving.model_config_file)
    [check] = doctor.check_models(config)
    assert check == doctor.Check("models.config", doctor.OK,
                                 f"taxi: versions [1] in {config.serving.model_base_dir / 'taxi'} (stable=1)")


def test_less_free_disk_than_the_threshold_is_a_miss(tmp_path):
    free_mb = shutil.disk_usage(tmp_path).free // (1024 * 1024)
    assert doctor.check_disk("pipeline root", tmp_path / "not" / "yet", 1).status == doctor.OK
    check = doctor.check_disk("pipeline root", tmp_path / "not" / "yet", free_mb + 1024)
    assert check.status == doctor.FAIL and f"needs at least {free_mb + 1024} MB" in check.detail
    assert str(tmp_path) in check.detail


def _doctor(checkout: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    (checkout / "mlops.toml").write_text('[metadata]\nsqlite_path = "var/mlmd/metadata.sqlite"\n'
                                         f'[serving]\nrest_port = {free_port()}\ngrpc_port = {free_port()}\n')
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    environment.update(PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])), MLOPS_AIRFLOW_PORT=str(free_port()), MLOPS_AIRFLOW_HOME=str(checkout / "airflow_home"),
                       MLOPS_GATEWAY_REST_PORT=str(free_port()), MLOPS_GATEWAY_GRPC_PORT=str(free_port()))
    environment.update(env)
    return subprocess.run([sys.executable, "-m", "mlops.cli", "--config", str(checkout / "mlops.toml"), "doctor",
                           "--root", str(checkout), *args], cwd=checkout, env=environment, capture_output=True, text=True, timeout=120)


def test_the_command_exits_0_when_nothing_is_missing_and_1_with_json_naming_each_miss(checkout, held_port):
    healthy = _doctor(checkout, "--skip", "airflow", "--min-free-mb", "1")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert healthy.stdout.startswith("mlops doctor: ") and " 0 missing" in healthy.stdout.splitlines()[0]

    broken = _doctor(checkout, "--json", "--min-free-mb", "1", MLOPS_GATEWAY_REST_PORT=str(held_port))
    assert broken.returncode == 1, broken.stdout + broken.stderr
    report = json.loads(broken.stdout)
    failed = {check["name"]: check for check in report["checks"] if check["status"] == "fail"}
    assert report["ok"] is False and set(failed) == {"Airflow", "gateway REST port"}
    assert all(check["fix"] for check in failed.values())

    text = _doctor(checkout, "--min-free-mb", "1")
    assert text.returncode == 1 and "  FAIL  Airflow" in text.stdout and "-> `make run`" in text.stdout


def test_skip_takes_exactly_the_check_groups():
    parser = build_parser()
    doctor_parser = parser._subparsers._group_actions[0].choices["doctor"]  # noqa: SLF001 - argparse has no public getter
    [skip] = [action for action in doctor_parser._actions if action.dest == "skip"]  # noqa: SLF001
    assert tuple(skip.choices) == tuple(doctor.GROUPS)


@pytest.fixture
def openlineage_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """monkeypatch, plus removal of the OPENLINEAGE__* variables the client itself adds to
    os.environ when it reads OPENLINEAGE_URL (monkeypatch cannot know of them)."""
    before = set(os.environ)
    yield monkeypatch
    for name in set(os.environ) - before:
        if name.startswith("OPENLINEAGE"):
            del os.environ[name]


def test_openlineage_events_go_to_the_file_by_default_and_an_unreachable_service_is_a_miss(checkout, openlineage_env, held_port):
    monkeypatch = openlineage_env
    for name in ("OPENLINEAGE_URL", "OPENLINEAGE_CONFIG", "OPENLINEAGE_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(checkout))
    monkeypatch.chdir(checkout)
    config = _config(checkout)
    check = doctor.check_openlineage(config)
    assert (check.status, check.detail) == (doctor.OK, f"events go to {config.pipeline_root / 'openlineage/events.jsonl'} (the default)")
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("OPENLINEAGE_URL", closed)
    check = doctor.check_openlineage(config)
    assert (check.status, check.detail) == (doctor.FAIL, f"nothing answers on {closed} (the lineage service)")
    assert "OPENLINEAGE_URL" in check.fix
    monkeypatch.setenv("OPENLINEAGE_URL", f"http://127.0.0.1:{held_port}")
    assert doctor.check_openlineage(config).status == doctor.OK


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True).returncode == 0


def test_a_pipeline_root_on_a_tiny_file_system_is_a_miss(checkout, tmp_path):
    """A real 1 MB tmpfs, mounted in a private mount namespace (`unshare -m`) so nobody else sees it."""
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("mounting a tmpfs needs root and unshare (util-linux)")
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    (checkout / "mlops.toml").write_text(f'pipeline_root = "{tiny / "pipeline"}"\n')
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    doctor_command = [sys.executable, "-m", "mlops.cli", "--config", str(checkout / "mlops.toml"), "doctor", "--root", str(checkout),
                      "--json", "--min-free-mb", "100", "--skip", "airflow", "--skip", "ports"]
    done = subprocess.run(["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"', str(tiny), *doctor_command],
                          cwd=checkout, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    found = {check["name"]: check for check in json.loads(done.stdout)["checks"]}
    pipeline = found["free disk: pipeline root"]
    assert pipeline["status"] == "fail" and f"on the file system of {tiny}; needs at least 100 MB" in pipeline["detail"]
    assert found["free disk: prediction logs"]["status"] == "ok"


@pytest.mark.slow
def test_a_running_airflow_passes_and_a_stopped_one_is_a_miss(tmp_path):
    """A real `airflow standalone` (the launcher's, in a temp home on free ports), then stopped."""
    from tests.dags.test_airflow_live import free_port as airflow_port

    home, port = tmp_path / "airflow_home", airflow_port()
    (tmp_path / "mlops.toml").write_text('pipeline_root = "pipeline"\n')
    env = {**os.environ, "MLOPS_CONFIG": str(tmp_path / "mlops.toml"), "MLOPS_AIRFLOW_HOME": str(home),
           "MLOPS_AIRFLOW_PORT": str(port), "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True"}

    def launcher(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mlops.airflow", *args], cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True, timeout=1200)

    started = launcher("start", "--timeout", "1100")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        running = doctor.check_airflow(port, home)
    finally:
        stopped = launcher("stop")
    assert running == doctor.Check("Airflow", doctor.OK, f"http://127.0.0.1:{port}/api/v2/monitor/health: every component healthy")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    after = doctor.check_airflow(port, home)
    assert after.status == doctor.FAIL and str(home / "standalone.log") in after.fix


def test_a_sqlite_file_that_is_not_a_store_is_a_miss(checkout):
    config = _config(checkout)
    config.metadata.sqlite_path.parent.mkdir(parents=True)
    config.metadata.sqlite_path.write_text("not a database, " * 100)
    [check] = doctor.check_metadata(config)
    assert check.status == doctor.FAIL and check.detail.startswith(f"sqlite:{config.metadata.sqlite_path}: ")
    assert "move it away" in check.fix
