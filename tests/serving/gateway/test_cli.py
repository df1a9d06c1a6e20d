"""`mlops serve`: the embedded model server and the gateway from one command, stopped cleanly by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from serving.prediction_log import read_prediction_logs
from tests.serving.gateway.helpers import MODEL, STABLE_VERSION, instances, real_trips, write_model_config

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def test_mlops_serve_runs_model_server_and_gateway_until_sigterm(model_root, tmp_path):
    config_file = write_model_config(tmp_path / "serving" / "models.config", model_root, served=[1, 2], stable=1, canary=2)
    (tmp_path / "mlops.toml").write_text(
        "[serving]\n"
        f'model_name = "{MODEL}"\n'
        f'model_base_dir = "{model_root.parent}"\n'
        f'model_config_file = "{config_file}"\n'
    )
    gateway_toml = tmp_path / "gateway.toml"
    gateway_toml.write_text('[gateway]\nlog_dir = "logs"\nstate_file = "state.json"\n')
    mlops = Path(sys.executable).with_name("mlops")
    process = subprocess.Popen(
        [str(mlops), "--config", str(tmp_path / "mlops.toml"), "serve", "--gateway-config", str(gateway_toml),
         "--model-rest-port", "0", "--model-grpc-port", "0", "--rest-port", "0", "--grpc-port", "0"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = [process.stdout.readline(), process.stdout.readline()]
        assert lines[1].startswith("gateway:"), "".join(lines) + process.stderr.read()
        url = lines[1].split()[2]
        response = requests.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": instances(real_trips(2))}, timeout=60)
        assert response.status_code == 200, response.text
        assert response.headers["X-Model-Version"] == str(STABLE_VERSION)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    assert len(read_prediction_logs(tmp_path / "logs")) == 2  # written on the way out
