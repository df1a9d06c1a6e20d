"""Gateway settings: file, MLOPS_GATEWAY_* environment, overrides, and start-up validation with named errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.gateway.config import GatewayConfigError, GatewaySettings, ModelPolicy, load_gateway_settings

PROJECT_ROOT = Path(__file__).resolve().parents[3]
TOKEN = "a-long-enough-admin-token"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_file_environment_and_overrides_in_that_order(tmp_path):
    config = _write(tmp_path, """
[gateway]
rest_port = 9100
grpc_port = 9101
log_dir = "logs"
model_config_file = "models/models.config"
max_instances = 64
[models.taxi]
policy = "canary"
canary_share = 0.05
automation = "partial"
band = [0.3, 0.7]
""")
    environ = {"MLOPS_GATEWAY_ADMIN_TOKEN": TOKEN, "MLOPS_GATEWAY_MODEL_SERVER_REST": "http://tfserving:8501",
               "MLOPS_GATEWAY_REST_PORT": "9200", "MLOPS_GATEWAY_USE_UVLOOP": "false", "MLOPS_GATEWAY_MODEL_CONFIG_FILE": ""}
    settings = load_gateway_settings(config, environ=environ, overrides={"grpc_port": 0})
    assert settings.rest_port == 9200  # environment over file
    assert settings.grpc_port == 0  # override over file
    assert settings.admin_token == TOKEN and settings.admin_enabled
    assert settings.model_server_rest == "http://tfserving:8501"
    assert settings.use_uvloop is False
    assert settings.model_config_file is None  # an empty variable switches the optional file off
    assert settings.log_dir == tmp_path / "logs"  # relative to the file's folder
    assert settings.max_instances == 64
    assert settings.models["taxi"] == ModelPolicy(policy="canary", canary_share=0.05, automation="partial", band=(0.3, 0.7))


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_gateway_settings(environ={})
    assert (settings.host, settings.rest_port, settings.grpc_port) == ("127.0.0.1", 8000, 8001)
    assert settings.log_dir == tmp_path / "var" / "logs" / "predictions"
    assert not settings.admin_enabled


def test_the_compose_deployment_config_loads():
    settings = load_gateway_settings(PROJECT_ROOT / "deploy" / "gateway.compose.toml",
                                     environ={"MLOPS_GATEWAY_ADMIN_TOKEN": TOKEN, "MLOPS_GATEWAY_MODEL_SERVER_REST": "http://tfserving:8501"})
    assert settings.log_dir == Path("/logs") and settings.rest_port == 8080
    assert settings.upstream_max_in_flight == 4  # TF Serving's batch threads, not the embedded server's default
    assert "taxi" in settings.models


@pytest.mark.parametrize(
    "text, environ, words",
    [
        ("[gateway]\nrest_prot = 1\n", {}, ["unknown setting 'rest_prot'", "rest_port"]),
        ("[gateway]\nrest_port = \"eighty\"\n", {}, ["rest_port must be int", "eighty"]),
        ("[gateway]\nrest_port = 70000\n", {}, ["rest_port must be in 0..65535"]),
        ("[gateway]\nupstream_protocol = \"soap\"\n", {}, ["upstream_protocol", "soap"]),
        ("[gateway]\nmodel_server_rest = \"tfserving:8501\"\n", {}, ["model_server_rest must be an http(s) URL"]),
        ("[gateway]\nlog_flush_rows = 100\nlog_queue_rows = 10\n", {}, ["log_flush_rows (100) must not exceed"]),
        ("[gateway]\nmax_instances = 0\n", {}, ["max_instances must be > 0"]),
        ("[gateway]\nupstream_max_in_flight = -1\n", {}, ["upstream_max_in_flight must be >= 0", "never merge"]),
        ("[gateway]\nupstream_batch_max_rows = 0\n", {}, ["upstream_batch_max_rows must be > 0"]),
        ("[servers]\nx = 1\n", {}, ["unknown tables ['servers']"]),
        ("[models.taxi]\ncanary_share = 5\n", {}, ["[models.taxi]", "fraction in [0, 1]"]),
        ("[models.taxi]\npolicy = \"shadow\"\n", {}, ["[models.taxi]", "needs a shadow_version"]),
        ("[models.taxi]\nband = [0.9, 0.1]\n", {}, ["band must be [low, high]"]),
        ("[models.taxi]\nweight = 1\n", {}, ["unknown keys ['weight']"]),
        ("[gateway\n", {}, ["not valid TOML"]),
        ("", {"MLOPS_GATEWAY_REST_PORT": "http"}, ["MLOPS_GATEWAY_REST_PORT", "rest_port must be int"]),
        ("", {"MLOPS_GATEWAY_ADMIN_TOKEN": "short"}, ["admin_token must have at least 16 characters"]),
    ],
)
def test_bad_settings_are_refused_with_the_setting_named(tmp_path, text, environ, words):
    with pytest.raises(GatewayConfigError) as caught:
        load_gateway_settings(_write(tmp_path, text), environ=environ)
    for word in words:
        assert word in str(caught.value), str(caught.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(GatewayConfigError, match="gateway config file not found"):
        load_gateway_settings(tmp_path / "nope.toml", environ={})


def test_settings_are_frozen_and_validated_when_built_in_code():
    settings = GatewaySettings(rest_port=0)
    with pytest.raises(AttributeError):
        settings.rest_port = 1  # type: ignore[misc]
    with pytest.raises(GatewayConfigError, match="breaker_reset_s must be > 0"):
        GatewaySettings(breaker_reset_s=0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"policy_poll_seconds": 0}, "gateway.policy_poll_seconds must be > 0"),
        ({"policy_poll_seconds": 31}, "gateway.policy_poll_seconds must be at most 30"),
        ({"replica_id": "a-b"}, "gateway.replica_id must be 1-40 letters"),
    ],
)
def test_replica_settings_are_checked(overrides, message):
    with pytest.raises(GatewayConfigError, match=message):
        GatewaySettings(**overrides)


def test_the_default_replica_name_fits_in_a_file_name():
    import os
    import re

    name = GatewaySettings().replica_name
    assert re.fullmatch(r"[A-Za-z0-9_.]{1,40}", name) and name.endswith(f".{os.getpid()}")
    assert GatewaySettings(replica_id="gw_2").replica_name == "gw_2"
