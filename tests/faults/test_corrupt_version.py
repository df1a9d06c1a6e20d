"""A half-written or corrupted model version directory appears in the model base path while a good
version serves: the model server never loads it, every request is still answered by the good
version, and GetModelStatus (REST `/v1/models/<name>/versions/<v>`) says why the new one is not
served. Each corruption is one a dying copy or a bad disk leaves (scenarios.CORRUPTIONS)."""

from __future__ import annotations

import pytest

from tests.faults.scenarios import CORRUPTIONS, corrupt_versions
from tests.serving.conftest import model_root  # noqa: F401 - fixture, found by name
from tests.serving.gateway.helpers import STABLE_VERSION


def test_corrupted_version_directories_are_never_loaded_and_the_old_version_serves(model_root, tmp_path):  # noqa: F811
    outcomes = corrupt_versions(model_root, tmp_path)

    assert [o.corruption for o in outcomes] == list(CORRUPTIONS)
    for outcome in outcomes:
        assert outcome.state == "END", outcome
        assert outcome.error, f"{outcome.corruption}: the status does not say why version {outcome.version} is not served"
        assert outcome.failures == 0, outcome
        assert set(outcome.served_versions) == {STABLE_VERSION}, outcome
        print(f"\n{outcome.corruption}: {outcome.error}")


def test_a_rollout_to_a_corrupted_pushed_version_fails_at_once_and_stable_keeps_serving(model_root, tmp_path):  # noqa: F811
    """The same through models.config and the gateway, as after a push: the version is listed but its
    directory is corrupt. The rollout's wait for the load fails at once with the server's load error
    (not after its 5-minute timeout), the gateway refuses to send canary traffic to it, and the
    stable version answers throughout."""
    import shutil

    import requests

    from serving.gateway.app import start_gateway
    from serving.gateway.config import GatewaySettings
    from serving.model_server import start_model_server
    from serving.rollout import AdminApiError, GatewayAdminClient
    from tests.faults.scenarios import CORRUPTIONS
    from tests.serving.gateway.helpers import ADMIN_TOKEN, MODEL, instances, real_trips, write_model_config

    base = tmp_path / "base" / MODEL
    shutil.copytree(model_root / str(STABLE_VERSION), base / str(STABLE_VERSION))
    shutil.copytree(model_root / "2", base / "3")
    CORRUPTIONS["variables data bytes flipped"](base / "3")
    config = write_model_config(tmp_path / "models.config", base, served=[STABLE_VERSION, 3], stable=STABLE_VERSION, canary=None)
    server = start_model_server(port=0, rest_api_port=0, model_config_file=config, model_config_file_poll_wait_seconds=0.2)
    gateway = None
    try:
        gateway = start_gateway(GatewaySettings(
            rest_port=0, grpc_port=0, model_server_rest=server.rest_url, model_server_grpc=server.grpc_target,
            model_config_file=config, log_dir=tmp_path / "logs", state_file=tmp_path / "state.json", admin_token=ADMIN_TOKEN))
        admin = GatewayAdminClient(gateway.url, ADMIN_TOKEN)
        with pytest.raises(AdminApiError, match="failed to load on the model server: .*checksum"):
            admin.wait_until_available(MODEL, 3, timeout_s=120, poll_s=0.2)
        with pytest.raises(AdminApiError) as refused:
            admin.set_canary(MODEL, 3, 0.1)
        assert refused.value.status == 503, refused.value
        answer = requests.post(f"{gateway.url}/v1/models/{MODEL}:predict", json={"instances": instances(real_trips(2))},
                               timeout=30)
        assert answer.status_code == 200 and answer.headers["X-Model-Version"] == str(STABLE_VERSION), answer.text
    finally:
        if gateway is not None:
            gateway.stop()
        server.stop()
