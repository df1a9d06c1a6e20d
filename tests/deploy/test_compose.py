"""docker-compose.yaml, checked with the real Docker Compose parser and against the repository.

What the platform team relies on: `docker compose up` starts the CPU stack and `--profile gpu`
the GPU one; every file the compose file builds from or mounts exists; the Airflow containers
agree on their shared secrets; Prometheus scrapes services that exist; the Grafana dashboard
queries metrics that the gateway and TF Serving export.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.conftest import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    PROFILES,
    PROJECT_ROOT,
    container_ports,
    hostnames,
    mount_for,
    run_compose,
    services,
)

AIRFLOW_SERVICES = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"}
PLATFORM_SERVICES = AIRFLOW_SERVICES | {"volumes-init", "postgres", "gateway", "gateway-lb", "prometheus", "grafana"}
MODEL_SERVER = {"default": "tfserving", "gpu": "tfserving-gpu", "flink": "tfserving", "lineage": "tfserving"}
FLINK_SERVICES = {"flink-jobmanager", "flink-taskmanager", "beam-flink-job-server", "beam-python-workers"}
ONE_SHOT_SERVICES = {"volumes-init", "airflow-init"}

# The gateway's metric contract (serving/gateway/metrics.py implements these names; the lead's brief
# fixed them): name -> kind.
GATEWAY_METRICS = {
    "mlops_gateway_request_latency_seconds": "histogram",
    "mlops_gateway_requests_total": "counter",
    "mlops_gateway_null_outputs_total": "counter",
    "mlops_gateway_missing_inputs_total": "counter",
    "mlops_gateway_prediction_score": "histogram",
    "mlops_gateway_referrals_total": "counter",
    "mlops_gateway_in_flight_requests": "gauge",
    "mlops_gateway_upstream_call_requests": "histogram",
    "mlops_gateway_upstream_waiting_requests": "gauge",
}
# prometheus_client's default process collector.
PROCESS_METRICS = {
    "process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
    "process_open_fds", "process_max_fds", "process_start_time_seconds",
}
# TF Serving's Prometheus exporter (shared/PROTOCOLS.md).
TFSERVING_METRICS = {
    ":tensorflow:serving:request_count": "counter",
    ":tensorflow:serving:request_latency": "histogram",
    ":tensorflow:serving:runtime_latency": "histogram",
}


def exported_series_names() -> set[str]:
    """Every series name the scraped targets expose, histograms expanded to their series."""
    names = set(PROCESS_METRICS) | {"up"}
    for name, kind in {**GATEWAY_METRICS, **TFSERVING_METRICS}.items():
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


# --- The compose file is valid, in both profiles ------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_file_validates(env_file: Path, profile: str) -> None:
    done = run_compose("config", "--quiet", env_file=env_file, profile=profile)
    assert done.returncode == 0, done.stderr


def test_default_profile_runs_the_cpu_model_server(resolved: dict[str, Any]) -> None:
    assert set(services(resolved["default"])) == PLATFORM_SERVICES | {"tfserving"}
    assert services(resolved["default"])["tfserving"]["image"] == "tensorflow/serving:2.16.1"


def test_gpu_profile_replaces_the_cpu_model_server(resolved: dict[str, Any]) -> None:
    assert set(services(resolved["gpu"])) == PLATFORM_SERVICES | {"tfserving-gpu"}
    gpu = services(resolved["gpu"])["tfserving-gpu"]
    assert gpu["image"] == "tensorflow/serving:2.16.1-gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # Clients keep using the name `tfserving`.
    assert hostnames(resolved["gpu"])["tfserving"] == "tfserving-gpu"


def test_cpu_and_gpu_model_servers_are_configured_alike(resolved: dict[str, Any]) -> None:
    cpu = services(resolved["default"])["tfserving"]
    gpu = services(resolved["gpu"])["tfserving-gpu"]
    for key in ("command", "volumes", "ports", "healthcheck", "depends_on"):
        assert cpu[key] == gpu[key], key
    flags = dict(flag.split("=", 1) for flag in cpu["command"])
    assert flags["--model_config_file_poll_wait_seconds"] == "30"
    assert flags["--enable_batching"] == flags["--allow_version_labels_for_unavailable_models"] == "true"
    assert {8500, 8501} <= container_ports(cpu)


@pytest.mark.parametrize("profile", PROFILES)
def test_model_server_flags_name_files_inside_its_mounts(resolved: dict[str, Any], profile: str) -> None:
    server = services(resolved[profile])[MODEL_SERVER[profile]]
    file_flags = {flag.split("=", 1)[0]: flag.split("=", 1)[1] for flag in server["command"] if "_file=" in flag}
    assert set(file_flags) == {"--model_config_file", "--monitoring_config_file", "--batching_parameters_file"}
    for flag, path in file_flags.items():
        mount = mount_for(server, path)
        assert mount is not None, f"{flag}={path} is not on any mount of {MODEL_SERVER[profile]}"
        if mount["type"] == "bind":
            assert mount["target"] == path and Path(mount["source"]).is_file(), flag
    assert mount_for(server, file_flags["--model_config_file"])["source"] == "models"


# --- Everything the compose file builds from or mounts exists -----------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_build_contexts_and_dockerfiles_exist(resolved: dict[str, Any], profile: str) -> None:
    built = {name: service["build"] for name, service in services(resolved[profile]).items() if "build" in service}
    assert AIRFLOW_SERVICES | {"gateway"} <= set(built)
    for name, build in built.items():
        context = Path(build["context"])
        assert context == PROJECT_ROOT, name
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        # BuildKit reads <Dockerfile>.dockerignore: without it .venvs (GBs) and .env (secrets) ship.
        ignore = Path(f"{dockerfile}.dockerignore").read_text().split()
        assert {".env", ".venvs", ".git", "var"} <= set(ignore), name


@pytest.mark.parametrize("profile", PROFILES)
def test_bind_mounted_repository_files_exist(resolved: dict[str, Any], profile: str) -> None:
    binds = [(name, mount) for name, service in services(resolved[profile]).items()
             for mount in service.get("volumes", []) if mount["type"] == "bind"]
    assert binds
    for name, mount in binds:
        source = Path(mount["source"])
        assert source.is_relative_to(PROJECT_ROOT), f"{name} mounts {source} from outside the repository"
        assert source.exists(), f"{name} mounts {source}, which does not exist"
        assert mount.get("read_only"), f"{name} mounts {source} writable"
        # Docker would otherwise create an empty folder in place of a missing file.
        assert not mount.get("bind", {}).get("create_host_path"), f"{name}: {source}"


@pytest.mark.parametrize("profile", PROFILES)
def test_named_volumes_are_declared_and_shared_at_one_path(resolved: dict[str, Any], profile: str) -> None:
    model = resolved[profile]
    targets: dict[str, set[str]] = {}
    for service in services(model).values():
        for mount in service.get("volumes", []):
            if mount["type"] == "volume":
                assert mount["source"] in model["volumes"], mount["source"]
                targets.setdefault(mount["source"], set()).add(mount["target"])
    # Paths inside files (models.config base paths, the pipeline root) only work when every
    # container sees a volume at the same place.
    for volume, paths in targets.items():
        assert len(paths) == 1, f"volume {volume} is mounted at {sorted(paths)}"


# --- Airflow ------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_airflow_containers_share_secrets_and_execution_api(
    resolved: dict[str, Any], env_values: dict[str, str], profile: str
) -> None:
    model = resolved[profile]
    airflow = {name: services(model)[name] for name in AIRFLOW_SERVICES}
    images = {service["image"] for service in airflow.values()}
    assert images == {"mlops-suite/airflow:latest"}
    expected = {
        "AIRFLOW__API_AUTH__JWT_SECRET": env_values["AIRFLOW_JWT_SECRET"],
        "AIRFLOW__API__SECRET_KEY": env_values["AIRFLOW_API_SECRET_KEY"],
        "AIRFLOW__CORE__FERNET_KEY": env_values["AIRFLOW_FERNET_KEY"],
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://airflow-apiserver:8080/execution/",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "MLOPS_ML_PYTHON": "/opt/airflow/ml-venv/bin/python",
        "MLOPS_CONFIG": "/opt/airflow/project/deploy/mlops.compose.toml",
        "AIRFLOW__CORE__DAGS_FOLDER": "/opt/airflow/project/dags",
    }
    for name, service in airflow.items():
        for key, value in expected.items():
            assert service["environment"].get(key) == value, f"{name}: {key}"
    url = urlsplit(expected["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    apiserver = services(model)[hostnames(model)[url.hostname]]
    assert apiserver["command"] == ["api-server"]
    assert url.port in container_ports(apiserver)
    assert services(model)["airflow-scheduler"]["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    # The rollout tasks reach the admin API through the balancer and read the stats of every replica.
    for name, service in airflow.items():
        balancer = urlsplit(service["environment"]["MLOPS_GATEWAY_URL"])
        replicas = urlsplit(service["environment"]["MLOPS_GATEWAY_REPLICAS"].removeprefix("dns+"))
        assert hostnames(model)[balancer.hostname] == "gateway-lb", name
        assert balancer.port in container_ports(services(model)["gateway-lb"]), name
        assert hostnames(model)[replicas.hostname] == "gateway", name
        assert replicas.port in container_ports(services(model)["gateway"]), name


def test_airflow_connects_to_the_postgres_service(resolved: dict[str, Any], env_values: dict[str, str]) -> None:
    model = resolved["default"]
    connection = urlsplit(services(model)["airflow-scheduler"]["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    postgres = services(model)["postgres"]["environment"]
    assert connection.scheme == "postgresql+psycopg2"
    assert connection.hostname == "postgres" and connection.port == 5432
    assert connection.username == postgres["POSTGRES_USER"]
    assert connection.password == postgres["POSTGRES_PASSWORD"] == env_values["POSTGRES_PASSWORD"]
    assert connection.path == "/" + postgres["POSTGRES_DB"]


def known_airflow_settings() -> dict[str, Any]:
    """[section] -> options Airflow 3.3 knows: its own config.yml and the installed Celery provider's."""
    site = glob.glob(str(PROJECT_ROOT / ".venvs/airflow/lib/python*/site-packages/airflow"))
    if not site:
        pytest.skip("the Airflow environment (.venvs/airflow) is not installed: `make setup` builds it")
    known = yaml.safe_load(Path(site[0], "config_templates/config.yml").read_text())
    namespace: dict[str, Any] = {}
    provider_info = Path(site[0], "providers/celery/get_provider_info.py")
    exec(compile(provider_info.read_text(), str(provider_info), "exec"), namespace)
    known.update(namespace["get_provider_info"]()["config"])
    return known


def assert_settings_known(model: dict[str, Any], names: set[str]) -> set[str]:
    known = known_airflow_settings()
    settings = {key for name in names for key in services(model)[name]["environment"] if key.startswith("AIRFLOW__")}
    for key in sorted(settings):
        section, option = key[len("AIRFLOW__"):].lower().split("__", 1)
        assert option in known.get(section, {}).get("options", {}), f"{key}: no [{section}] {option} in Airflow 3.3"
    return settings


def test_airflow_settings_exist_in_airflow_3(resolved: dict[str, Any]) -> None:
    """Airflow silently ignores an AIRFLOW__SECTION__KEY it does not know: check every one."""
    assert len(assert_settings_known(resolved["default"], AIRFLOW_SERVICES)) >= 10


def test_airflow_admin_password_reaches_the_api_server(resolved: dict[str, Any], env_values: dict[str, str]) -> None:
    model = resolved["default"]
    init = services(model)["airflow-init"]
    apiserver = services(model)["airflow-apiserver"]
    assert init["environment"]["AIRFLOW_ADMIN_PASSWORD"] == env_values["AIRFLOW_ADMIN_PASSWORD"]
    passwords_file = init["environment"]["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    assert apiserver["environment"]["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == passwords_file
    # The file airflow-init writes is on a volume the api-server mounts at the same place.
    written, read = mount_for(init, passwords_file), mount_for(apiserver, passwords_file)
    assert written is not None and read is not None
    assert written["type"] == read["type"] == "volume" and written["source"] == read["source"]
    assert not read.get("read_only"), "the simple auth manager opens the file for writing"
    assert init["command"][-1].startswith("/opt/airflow/project/docker/airflow/")
    assert (PROJECT_ROOT / init["command"][-1].removeprefix("/opt/airflow/project/")).is_file()


# --- Start-up order, health and restarts --------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_dependencies_wait_for_health_or_completion(resolved: dict[str, Any], profile: str) -> None:
    model = resolved[profile]
    for name, service in services(model).items():
        for dependency, rule in service.get("depends_on", {}).items():
            if dependency not in services(model):
                assert rule["required"] is False, f"{name} requires {dependency}, absent in profile {profile}"
                continue
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services(model)[dependency], f"{name} waits for {dependency}'s health"
            if rule["condition"] == "service_completed_successfully":
                assert dependency in ONE_SHOT_SERVICES, f"{name} waits for {dependency} to exit"
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        assert services(model)[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        assert services(model)[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    gateway_waits_for = services(model)["gateway"]["depends_on"]
    assert gateway_waits_for[MODEL_SERVER[profile]]["condition"] == "service_healthy"


@pytest.mark.parametrize("profile", PROFILES)
def test_long_running_services_have_healthchecks_and_restart(resolved: dict[str, Any], profile: str) -> None:
    for name, service in services(resolved[profile]).items():
        if name in ONE_SHOT_SERVICES:
            assert service["restart"] == "no", name
            continue
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        assert service["logging"]["options"]["max-size"], name


def test_published_ports_bind_to_loopback_by_default(resolved: dict[str, Any]) -> None:
    published = [(name, port) for name, service in services(resolved["default"]).items() for port in service.get("ports", [])]
    # The gateway replicas are reached through gateway-lb only (replicas cannot share a host port).
    assert {name for name, _ in published} == {"airflow-apiserver", "tfserving", "gateway-lb", "prometheus", "grafana"}
    flink = [(name, port) for name, service in services(resolved["flink"]).items() for port in service.get("ports", [])]
    assert all(port["host_ip"] == "127.0.0.1" for _, port in flink)
    assert len({port["published"] for _, port in flink}) == len(flink), "two services publish the same host port"
    assert all(port["host_ip"] == "127.0.0.1" for _, port in published)
    host_ports = [port["published"] for _, port in published]
    assert len(host_ports) == len(set(host_ports)), "two services publish the same host port"


# --- Gateway replicas behind the load balancer --------------------------------------------------


LB_CONFIG = PROJECT_ROOT / "deploy/gateway-lb/nginx.conf"


@pytest.mark.parametrize("profile", PROFILES)
def test_gateway_replicas_share_state_and_logs_behind_the_balancer(resolved: dict[str, Any], profile: str) -> None:
    from serving.gateway.config import load_gateway_settings

    model = resolved[profile]
    gateway, balancer = services(model)["gateway"], services(model)["gateway-lb"]
    assert gateway["deploy"]["replicas"] >= 2
    assert "ports" not in gateway, "replicas cannot share a host port: clients go through gateway-lb"
    settings = load_gateway_settings(PROJECT_ROOT / "deploy/gateway.compose.toml", environ=gateway["environment"])
    # One state file and one log folder for all replicas: volumes, not per-container paths.
    for path in (settings.state_file, settings.log_dir):
        assert mount_for(gateway, str(path))["type"] == "volume", path
    assert not settings.replica_id, "a fixed replica_id would give every replica the same file names"
    assert 0 < settings.policy_poll_seconds <= 5
    assert Path(mount_for(balancer, "/etc/nginx/nginx.conf")["source"]) == LB_CONFIG
    assert balancer["depends_on"]["gateway"]["condition"] == "service_healthy"
    assert {int(port["target"]) for port in balancer["ports"]} == {settings.rest_port, settings.grpc_port}


def test_balancer_config_sends_rest_and_grpc_to_every_replica() -> None:
    text = LB_CONFIG.read_text()
    upstreams = dict(re.findall(r"upstream (\w+) \{[^}]*?server ([\w.-]+:\d+) resolve", text))
    assert upstreams == {"gateway_rest": "gateway:8080", "gateway_grpc": "gateway:8081"}
    servers = re.findall(r"server \{\s*listen (\d+);(.*?)\n    \}", text, flags=re.S)
    routes = {port: body for port, body in servers}
    assert "proxy_pass http://gateway_rest;" in routes["8080"]
    assert "grpc_pass grpc://gateway_grpc;" in routes["8081"] and "http2 on;" in routes["8081"]
    # Re-resolved: replicas scaled or restarted later are found without reloading nginx.
    assert re.search(r"resolver 127\.0\.0\.11 valid=\d+s", text)


# --- Profile flink: the Beam steps on a Flink cluster ------------------------------------------


FLINK_CONFIG = PROJECT_ROOT / "deploy/mlops.flink.toml"


def _flag_values(flags: list[str]) -> dict[str, str]:
    return dict(flag.removeprefix("--").split("=", 1) for flag in flags if "=" in flag)


def test_flink_profile_adds_the_cluster_to_the_cpu_platform(resolved: dict[str, Any]) -> None:
    assert set(services(resolved["flink"])) == PLATFORM_SERVICES | {"tfserving"} | FLINK_SERVICES
    assert not FLINK_SERVICES & set(services(resolved["default"]))


def test_flink_config_differs_from_the_compose_config_only_in_beam_args() -> None:
    import tomllib

    from core.config import load_config

    flink, compose = (tomllib.loads(path.read_text()) for path in (FLINK_CONFIG, PROJECT_ROOT / "deploy/mlops.compose.toml"))
    assert flink.pop("beam_args") != compose.pop("beam_args")
    assert flink == compose
    load_config(FLINK_CONFIG)  # valid as the pipeline reads it


def test_flink_beam_args_reach_the_services_of_the_profile(resolved: dict[str, Any]) -> None:
    import tomllib

    from apache_beam.options.pipeline_options import PipelineOptions

    model = resolved["flink"]
    args = tomllib.loads(FLINK_CONFIG.read_text())["beam_args"]
    options = PipelineOptions(args).get_all_options(retain_unknown_options=True)
    assert options["runner"] == "PortableRunner" and options["environment_type"] == "EXTERNAL"
    assert options["parallelism"] == 2  # a Flink option Beam's Python SDK knows (not dropped as unknown)
    job_server = services(model)["beam-flink-job-server"]
    for endpoint, service_name in ((options["job_endpoint"], "beam-flink-job-server"),
                                   (options["artifact_endpoint"], "beam-flink-job-server"),
                                   (options["environment_config"], "beam-python-workers")):
        host, port = endpoint.rsplit(":", 1)
        assert hostnames(model)[host] == service_name and int(port) in container_ports(services(model)[service_name])
    server_flags = _flag_values(job_server["command"])
    assert {options["job_endpoint"].rsplit(":", 1)[1], options["artifact_endpoint"].rsplit(":", 1)[1]} == \
        {server_flags["job-port"], server_flags["artifact-port"]}
    master_host, master_port = server_flags["flink-master"].rsplit(":", 1)
    assert int(master_port) in container_ports(services(model)[hostnames(model)[master_host]])
    # Beam hands paths to the workers as they are: the pipeline root, temp files and models must be
    # where the Airflow task wrote them, in every container that runs the steps' code.
    temp = options["temp_location"]
    for name in ("airflow-scheduler", "beam-python-workers", "flink-taskmanager", "beam-flink-job-server"):
        assert mount_for(services(model)[name], "/data/pipeline")["source"] == "pipeline", name
        assert mount_for(services(model)[name], temp)["source"] == "pipeline", name
    assert mount_for(services(model)["beam-python-workers"], "/models")["source"] == "models"


def test_flink_workers_run_the_ml_runtime_of_the_airflow_image(resolved: dict[str, Any]) -> None:
    model = resolved["flink"]
    workers = services(model)["beam-python-workers"]
    ml_python = services(model)["airflow-scheduler"]["environment"]["MLOPS_ML_PYTHON"]
    assert workers["image"] == services(model)["airflow-scheduler"]["image"]
    assert workers["entrypoint"][:3] == [ml_python, "-m", "apache_beam.runners.worker.worker_pool_main"]
    # The pool starts each SDK worker as plain `python`: it must be the ML runtime's.
    assert workers["environment"]["PATH"].split(":")[0] == str(Path(ml_python).parent)
    assert {"flink-jobmanager", "flink-taskmanager"} <= {name for name, s in services(model).items() if s.get("image", "").startswith("flink:1.18")}
    assert "1.18" in services(model)["beam-flink-job-server"]["image"] and "2.59" in services(model)["beam-flink-job-server"]["image"]


# --- Secrets ------------------------------------------------------------------------------------


def test_every_required_secret_is_in_env_example(make_env_module: Any) -> None:
    required_in_compose = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE_FILE.read_text()))
    assert required_in_compose == set(make_env_module.required_secrets(ENV_EXAMPLE.read_text()))


def test_each_secret_reaches_only_the_services_that_use_it(resolved: dict[str, Any], env_values: dict[str, str]) -> None:
    airflow = sorted(AIRFLOW_SERVICES)
    expected = {
        "POSTGRES_PASSWORD": ["postgres", *airflow],  # inside Airflow's database URL
        "MLMD_DB_PASSWORD": ["postgres", *airflow],  # PGPASSWORD of the ML tasks
        "AIRFLOW_JWT_SECRET": airflow, "AIRFLOW_API_SECRET_KEY": airflow, "AIRFLOW_FERNET_KEY": airflow,
        "AIRFLOW_ADMIN_PASSWORD": ["airflow-init"],
        "GRAFANA_ADMIN_PASSWORD": ["grafana"],
        "MLOPS_GATEWAY_ADMIN_TOKEN": ["gateway"],
        "MARQUEZ_DB_PASSWORD": ["marquez-api", "marquez-db"],  # only with the lineage profile
    }
    for profile, model in resolved.items():
        for secret, holders in expected.items():
            holders = [name for name in holders if name in services(model)]
            value = env_values[secret]
            found = sorted(name for name, service in services(model).items()
                           if any(value in str(setting) for setting in (service.get("environment") or {}).values()))
            assert found == sorted(holders), f"{profile}: {secret} is given to {found}"


def test_missing_secret_stops_compose_with_its_name(tmp_path: Path) -> None:
    unfilled = tmp_path / ".env"
    unfilled.write_text(ENV_EXAMPLE.read_text())
    done = run_compose("config", "--quiet", env_file=unfilled)
    assert done.returncode != 0
    assert re.search(r"required variable [A-Z_]+ is missing a value: set [A-Z_]+ in \.env", done.stderr), done.stderr


def test_env_example_selects_the_cpu_profile() -> None:
    assert "COMPOSE_PROFILES=cpu" in ENV_EXAMPLE.read_text().splitlines()


# --- The validator is real ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("original", "broken", "expected_error"),
    [
        ("    healthcheck:\n      test: [\"CMD\", \"pg_isready\"", "    healtcheck:\n      test: [\"CMD\", \"pg_isready\"", "healtcheck"),
        ("        condition: service_completed_successfully\n", "        condition: service_completed_succesfully\n", "depends_on.airflow-init.condition value must be one of"),
        ("      - prometheus-data:/prometheus\n", "      - prometheus-dta:/prometheus\n", "prometheus-dta"),
        ("    restart: unless-stopped\n", "    restart: 3\n", "restart"),
    ],
    ids=["misspelt-key", "bad-depends-on-condition", "undeclared-volume", "wrong-type"],
)
def test_broken_copy_fails_validation(tmp_path: Path, env_file: Path, original: str, broken: str, expected_error: str) -> None:
    text = COMPOSE_FILE.read_text()
    assert original in text, "the test's anchor text is no longer in docker-compose.yaml"
    copy = tmp_path / "docker-compose.yaml"
    copy.write_text(text.replace(original, broken, 1))
    done = run_compose("config", "--quiet", env_file=env_file, compose_file=copy)
    assert done.returncode != 0, f"the compose parser accepted: {broken!r}"
    assert expected_error in done.stderr, done.stderr


# --- Prometheus ---------------------------------------------------------------------------------


PROMETHEUS_CONFIG = PROJECT_ROOT / "deploy/prometheus/prometheus.yml"


def test_prometheus_config_is_the_mounted_one(resolved: dict[str, Any]) -> None:
    prometheus = services(resolved["default"])["prometheus"]
    flags = dict(flag.split("=", 1) for flag in prometheus["command"])
    mount = mount_for(prometheus, flags["--config.file"])
    assert mount is not None and Path(mount["source"]) == PROMETHEUS_CONFIG
    assert mount_for(prometheus, flags["--storage.tsdb.path"])["type"] == "volume"


@pytest.mark.parametrize("profile", PROFILES)
def test_prometheus_scrapes_services_that_exist(resolved: dict[str, Any], profile: str) -> None:
    model = resolved[profile]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"gateway", "tfserving"} <= set(jobs)
    for name, job in jobs.items():
        targets = [target for static in job.get("static_configs", []) for target in static["targets"]]
        # DNS discovery: one target per address the name resolves to (every replica of a service).
        targets += [f"{host}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for host in sd["names"]]
        assert targets, f"job {name} scrapes nothing"
        for target in targets:
            host, port = target.rsplit(":", 1)
            if host == "localhost":
                assert name == "prometheus"
                continue
            assert host in hostnames(model), f"job {name}: {host} is not a service in profile {profile}"
            service = services(model)[hostnames(model)[host]]
            assert int(port) in container_ports(service), f"job {name}: {service} does not listen on {port}"
    assert hostnames(model)[jobs["tfserving"]["static_configs"][0]["targets"][0].split(":")[0]] == MODEL_SERVER[profile]


def test_prometheus_scrapes_each_gateway_replica_not_the_balancer() -> None:
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    [discovery] = jobs["gateway"]["dns_sd_configs"]
    assert discovery["names"] == ["gateway"] and discovery["type"] == "A" and "static_configs" not in jobs["gateway"]


def test_prometheus_scrapes_tfserving_where_it_exports() -> None:
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    monitoring = (PROJECT_ROOT / "deploy/tfserving/monitoring.config").read_text()
    exported_path = re.search(r'path:\s*"([^"]+)"', monitoring).group(1)
    assert jobs["tfserving"]["metrics_path"] == exported_path == "/monitoring/prometheus/metrics"
    assert jobs["gateway"]["metrics_path"] == "/metrics"


# --- Grafana ------------------------------------------------------------------------------------


DASHBOARD_DIR = PROJECT_ROOT / "deploy/grafana/dashboards"
PROVISIONING_DIR = PROJECT_ROOT / "deploy/grafana/provisioning"


def datasource() -> dict[str, Any]:
    sources = yaml.safe_load((PROVISIONING_DIR / "datasources/prometheus.yaml").read_text())["datasources"]
    assert len(sources) == 1
    return sources[0]


def test_grafana_provisioning_matches_the_mounts(resolved: dict[str, Any]) -> None:
    model = resolved["default"]
    grafana = services(model)["grafana"]
    assert Path(mount_for(grafana, "/etc/grafana/provisioning/datasources")["source"]) == PROVISIONING_DIR
    providers = yaml.safe_load((PROVISIONING_DIR / "dashboards/mlops.yaml").read_text())["providers"]
    for provider in providers:
        mount = mount_for(grafana, provider["options"]["path"])
        assert mount is not None and Path(mount["source"]) == DASHBOARD_DIR
    source = datasource()
    assert source["type"] == "prometheus"
    url = urlsplit(source["url"])
    assert hostnames(model)[url.hostname] == "prometheus"
    assert url.port in container_ports(services(model)["prometheus"])


def dashboards() -> dict[str, dict[str, Any]]:
    found = {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}
    assert found, f"no dashboards in {DASHBOARD_DIR}"
    return found


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    flat = []
    for panel in dashboard["panels"]:
        flat.append(panel)
        flat.extend(panel.get("panels", []))
    return flat


_PROMQL_NOT_METRICS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan",
}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (enough PromQL for these dashboards)."""
    names = set(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)           # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)                        # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)                       # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, is_call = match.group(1), match.group(2)
        if not is_call and word.lower() not in _PROMQL_NOT_METRICS:
            names.add(word)
    return names


def test_metric_name_extraction() -> None:
    assert metric_names('sum by (le, model) (rate(foo_bucket{model=~"$model", code!~"2.."}[$__rate_interval])) / 1e6') == {"foo_bucket"}
    assert metric_names('a / ignoring(label) group_left sum(rate(b_total[5m]))') == {"a", "b_total"}
    assert metric_names('rate({__name__=":tensorflow:serving:request_count"}[1m])') == {":tensorflow:serving:request_count"}


def test_dashboard_queries_use_exported_metrics() -> None:
    known = exported_series_names()
    for file_name, dashboard in dashboards().items():
        used: set[str] = set()
        for panel in panels_of(dashboard):
            for target in panel.get("targets", []):
                names = metric_names(target["expr"])
                assert names, f"{file_name} panel {panel['title']!r}: no metric in {target['expr']}"
                unknown = names - known
                assert not unknown, f"{file_name} panel {panel['title']!r} queries {sorted(unknown)}, which nothing exports"
                assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
                used |= names
        for variable in dashboard.get("templating", {}).get("list", []):
            assert metric_names(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", variable["definition"])) <= known
        # The dashboard covers the whole gateway contract, and TF Serving's own view.
        for name, kind in GATEWAY_METRICS.items():
            series = {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
            assert used & series, f"{file_name} shows nothing of {name}"
        assert {":tensorflow:serving:request_count", ":tensorflow:serving:request_latency_bucket"} <= used


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    uid = datasource()["uid"]
    for file_name, dashboard in dashboards().items():
        assert dashboard["uid"] and dashboard["title"]
        panels = panels_of(dashboard)
        assert len({panel["id"] for panel in panels}) == len(panels), f"{file_name}: duplicate panel ids"
        for panel in panels:
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == uid, panel["title"]
            assert all(target["datasource"]["uid"] == uid for target in panel["targets"]), panel["title"]
        titles = " ".join(panel["title"].lower() for panel in panels)
        for topic in ("latency", "throughput", "errors", "null outputs", "missing inputs", "canary", "referrals"):
            assert topic in titles or topic in json.dumps(dashboard).lower(), f"{file_name} has no {topic} panel"


def test_dashboard_metric_names_match_the_gateway_source() -> None:
    """The names the dashboard relies on must be in the gateway's code."""
    sources = [path for path in sorted((PROJECT_ROOT / "serving").rglob("*.py")) if "mlops_gateway_" in path.read_text()]
    assert sources, "no file under serving/ defines an mlops_gateway_* metric: where did the gateway's metrics go?"
    code = "\n".join(path.read_text() for path in sources)
    for name, kind in GATEWAY_METRICS.items():
        # prometheus_client appends _total to counters; the code may name them with or without it.
        base = name.removesuffix("_total") if kind == "counter" else name
        assert base in code, f"the dashboard uses {name}, which {', '.join(p.name for p in sources)} does not define"


# --- Profile celery: Airflow's tasks on Celery workers ------------------------------------------

CELERY_SERVICES = {"redis", "airflow-worker"}


@pytest.fixture(scope="module")
def celery_env_file(env_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .env of docs/DEPLOY.md's "Celery workers": the profile and the executor chosen together."""
    path = tmp_path_factory.mktemp("celery-env") / ".env"
    path.write_text(env_file.read_text() + "COMPOSE_PROFILES=cpu,celery\nAIRFLOW_EXECUTOR=CeleryExecutor\n")
    return path


@pytest.fixture(scope="module")
def celery_model(celery_env_file: Path) -> dict[str, Any]:
    done = run_compose("config", "--format", "json", env_file=celery_env_file, profile="celery")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_celery_profile_adds_redis_and_workers_to_the_cpu_platform(resolved: dict[str, Any], celery_model: dict[str, Any]) -> None:
    assert set(services(celery_model)) == PLATFORM_SERVICES | {"tfserving"} | CELERY_SERVICES
    for profile, model in resolved.items():  # without the profile: neither, and the LocalExecutor
        assert not CELERY_SERVICES & set(services(model)), profile
        assert services(model)["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"


def test_every_airflow_container_runs_the_celery_executor_against_the_redis_service(
    celery_model: dict[str, Any], env_values: dict[str, str]
) -> None:
    airflow = {name: services(celery_model)[name] for name in AIRFLOW_SERVICES | {"airflow-worker"}}
    scheduler = airflow["airflow-scheduler"]["environment"]
    for name, service in airflow.items():
        environment = service["environment"]
        assert environment["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        # Workers sign task tokens, reach the execution API and the database like the scheduler does.
        for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "AIRFLOW__CELERY__BROKER_URL",
                    "AIRFLOW__CELERY__RESULT_BACKEND", "MLOPS_ML_PYTHON", "MLOPS_CONFIG"):
            assert environment[key] == scheduler[key], f"{name}: {key}"
    broker = urlsplit(scheduler["AIRFLOW__CELERY__BROKER_URL"])
    assert broker.scheme == "redis" and broker.port in container_ports(services(celery_model)[hostnames(celery_model)[broker.hostname]])
    assert hostnames(celery_model)[broker.hostname] == "redis"
    # Task states go to Airflow's own PostgreSQL database, through Celery's SQLAlchemy backend.
    assert scheduler["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + scheduler["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env_values["POSTGRES_PASSWORD"] in scheduler["AIRFLOW__CELERY__RESULT_BACKEND"]


def test_the_celery_settings_exist_in_airflow_3_and_its_celery_provider(celery_model: dict[str, Any]) -> None:
    settings = assert_settings_known(celery_model, AIRFLOW_SERVICES | {"airflow-worker"})
    assert {"AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND", "AIRFLOW__CELERY__WORKER_CONCURRENCY"} <= settings


def test_workers_scale_with_the_ml_runtime_and_wait_for_the_broker(celery_model: dict[str, Any]) -> None:
    worker = services(celery_model)["airflow-worker"]
    assert worker["image"] == services(celery_model)["airflow-scheduler"]["image"] == "mlops-suite/airflow:latest"
    assert worker["environment"]["MLOPS_ML_PYTHON"] == "/opt/airflow/ml-venv/bin/python"  # the image's ML runtime
    # `--scale airflow-worker=N` needs replicas that differ in nothing fixed.
    assert "container_name" not in worker and not worker.get("ports")
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert services(celery_model)["airflow-scheduler"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert 'inspect ping -d "celery@$${HOSTNAME}"' in worker["healthcheck"]["test"][1]  # each replica pings itself
    # The same volumes as the scheduler: the pipeline root, the models and the task logs.
    assert {m["target"] for m in worker["volumes"]} == {m["target"] for m in services(celery_model)["airflow-scheduler"]["volumes"]}


@pytest.mark.parametrize("executor", ["LocalExecutor", "airflow.providers.celery.executors.celery_executor.CeleryExecutor"])
def test_a_worker_refuses_to_start_beside_another_executor_and_starts_beside_celery(
    celery_model: dict[str, Any], tmp_path: Path, executor: str
) -> None:
    """The worker's start script, run by a real bash with a stand-in `airflow` on PATH."""
    command = services(celery_model)["airflow-worker"]["command"]
    assert command[:2] == ["bash", "-c"]
    (tmp_path / "airflow").write_text("#!/bin/sh\necho \"airflow $*\"\n")
    (tmp_path / "airflow").chmod(0o755)
    script = command[2].replace("$$", "$")  # `config` output keeps compose's escape; the container gets `$`
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{tmp_path}:/usr/bin:/bin", "AIRFLOW__CORE__EXECUTOR": executor})
    if executor == "LocalExecutor":
        assert done.returncode == 1 and "set AIRFLOW_EXECUTOR=CeleryExecutor in .env" in done.stderr
    else:
        assert done.returncode == 0 and done.stdout.strip() == "airflow celery worker", done


# --- Profile lineage: Marquez, fed by the steps' OpenLineage events ---------------------------

LINEAGE_SERVICES = {"marquez-db", "marquez-api", "marquez-web"}


@pytest.fixture(scope="module")
def lineage_model(env_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The platform of docs/DEPLOY.md's "Lineage": the profile and the transport chosen together in .env."""
    path = tmp_path_factory.mktemp("lineage-env") / ".env"
    path.write_text(env_file.read_text() + "COMPOSE_PROFILES=cpu,lineage\nOPENLINEAGE_URL=http://marquez-api:5000\n")
    done = run_compose("config", "--format", "json", env_file=path, profile="lineage")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_lineage_profile_adds_marquez_to_the_cpu_platform(resolved: dict[str, Any], lineage_model: dict[str, Any]) -> None:
    assert set(services(lineage_model)) == PLATFORM_SERVICES | {"tfserving"} | LINEAGE_SERVICES
    for profile in ("default", "gpu", "flink"):
        assert not LINEAGE_SERVICES & set(services(resolved[profile])), profile
        # Without a lineage service the events go to a file below the pipeline root (metadata/openlineage.py).
        assert services(resolved[profile])["airflow-scheduler"]["environment"]["OPENLINEAGE_URL"] == ""


def test_every_airflow_container_sends_openlineage_events_to_the_marquez_api(lineage_model: dict[str, Any]) -> None:
    names = hostnames(lineage_model)
    for name in AIRFLOW_SERVICES:
        url = urlsplit(services(lineage_model)[name]["environment"]["OPENLINEAGE_URL"])
        assert url.scheme == "http" and names[url.hostname] == "marquez-api", name
        assert url.port in container_ports(services(lineage_model)["marquez-api"]), name
    api = services(lineage_model)["marquez-api"]["environment"]
    assert int(api["MARQUEZ_PORT"]) == url.port


def test_the_ml_runtime_reads_that_setting_as_an_http_transport_to_marquez(lineage_model: dict[str, Any]) -> None:
    """The setting as the ML tasks see it, read by the real openlineage-python client and our transport choice."""
    from metadata import openlineage

    environment = services(lineage_model)["airflow-scheduler"]["environment"]
    before = {name for name in os.environ if name.startswith("OPENLINEAGE")}
    with pytest.MonkeyPatch.context() as patch:
        for name in ("OPENLINEAGE_CONFIG", "OPENLINEAGE_DISABLED", "OPENLINEAGE__TRANSPORT"):
            patch.delenv(name, raising=False)
        patch.setenv("OPENLINEAGE_URL", environment["OPENLINEAGE_URL"])
        assert openlineage.user_configured()
        transport = openlineage.default_client(Path("/nonexistent")).transport
    # The client writes OPENLINEAGE__TRANSPORT__* into os.environ when it reads OPENLINEAGE_URL; monkeypatch
    # cannot undo what it did not set, and left over they turn the file default off for later tests.
    for name in {name for name in os.environ if name.startswith("OPENLINEAGE")} - before:
        del os.environ[name]
    assert transport.kind == "http" and transport.url == "http://marquez-api:5000"


def test_marquez_api_reaches_its_own_database_with_the_generated_password(lineage_model: dict[str, Any], env_values: dict[str, str]) -> None:
    model = services(lineage_model)
    api, db = model["marquez-api"], model["marquez-db"]
    assert api["depends_on"]["marquez-db"]["condition"] == "service_healthy"
    assert model["marquez-web"]["depends_on"]["marquez-api"]["condition"] == "service_healthy"
    assert hostnames(lineage_model)[api["environment"]["POSTGRES_HOST"]] == "marquez-db"
    assert int(api["environment"]["POSTGRES_PORT"]) in container_ports(db)
    for key in ("POSTGRES_USER", "POSTGRES_PASSWORD"):
        assert api["environment"][key] == db["environment"][key], key
    assert api["environment"]["POSTGRES_DB"] == db["environment"]["POSTGRES_DB"]
    assert api["environment"]["POSTGRES_PASSWORD"] == env_values["MARQUEZ_DB_PASSWORD"]
    # Its config file takes every connection setting from those variables, and holds no secret.
    config = yaml.safe_load((PROJECT_ROOT / "deploy/marquez/marquez.yml").read_text())
    assert mount_for(api, api["environment"]["MARQUEZ_CONFIG"])["source"].endswith("deploy/marquez/marquez.yml")
    assert config["db"]["password"] == "${POSTGRES_PASSWORD}"
    for name in ("POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_DB"):
        assert f"${{{name}" in config["db"]["url"], name
    assert [c["port"] for c in config["server"]["applicationConnectors"]] == ["${MARQUEZ_PORT:-5000}"]


def test_marquez_web_proxies_to_the_api_and_publishes_beside_grafana(lineage_model: dict[str, Any]) -> None:
    model = services(lineage_model)
    web = model["marquez-web"]["environment"]
    assert hostnames(lineage_model)[web["MARQUEZ_HOST"]] == "marquez-api"
    assert int(web["MARQUEZ_PORT"]) in container_ports(model["marquez-api"])
    assert int(web["WEB_PORT"]) in container_ports(model["marquez-web"])
    published = [(name, port) for name, service in model.items() for port in service.get("ports", [])]
    assert all(port["host_ip"] == "127.0.0.1" for _, port in published)
    assert len({port["published"] for _, port in published}) == len(published), "two services publish the same host port"
