"""The files the compose platform runs, exercised for real: init scripts, configs, healthchecks.

No Docker engine runs here, so each piece is run the way its container would run it: the
PostgreSQL init script against a real PostgreSQL server (then ML Metadata connects with the
platform's config), the volume set-up script with `sh` on a temporary folder, the healthcheck
commands against real HTTP servers on loopback, the config files through the parsers of the
programs that read them (TF Serving's protos, core.config, the gateway's settings loader).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.server
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from google.protobuf import text_format

from tests.deploy.conftest import ENV_EXAMPLE, PROJECT_ROOT, load_module, mount_for, parse_env_file, run_compose, services

TFSERVING_DIR = PROJECT_ROOT / "deploy/tfserving"
COMPOSE_TOML = PROJECT_ROOT / "deploy/mlops.compose.toml"
GATEWAY_TOML = PROJECT_ROOT / "deploy/gateway.compose.toml"


# --- TF Serving's config files, through TF Serving's protos -------------------------------------


def tfserving_message(name: str) -> Any:
    """Message classes for TF Serving protos that tensorflow-serving-api does not ship: the servers'
    own mirrors of `config/monitoring_config.proto` and `session_bundle_config.proto`."""
    from serving.model_server.batching import batching_parameters_class
    from serving.model_server.metrics import monitoring_config_class

    return {"MonitoringConfig": monitoring_config_class, "BatchingParameters": batching_parameters_class}[name]()


def test_monitoring_config_enables_prometheus() -> None:
    config = text_format.Parse((TFSERVING_DIR / "monitoring.config").read_text(), tfserving_message("MonitoringConfig")())
    assert config.prometheus_config.enable
    assert config.prometheus_config.path == "/monitoring/prometheus/metrics"


def test_batching_config_is_what_tfserving_accepts() -> None:
    config = text_format.Parse((TFSERVING_DIR / "batching.config").read_text(), tfserving_message("BatchingParameters")())
    assert config.max_batch_size.value >= 1 and config.num_batch_threads.value >= 1
    assert config.max_enqueued_batches.value >= 1
    # A request waits at most this long for a batch to fill: keep it far below the latency budget.
    assert 0 < config.batch_timeout_micros.value <= 10_000
    if config.allowed_batch_sizes:  # TF Serving's rule, checked at start-up
        sizes = list(config.allowed_batch_sizes)
        assert sizes == sorted(sizes) and sizes[-1] == config.max_batch_size.value


def test_tf_serving_accepts_every_call_the_compose_gateway_can_send() -> None:
    """With batching on, TF Serving refuses a request of more than max_batch_size rows outright."""
    from serving.gateway.config import load_gateway_settings

    config = text_format.Parse((TFSERVING_DIR / "batching.config").read_text(), tfserving_message("BatchingParameters")())
    gateway = load_gateway_settings(PROJECT_ROOT / "deploy/gateway.compose.toml",
                                    environ={"MLOPS_GATEWAY_MODEL_SERVER_REST": "http://tfserving:8501"})
    assert config.max_batch_size.value >= max(gateway.max_instances, gateway.upstream_batch_max_rows)
    if config.enable_large_batch_splitting.value:
        assert 1 <= config.max_execution_batch_size.value <= config.max_batch_size.value


def test_batching_parser_rejects_a_misspelt_field() -> None:
    with pytest.raises(text_format.ParseError, match="max_batch_sizes"):
        text_format.Parse("max_batch_sizes { value: 8 }", tfserving_message("BatchingParameters")())


def test_model_configs_parse_with_the_pipelines_reader() -> None:
    from serving.model_config import labels, read_model_config, served_versions

    seed = read_model_config(TFSERVING_DIR / "models.seed.config")
    assert seed.WhichOneof("config") == "model_config_list" and len(seed.model_config_list.config) == 0
    example = read_model_config(TFSERVING_DIR / "models.config")
    from core.config import load_config

    serving = load_config(COMPOSE_TOML).serving
    [model] = example.model_config_list.config
    assert model.name == serving.model_name
    assert Path(model.base_path) == serving.model_base_dir / serving.model_name
    assert set(labels(example, model.name)) == {"stable", "canary"}
    assert set(labels(example, model.name).values()) <= set(served_versions(example, model.name))


# --- The ML runtime's config inside the platform ------------------------------------------------


def test_compose_config_matches_the_containers(resolved: dict[str, Any]) -> None:
    from core.config import load_config

    model = resolved["default"]
    config = load_config(COMPOSE_TOML)
    scheduler = services(model)["airflow-scheduler"]
    tfserving = services(model)["tfserving"]
    # The project is copied to /opt/airflow/project: the env var names this very file.
    assert scheduler["environment"]["MLOPS_CONFIG"] == "/opt/airflow/project/" + str(COMPOSE_TOML.relative_to(PROJECT_ROOT))
    # Project files resolve inside the project, wherever it is copied.
    assert config.data.csv_path == PROJECT_ROOT / "data/taxi/data.csv" and config.data.csv_path.is_file()
    assert config.data.schema_path == PROJECT_ROOT / "data/taxi/schema.pbtxt"
    # Run outputs and models land on named volumes, where TF Serving and the gateway find them.
    for path in (config.pipeline_root, config.serving.model_base_dir, config.serving.model_config_file):
        mount = mount_for(scheduler, str(path))
        assert mount is not None and mount["type"] == "volume" and not mount.get("read_only"), path
    assert mount_for(scheduler, str(config.serving.model_base_dir))["source"] == "models"
    flags = dict(flag.split("=", 1) for flag in tfserving["command"])
    assert flags["--model_config_file"] == str(config.serving.model_config_file)
    assert mount_for(tfserving, flags["--model_config_file"])["source"] == "models"
    # ML Metadata on the compose PostgreSQL, with the role and database its init script creates.
    postgres = services(model)["postgres"]["environment"]
    assert config.metadata.backend == "postgresql" and config.metadata.host == "postgres"
    assert (config.metadata.user, config.metadata.database) == (postgres["MLMD_DB_USER"], postgres["MLMD_DB_NAME"])
    assert config.metadata.password == "", "the password belongs in .env (PGPASSWORD), not in a committed file"
    assert scheduler["environment"]["PGPASSWORD"] == postgres["MLMD_DB_PASSWORD"]


def test_gateway_settings_resolve_inside_the_platform(resolved: dict[str, Any], env_values: dict[str, str]) -> None:
    from serving.gateway.config import load_gateway_settings

    for profile, model in resolved.items():
        gateway = services(model)["gateway"]
        assert gateway["command"][-2:] == ["--config", "/opt/mlops/deploy/" + GATEWAY_TOML.name]
        settings = load_gateway_settings(GATEWAY_TOML, environ=gateway["environment"])
        assert settings.admin_token == env_values["MLOPS_GATEWAY_ADMIN_TOKEN"]
        assert settings.host == "0.0.0.0", "published ports reach a container only on its external interface"
        assert {settings.rest_port, settings.grpc_port} == {int(port) for port in gateway["expose"]}
        upstream = re.fullmatch(r"http://([\w-]+):(\d+)", settings.model_server_rest)
        assert upstream and upstream.group(1) == "tfserving" and upstream.group(2) == "8501", profile
        assert settings.model_server_grpc == "tfserving:8500"
        # Moves labels in the models.config the pipeline writes; writes logs the Airflow containers read.
        labels = mount_for(gateway, str(settings.model_config_file))
        assert labels["source"] == "models" and not labels.get("read_only")
        logs = mount_for(gateway, str(settings.log_dir))
        assert logs["source"] == "prediction-logs" and not logs.get("read_only")
        assert mount_for(services(model)["airflow-scheduler"], str(settings.log_dir))["source"] == "prediction-logs"
        state = mount_for(gateway, str(settings.state_file))
        assert state["type"] == "volume" and not state.get("read_only")


# --- Secrets: .env generation and the Airflow admin password ------------------------------------


def test_make_env_fills_every_secret_once(tmp_path: Path, make_env_module: Any) -> None:
    output = tmp_path / ".env"
    generated = make_env_module.make_env(ENV_EXAMPLE, output)
    values = parse_env_file(output)
    required = make_env_module.required_secrets(ENV_EXAMPLE.read_text())
    assert set(generated) == set(required) and len(required) >= 8
    assert all(values[key] == generated[key] and len(values[key]) >= 32 for key in required)
    assert len(set(generated.values())) == len(generated), "two secrets share a value"
    assert len(base64.urlsafe_b64decode(values["AIRFLOW_FERNET_KEY"])) == 32
    assert re.fullmatch(r"[0-9a-f]+", values["POSTGRES_PASSWORD"]), "goes into a URL unescaped"
    assert values["COMPOSE_PROFILES"] == "cpu"
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    # Never replaces the secrets a platform was set up with.
    before = output.read_text()
    with pytest.raises(make_env_module.EnvFileError, match="already exists"):
        make_env_module.make_env(ENV_EXAMPLE, output)
    assert output.read_text() == before
    assert make_env_module.main(["--output", str(output)]) == 1
    assert [p.name for p in tmp_path.iterdir()] == [".env"], "a temp file was left behind"


def test_compose_accepts_a_generated_env_file(tmp_path: Path, make_env_module: Any) -> None:
    output = tmp_path / ".env"
    make_env_module.main(["--output", str(output)])
    assert run_compose("config", "--quiet", env_file=output).returncode == 0


@pytest.fixture(scope="module")
def passwords_module() -> Any:
    return load_module("docker/airflow/write_auth_passwords.py")


def test_admin_password_file_keeps_other_users(tmp_path: Path, passwords_module: Any) -> None:
    path = tmp_path / "auth" / "passwords.json"
    passwords_module.write_passwords(path, {"admin": "first"})
    path.write_text(json.dumps({"admin": "first", "viewer": "kept"}))
    passwords_module.write_passwords(path, {"admin": "rotated"})
    assert json.loads(path.read_text()) == {"admin": "rotated", "viewer": "kept"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["passwords.json"]


def test_admin_password_file_errors_name_the_problem(tmp_path: Path, passwords_module: Any) -> None:
    path = tmp_path / "passwords.json"
    path.write_text("{not json")
    with pytest.raises(passwords_module.PasswordsFileError, match=re.escape(str(path)) + ": not valid JSON"):
        passwords_module.write_passwords(path, {"admin": "x"})
    assert path.read_text() == "{not json", "a broken file is reported, never replaced"
    with pytest.raises(passwords_module.PasswordsFileError, match="empty"):
        passwords_module.write_passwords(tmp_path / "other.json", {"admin": ""})
    with pytest.raises(passwords_module.PasswordsFileError, match="':'"):
        passwords_module.write_passwords(tmp_path / "other.json", {"ad:min": "x"})
    assert passwords_module.main({"AIRFLOW_ADMIN_PASSWORD": "x"}) == 2


def test_airflows_simple_auth_manager_reads_the_written_file(tmp_path: Path, passwords_module: Any) -> None:
    """The consumer is Airflow 3.3's own SimpleAuthManager, run from the Airflow environment."""
    airflow_python = PROJECT_ROOT / ".venvs/airflow/bin/python"
    if not airflow_python.exists():
        pytest.skip("the Airflow environment (.venvs/airflow) is not installed: `make setup` builds it")
    path = tmp_path / "passwords.json"
    environ = {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(path),
        "AIRFLOW_ADMIN_USER": "admin",
        "AIRFLOW_ADMIN_PASSWORD": "s3cret'\"\\pass",
    }
    assert passwords_module.main(environ) == 0
    script = (
        "import json; from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager as M; "
        "print(json.dumps(M.get_passwords()))"
    )
    done = subprocess.run(
        [str(airflow_python), "-c", script], capture_output=True, text=True, timeout=300,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AIRFLOW_HOME": str(tmp_path / "airflow_home"),
             "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(path), "AIRFLOW__CORE__LOAD_EXAMPLES": "false"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"admin": "s3cret'\"\\pass"}


# --- Shared volumes -----------------------------------------------------------------------------


INIT_VOLUMES = PROJECT_ROOT / "docker/volumes/init-volumes.sh"


def prepared_dirs() -> list[str]:
    loop = re.search(r"^for dir in (.+); do$", INIT_VOLUMES.read_text(), re.M)
    assert loop, "init-volumes.sh no longer lists its folders in one `for dir in ...` loop"
    return loop.group(1).split()


def run_init_volumes(root: Path, uid: str) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MLOPS_UID": uid, "VOLUMES_ROOT": str(root),
                   "MODELS_SEED_CONFIG": str(TFSERVING_DIR / "models.seed.config")}
    return subprocess.run(["sh", str(INIT_VOLUMES)], capture_output=True, text=True, env=environment, timeout=60)


def test_volume_init_mounts_what_it_prepares(resolved: dict[str, Any]) -> None:
    for profile, model in resolved.items():
        init = services(model)["volumes-init"]
        targets = {mount["target"]: mount for mount in init["volumes"]}
        for directory in prepared_dirs():
            assert directory in targets and targets[directory]["type"] == "volume", f"{profile}: {directory}"
        sources = {mount["source"] for mount in init["volumes"] if mount["type"] == "volume"}
        # Databases and tools that own their volume as their image's user.
        assert sources == set(model["volumes"]) - {"postgres-data", "prometheus-data", "grafana-data", "marquez-db-data"}, profile


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a folder's group to 0 needs root, as in the container")
def test_volume_init_prepares_and_never_overwrites(tmp_path: Path) -> None:
    done = run_init_volumes(tmp_path, "50000")
    assert done.returncode == 0, done.stderr
    for directory in prepared_dirs():
        info = (tmp_path / directory.lstrip("/")).stat()
        assert (info.st_uid, info.st_gid) == (50000, 0), directory
        assert stat.S_IMODE(info.st_mode) & 0o070 == 0o070, f"{directory} is not group-writable"
    seeded = tmp_path / "models/models.config"
    assert seeded.read_text() == (TFSERVING_DIR / "models.seed.config").read_text()
    assert seeded.stat().st_uid == 50000
    # Once the pipeline owns the file, a restart of the platform leaves it alone.
    seeded.write_text('model_config_list { config { name: "taxi" base_path: "/models/taxi" } }\n')
    (tmp_path / "models/taxi/1").mkdir(parents=True)
    assert run_init_volumes(tmp_path, "50000").returncode == 0
    assert "taxi" in seeded.read_text() and (tmp_path / "models/taxi/1").is_dir()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["models.config", "taxi"]


def test_volume_init_rejects_a_non_numeric_uid(tmp_path: Path) -> None:
    done = run_init_volumes(tmp_path, "airflow")
    assert done.returncode != 0
    assert "MLOPS_UID must be a numeric user id, got 'airflow'" in done.stderr
    assert not any(tmp_path.iterdir())


# --- PostgreSQL: Airflow's server also hosts ML Metadata ----------------------------------------


def mlmd_connection(metadata: Any) -> Any:
    """ConnectionConfig for `metadata` as libpq should see it: no password field when it is empty.

    ML Metadata's protos are proto2, so a password set to "" is still *present*: MLMD then passes
    `password=''` to libpq, which stops libpq from reading PGPASSWORD. See
    test_metadata_store_leaves_an_empty_password_to_libpq.
    """
    from ml_metadata.proto import metadata_store_pb2

    connection = metadata_store_pb2.ConnectionConfig()
    connection.postgresql.host = metadata.host
    connection.postgresql.port = str(metadata.port)
    connection.postgresql.user = metadata.user
    connection.postgresql.dbname = metadata.database
    if metadata.password:
        connection.postgresql.password = metadata.password
    return connection


@pytest.mark.postgres
def test_postgres_init_creates_a_database_mlmd_can_use(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixtures.postgres import postgres_bin_dir, running_postgres

    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries are missing: `make test` installs Debian's postgresql")
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    from core.config import load_config

    mlmd_password = "p'w\"d\\with quotes"
    with running_postgres(database="airflow") as superuser:
        environment = {
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PGHOST": superuser.host, "PGPORT": str(superuser.port), "PGPASSWORD": superuser.password,
            "POSTGRES_USER": superuser.user, "POSTGRES_DB": "airflow",
            "MLMD_DB_USER": "mlmd", "MLMD_DB_NAME": "mlmd", "MLMD_DB_PASSWORD": mlmd_password,
        }
        script = PROJECT_ROOT / "docker/postgres/init-mlmd-database.sh"
        for _ in range(2):  # idempotent: re-running it is how an old volume gets the database
            done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=environment, timeout=60)
            assert done.returncode == 0, done.stderr

        # The platform's own config, pointed at this server; the password comes from PGPASSWORD.
        metadata = dataclasses.replace(load_config(COMPOSE_TOML).metadata, host=superuser.host, port=superuser.port)
        monkeypatch.setenv("PGPASSWORD", mlmd_password)
        store = metadata_store.MetadataStore(mlmd_connection(metadata), enable_upgrade_migration=True)
        store.put_artifact_type(metadata_store_pb2.ArtifactType(name="Model"))
        assert [t.name for t in store.get_artifact_types()] == ["Model"]

        monkeypatch.setenv("PGPASSWORD", "wrong")
        with pytest.raises(RuntimeError, match="PostgreSQL"):
            metadata_store.MetadataStore(mlmd_connection(metadata))

        # MLMD's role has no way into Airflow's database.
        probe = subprocess.run(
            [str(bin_dir / "psql"), "-h", superuser.host, "-p", str(superuser.port), "-U", "mlmd", "-d", "airflow", "-c", "SELECT 1"],
            capture_output=True, text=True, env={**environment, "PGPASSWORD": mlmd_password}, timeout=60,
        )
        assert probe.returncode != 0 and "permission denied for database" in probe.stderr


def test_metadata_store_leaves_an_empty_password_to_libpq() -> None:
    from core.config import load_config
    from metadata.store import connection_config

    connection = connection_config(load_config(COMPOSE_TOML).metadata)
    assert connection.postgresql.user == "mlmd"
    assert not connection.postgresql.HasField("password")


def test_postgres_init_script_requires_the_mlmd_password() -> None:
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "POSTGRES_USER": "airflow"}
    done = subprocess.run(["bash", str(PROJECT_ROOT / "docker/postgres/init-mlmd-database.sh")],
                          capture_output=True, text=True, env=environment, timeout=60)
    assert done.returncode != 0 and "MLMD_DB_PASSWORD is not set" in done.stderr


# --- Healthchecks probe for real ----------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    status_by_path: dict[str, int] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        status = self.status_by_path.get(self.path, 404)
        body = b"# metrics\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def http_server(status_by_path: dict[str, int]) -> Iterator[int]:
    handler = type("Handler", (_Handler,), {"status_by_path": status_by_path})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthcheck_command(service: dict[str, Any], container_port: int, port: int) -> list[str]:
    """The service's healthcheck as Docker would exec it, aimed at `port` instead of the container's."""
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD"
    # `config` prints `$$` (compose's escape for a literal `$`); Docker receives `$`.
    command = [part.replace("$$", "$") for part in test[1:]]
    rewritten = [re.sub(rf"(127\.0\.0\.1[:/]){container_port}\b", rf"\g<1>{port}", part) for part in command]
    assert rewritten != command, "the healthcheck does not probe 127.0.0.1:%d" % container_port
    return rewritten


@pytest.mark.parametrize(
    ("service_name", "container_port", "path", "interpreter"),
    [("tfserving", 8501, "/monitoring/prometheus/metrics", "bash"), ("gateway", 8080, "/healthz", "python")],
)
def test_healthcheck_passes_on_200_and_fails_otherwise(
    resolved: dict[str, Any], service_name: str, container_port: int, path: str, interpreter: str
) -> None:
    service = services(resolved["default"])[service_name]
    if interpreter == "python":  # the gateway image's python; any CPython runs this one-liner
        interpreter_path = shutil.which("python3")
        assert interpreter_path

    def probe(port: int) -> int:
        command = healthcheck_command(service, container_port, port)
        if command[0] == "python":
            command[0] = interpreter_path
        return subprocess.run(command, capture_output=True, timeout=30).returncode

    with http_server({path: 200}) as healthy:
        assert probe(healthy) == 0
    with http_server({path: 503}) as unhealthy:
        assert probe(unhealthy) != 0
    with http_server({}) as wrong_path:
        assert probe(wrong_path) != 0
    assert probe(closed_port()) != 0


# --- Images -------------------------------------------------------------------------------------


def dockerfile_copies(dockerfile: Path) -> list[str]:
    sources = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words and words[0] == "COPY" and not any(word.startswith("--from=") for word in words):
            sources += [word for word in words[1:-1] if not word.startswith("--")]
    return sources


@pytest.mark.parametrize("dockerfile", ["docker/airflow/Dockerfile", "docker/gateway/Dockerfile"])
def test_dockerfile_copies_files_that_exist(dockerfile: str) -> None:
    sources = dockerfile_copies(PROJECT_ROOT / dockerfile)
    assert "." in sources and "requirements/ml.lock" in sources
    for source in sources:
        assert (PROJECT_ROOT / source).exists(), f"{dockerfile} copies {source}, which does not exist"


def test_airflow_image_has_both_environments() -> None:
    text = (PROJECT_ROOT / "docker/airflow/Dockerfile").read_text()
    assert "ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11" in text
    assert "pip install --no-cache-dir -r /tmp/airflow.lock" in text
    assert "python -m venv /opt/airflow/ml-venv" in text and "/opt/airflow/ml-venv/bin/pip install -r /tmp/ml-runtime.lock" in text
    # The Airflow image sets PIP_USER=true, which a venv's pip refuses.
    assert re.search(r"^ENV PIP_USER=false", text, re.M)
    assert re.findall(r"^USER (\S+)", text, re.M)[-1] == "airflow", "the image must not end as root"


def test_gateway_image_runs_the_gateway_unprivileged(resolved: dict[str, Any]) -> None:
    text = (PROJECT_ROOT / "docker/gateway/Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text
    assert re.findall(r"^USER (\S+)", text, re.M)[-1] == "${MLOPS_UID}:0"
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert cmd == services(resolved["default"])["gateway"]["command"]
    assert cmd[:3] == ["python", "-m", "serving.gateway"]
    assert (PROJECT_ROOT / "serving" / "gateway" / "__main__.py").is_file(), "`python -m serving.gateway` needs it"
