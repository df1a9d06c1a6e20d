"""`python -m serving.model_server`: the command docker-compose's stand-in and scripts run."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.fixtures.servers import free_port, model_server_process
from tests.serving.contract.clients import GrpcClient, RestClient
from tests.serving.contract.layout import METRICS_PATH, install_version

pytestmark = [pytest.mark.usefixtures("embedded_only"), pytest.mark.timeout(300)]


def _wait_for_ports(process: subprocess.Popen, stderr_path: Path, timeout: float = 180) -> tuple[int, int]:
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    grpc_port = rest_port = None
    while grpc_port is None or rest_port is None:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no start-up lines within {timeout}s; stderr: {stderr_path.read_text()[-2000:]}") from None
        if line is None:
            raise AssertionError(f"server exited with {process.wait()}; stderr: {stderr_path.read_text()[-2000:]}")
        if match := re.match(r"Running gRPC ModelServer at \S+:(\d+) \.\.\.", line):
            grpc_port = int(match.group(1))
        if match := re.match(r"Exporting HTTP/REST API at:\S+:(\d+) \.\.\.", line):
            rest_port = int(match.group(1))
    return grpc_port, rest_port


@pytest.fixture
def running_cli(tmp_path: Path, exported_models: dict) -> Iterator[dict[str, Any]]:
    install_version(exported_models[1.0], tmp_path / "taxi", 5)
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}', encoding="utf-8")
    stderr_path = tmp_path / "stderr.log"
    process = model_server_process(
        [
            f"--port={free_port()}",
            f"--rest_api_port={free_port()}",
            "--host=127.0.0.1",
            "--model_name=taxi",
            f"--model_base_path={tmp_path / 'taxi'}",
            f"--monitoring_config_file={monitoring}",
            "--file_system_poll_wait_seconds=1",
            "--tensorflow_intra_op_parallelism=1",
            "--tensorflow_inter_op_parallelism=1",
        ],
        stderr_path,
    )
    try:
        grpc_port, rest_port = _wait_for_ports(process, stderr_path)
        yield {"process": process, "rest": RestClient(f"http://127.0.0.1:{rest_port}"), "grpc": f"127.0.0.1:{grpc_port}", "stderr": stderr_path}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def test_cli_serves_both_protocols_and_stops_cleanly_on_sigterm(running_cli: dict[str, Any], taxi_inputs: dict) -> None:
    rest: RestClient = running_cli["rest"]
    assert [(s.version, s.state) for s in rest.status("taxi")] == [(5, "AVAILABLE")]
    inputs = {k: v[:4] for k, v in taxi_inputs.items()}
    over_rest = rest.predict("taxi", inputs)
    grpc_client = GrpcClient(running_cli["grpc"])
    try:
        over_grpc = grpc_client.predict("taxi", inputs)
    finally:
        grpc_client.close()
    assert list(over_rest["class"]) == list(over_grpc["class"])
    assert ":tensorflow:serving:request_count" in rest.raw("GET", METRICS_PATH).text

    process: subprocess.Popen = running_cli["process"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0


def test_cli_refuses_to_start_on_an_invalid_config(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "taxi" base_path: "taxi" model_platform: "tensorflow" } }')
    stderr_path = tmp_path / "stderr.log"
    process = model_server_process([f"--model_config_file={config}", f"--port={free_port()}", "--host=127.0.0.1"], stderr_path)
    try:
        assert process.wait(timeout=180) == 255  # tensorflow_model_server: main() returns -1
    finally:
        if process.poll() is None:
            process.kill()
    assert (
        "Failed to start server. Error: INVALID_ARGUMENT: Expected model taxi to have an absolute path or URI; "
        "got base_path()=taxi"
    ) in stderr_path.read_text()


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        stdout, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stdout


def test_cli_reports_an_unknown_argument_and_starts_anyway_like_tensorflow_model_server(tmp_path: Path, exported_models: dict) -> None:
    install_version(exported_models[1.0], tmp_path / "taxi", 3)
    stderr_path = tmp_path / "stderr.log"
    grpc_port = free_port()
    process = model_server_process(["--enable_batching_typo", "stray", f"--port={grpc_port}", "--model_name=taxi",
                                    f"--model_base_path={tmp_path / 'taxi'}", "--host=127.0.0.1"], stderr_path)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first == "unknown argument: --enable_batching_typo\n", first + stderr_path.read_text()[-2000:]
        lines = []
        while not any(line.startswith("Running gRPC ModelServer at ") for line in lines):
            line = process.stdout.readline()
            assert line, f"exited with {process.wait()}: {stderr_path.read_text()[-2000:]}"
            lines.append(line)
        assert any("--rest_api_port" in line for line in lines)  # the usage
        assert f"Running gRPC ModelServer at 127.0.0.1:{grpc_port} ...\n" in lines
        assert not any(line.startswith("Exporting HTTP/REST API") for line in lines)  # --rest_api_port=0 by default
        client = GrpcClient(f"127.0.0.1:{grpc_port}")
        try:
            assert client.status("taxi")
        finally:
            client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


@pytest.mark.parametrize("args", [["--port=http"], ["--enable_batching=maybe"], ["--help"]])
def test_cli_exits_255_with_the_usage_on_a_bad_flag_value_or_help(tmp_path: Path, args: list[str]) -> None:
    stderr_path = tmp_path / "stderr.log"
    status, stdout = _finish(model_server_process([*args, "--model_base_path=/nonexistent"], stderr_path))
    assert status == 255
    assert "--rest_api_timeout_in_ms" in stdout  # the usage, on stdout as main.cc prints it
    if args != ["--help"]:
        assert args[0].split("=")[0] in stderr_path.read_text()


def test_cli_without_a_grpc_port_or_socket_fails_with_tf_servings_words(tmp_path: Path) -> None:
    stderr_path = tmp_path / "stderr.log"
    status, _ = _finish(model_server_process(["--port=0", "--model_base_path=/nonexistent"], stderr_path))
    assert status == 255
    assert ("Failed to start server. Error: INVALID_ARGUMENT: At least one of server_options.grpc_port or "
            "server_options.grpc_socket_path must be set.") in stderr_path.read_text()
