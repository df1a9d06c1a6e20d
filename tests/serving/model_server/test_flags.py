"""The command line and start-up of `python -m serving.model_server` against tensorflow_model_server's:
the command line TF Serving's own test harness builds (tensorflow_model_server_test_base.py) starts
it, gRPC answers over the Unix socket of `--grpc_socket_path`, `--rest_api_timeout_in_ms` bounds a
REST call, and a malformed `--model_config_file` fails with TF Serving's text and exit status.
Real processes and real SavedModels (tests/fixtures/tiny_model.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from serving.model_server.server import (
    IGNORED_FLAGS,
    START_FAILURE_EXIT_STATUS,
    build_arg_parser,
    parse_grpc_channel_arguments,
)
from tests.fixtures.polling import poll_until
from tests.fixtures.servers import free_port, model_server_process

pytestmark = pytest.mark.timeout(300)
PARSE_ERROR = "Error parsing text-format tensorflow.serving.ModelServerConfig"


def _instances() -> list[dict[str, Any]]:
    """Two rows of the tiny model's inputs (one per feature, by its kind)."""
    from transforms.features import PAYMENT_TYPE_KEY, SERVING_FEATURES, Kind

    def value(name: str, kind: Kind, row: int) -> Any:
        if name == PAYMENT_TYPE_KEY:
            return ["Credit Card", "Cash"][row]
        return {Kind.FLOAT: 1.5, Kind.INT: 1, Kind.STRING: "x"}[kind]

    return [{f.name: value(f.name, f.kind, row) for f in SERVING_FEATURES} for row in range(2)]


def _grpc_predict(target: str, instances: list[dict[str, Any]]) -> list[float]:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving.protocol import PROBABILITY_OUTPUT
    from transforms.features import SERVING_FEATURES, Kind

    dtypes = {Kind.FLOAT: tf.float32, Kind.INT: tf.int64, Kind.STRING: tf.string}
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    for feature in SERVING_FEATURES:
        values = [row[feature.name] for row in instances]
        request.inputs[feature.name].CopyFrom(tf.make_tensor_proto(values, dtype=dtypes[feature.kind]))
    with grpc.insecure_channel(target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return [float(p) for p in tf.make_ndarray(response.outputs[PROBABILITY_OUTPUT])]


@pytest.fixture(scope="module")
def model_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures.tiny_model import export_tiny_model

    base = tmp_path_factory.mktemp("flags") / "default"
    export_tiny_model(base / "1", weight=1.0)
    return base


# --- the flags, parsed the way tensorflow::Flags parses them ------------------------------------


def test_every_tensorflow_model_server_flag_is_accepted_in_its_tf_form() -> None:
    parser = build_arg_parser()
    args = parser.parse_args(
        ["--enable_batching", "--prefer_tflite_model=true", "--enable_profiler=false", "--num_load_threads=4",
         "--rest_api_timeout_in_ms=5000", "--grpc_socket_path=/tmp/x.sock", "--grpc_channel_arguments=a=1,b=c"]
    )
    assert args.enable_batching is True and args.prefer_tflite_model is True and args.enable_profiler is False
    assert (args.num_load_threads, args.rest_api_timeout_in_ms, args.grpc_socket_path) == (4, 5000, "/tmp/x.sock")
    assert parser.parse_args([]).rest_api_timeout_in_ms == 30000  # TF Serving's default
    for name, (kind, _reason) in IGNORED_FLAGS.items():
        value = {"bool": "true", "int": "1", "float": "0.5", "str": "x"}[kind]
        assert getattr(parser.parse_args([f"--{name}={value}"]), name) is not None
    # tensorflow::Flags knows no abbreviations: an unknown argument, left over
    assert parser.parse_known_args(["--model_config=x"])[1] == ["--model_config=x"]


def test_grpc_channel_arguments_are_split_and_typed_like_tf_serving() -> None:
    assert parse_grpc_channel_arguments("grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb,grpc.so_reuseaddr=1") == [
        ("grpc.max_connection_age_ms", 2000), ("grpc.lb_policy_name", "grpclb"), ("grpc.so_reuseaddr", 1)
    ]
    assert parse_grpc_channel_arguments("") == []
    assert parse_grpc_channel_arguments("a=-3,b=99999999999") == [("a", -3), ("b", "99999999999")]  # int32 or string
    from serving.model_server.server import StartupError

    with pytest.raises(StartupError, match="expected key=value, got 'grpc.keepalive'"):
        parse_grpc_channel_arguments("grpc.keepalive")


# --- real processes ------------------------------------------------------------------------------


def test_tf_serving_harness_command_line_serves_grpc_over_tcp_and_the_unix_socket(model_base: Path, tmp_path: Path) -> None:
    """The flags RunServer passes (TF Lite's --prefer_tflite_model included), then Predict over
    `localhost:<port>`, `unix:<socket>` and REST, as testPredict / testPredictUDS do."""
    import grpc

    port, rest_api_port = free_port(), free_port()
    socket_path = tmp_path / "tf-serving.sock"
    stderr_path = tmp_path / "stderr.log"
    process = model_server_process(
        [
            f"--port={port}",
            f"--rest_api_port={rest_api_port}",
            "--rest_api_timeout_in_ms=5000",
            f"--grpc_socket_path={socket_path}",
            "--model_name=default",
            f"--model_base_path={model_base}",
            "--prefer_tflite_model=true",
            "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb,grpc.so_reuseaddr=1",
        ],
        stderr_path,
    )
    try:
        instances = _instances()

        def listening() -> bool:
            assert process.poll() is None, stderr_path.read_text()[-3000:]
            try:
                _grpc_predict(f"localhost:{port}", instances)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNAVAILABLE:
                    return False
                raise
            return True

        poll_until(listening, "the server's gRPC port", timeout=180, interval=0.5)
        over_tcp = _grpc_predict(f"localhost:{port}", instances)
        over_socket = _grpc_predict(f"unix:{socket_path}", instances)
        over_rest = requests.post(f"http://localhost:{rest_api_port}/v1/models/default:predict",
                                  json={"instances": instances}, timeout=30)
        assert over_rest.status_code == 200, over_rest.text
        assert over_socket == over_tcp
        assert [row["probability"] for row in over_rest.json()["predictions"]] == pytest.approx(over_tcp, rel=1e-6)
        assert over_tcp[0] != over_tcp[1]
        assert "--prefer_tflite_model=true accepted and ignored: TF Lite models are not served" in stderr_path.read_text()
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert not socket_path.exists()  # gRPC removes its socket file when it stops


def test_a_malformed_model_config_file_fails_with_tf_servings_text_and_status(tmp_path: Path) -> None:
    """testBadModelConfig: the harness looks for TF Serving's parser message on stderr."""
    config = tmp_path / "bad_model_config.txt"
    config.write_text("improperly formatted file")
    stderr_path = tmp_path / "stderr.log"
    process = model_server_process([f"--port={free_port()}", f"--rest_api_port={free_port()}", f"--model_config_file={config}"], stderr_path)
    assert process.wait(timeout=180) == START_FAILURE_EXIT_STATUS == 255
    stderr = stderr_path.read_text()
    assert f"Failed to start server. Error: {config}:1:1: {PARSE_ERROR}: 1:1: " in stderr
    assert 'has no field named "improperly"' in stderr


def test_tls_flags_are_refused_rather_than_served_in_plaintext(tmp_path: Path, model_base: Path) -> None:
    stderr_path = tmp_path / "stderr.log"
    process = model_server_process([f"--port={free_port()}", f"--model_base_path={model_base}",
                                    f"--ssl_config_file={tmp_path / 'ssl.config'}"], stderr_path)
    assert process.wait(timeout=180) == 255
    assert "Failed to start server. Error: --ssl_config_file is not supported: TLS is not supported" in stderr_path.read_text()


# --- --rest_api_timeout_in_ms (in-process) -------------------------------------------------------


class _Counting:
    """A real model whose call time grows with its input: it counts up to `n` in a tf.while_loop."""

    def __new__(cls) -> Any:
        import tensorflow as tf

        class Counting(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="n")])
            def count(self, n: tf.Tensor) -> dict[str, tf.Tensor]:
                done = tf.while_loop(lambda i: i < n[0], lambda i: i + 1, [tf.constant(0, tf.int64)])[0]
                return {"count": tf.reshape(done, [1])}

        return Counting()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import tensorflow as tf

    from serving.model_server import start_model_server

    base = tmp_path_factory.mktemp("slow") / "counting"
    module = _Counting()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.count})
    handle = start_model_server(port=0, rest_api_port=0, model_name="counting", model_base_path=base,
                                rest_api_timeout_in_ms=300, file_system_poll_wait_seconds=0)
    yield handle
    handle.stop()


def test_rest_api_timeout_in_ms_answers_deadline_exceeded_and_lets_fast_calls_through(slow_server: Any) -> None:
    url = f"{slow_server.rest_url}/v1/models/counting:predict"
    fast = requests.post(url, json={"instances": [10]}, timeout=30)
    assert fast.status_code == 200 and fast.json() == {"predictions": [10]}
    slow = requests.post(url, json={"instances": [1_000_000]}, timeout=60)
    assert slow.status_code == 504, slow.text  # DEADLINE_EXCEEDED, as TF Serving's timed-out session run
    assert slow.json() == {"error": "Timed out waiting for the model (--rest_api_timeout_in_ms=300)"}
    # metadata is not a model call, and the server still answers
    assert requests.get(f"{slow_server.rest_url}/v1/models/counting", timeout=30).status_code == 200
