"""`--enable_signature_method_name_check`: off by default (TF Serving's default; the other contract
tests run that way), on here, on an embedded server of its own serving half-plus-two as a native
TF2 export (every signature `tensorflow/serving/predict`) and as a TF1 export (real method names).

With the check on, Classify/Regress/MultiInference refuse a signature of another method name with
TF Serving's messages (classifier.cc, regressor.cc), and Predict refuses one that is none of
predict/classify/regress (predict_util.cc).
"""

from __future__ import annotations

import base64
import json
from typing import Any, Iterator

import pytest

from serving.model_server.server import build_arg_parser
from tests.fixtures.half_plus_two import example_bytes, export_half_plus_two_tf1, export_half_plus_two_tf2
from tests.serving.contract.clients import CallError, GrpcClient, RestClient
from tests.serving.contract.layout import install_version, model_entry

REGRESS = "Expected regression signature method_name to be tensorflow/serving/regress. Was: tensorflow/serving/"
CLASSIFY = "Expected classification signature method_name to be tensorflow/serving/classify. Was: tensorflow/serving/"
EXAMPLES = [{"x": 2.0}, {"x": 4.0}]


@pytest.mark.parametrize(
    ("argv", "enabled"),
    [
        ([], False),
        (["--enable_signature_method_name_check"], True),
        (["--enable_signature_method_name_check=true"], True),
        (["--enable_signature_method_name_check=false"], False),
    ],
)
def test_flag_parses_like_the_other_boolean_flags(argv: list[str], enabled: bool) -> None:
    assert build_arg_parser().parse_args(argv).enable_signature_method_name_check is enabled


@pytest.fixture(scope="module")
def checking_server(tmp_path_factory: pytest.TempPathFactory, embedded_only: None) -> Iterator[Any]:
    from serving.model_config import write_model_config
    from serving.model_server import start_model_server
    from tensorflow_serving.config import model_server_config_pb2

    root = tmp_path_factory.mktemp("method_name_check")
    config = model_server_config_pb2.ModelServerConfig()
    for name, export in (("tf2", export_half_plus_two_tf2), ("tf1", export_half_plus_two_tf1)):
        install_version(export(root / f"export_{name}"), root / name, 1)
        config.model_config_list.config.append(model_entry(name, str(root / name)))
    write_model_config(config, root / "models.config")
    handle = start_model_server(
        port=0, rest_api_port=0, host="127.0.0.1", model_config_file=root / "models.config",
        file_system_poll_wait_seconds=0, enable_signature_method_name_check=True,
    )
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def embedded_only(serving_target: Any) -> None:  # module-scoped twin of conftest's: starts a server of its own
    if not serving_target.embedded:
        pytest.skip("starts an embedded server with the check on")


@pytest.fixture(scope="module")
def checking_rest(checking_server: Any) -> RestClient:
    return RestClient(checking_server.rest_url)


@pytest.fixture(scope="module")
def checking_grpc(checking_server: Any) -> Iterator[GrpcClient]:
    client = GrpcClient(checking_server.grpc_target)
    yield client
    client.close()


def _predict(rest: RestClient, model: str, document: dict[str, Any]) -> Any:
    response = rest.raw("POST", f"/v1/models/{model}:predict", json.dumps(document))
    assert response.status_code == 200, response.text
    return json.loads(response.text)


def test_tf2_classify_and_regress_signatures_are_refused(checking_rest: RestClient, checking_grpc: GrpcClient) -> None:
    with pytest.raises(CallError) as caught:
        checking_rest.regress("tf2", EXAMPLES, signature_name="regress_x_to_y")
    assert (caught.value.http_status, caught.value.message) == (400, REGRESS + "predict")
    with pytest.raises(CallError) as caught:
        checking_rest.classify("tf2", EXAMPLES, signature_name="classify_x_to_y")
    assert (caught.value.http_status, caught.value.message) == (400, CLASSIFY + "predict")

    examples = [example_bytes(2.0)]
    with pytest.raises(CallError) as caught:
        checking_grpc.regress("tf2", examples, signature_name="regress_x_to_y")
    assert (caught.value.code, caught.value.message) == ("INVALID_ARGUMENT", REGRESS + "predict")
    with pytest.raises(CallError) as caught:
        checking_grpc.classify("tf2", examples, signature_name="classify_x_to_y")
    assert (caught.value.code, caught.value.message) == ("INVALID_ARGUMENT", CLASSIFY + "predict")
    with pytest.raises(CallError) as caught:
        checking_grpc.multi_inference("tf2", [("regress_x_to_y", "tensorflow/serving/regress")], examples)
    assert (caught.value.code, caught.value.message) == ("INVALID_ARGUMENT", REGRESS + "predict")


def test_tf1_method_names_pass_the_check(checking_rest: RestClient, checking_grpc: GrpcClient) -> None:
    assert checking_rest.regress("tf1", EXAMPLES, signature_name="regress_x_to_y") == [3.0, 4.0]
    assert checking_rest.classify("tf1", EXAMPLES, signature_name="classify_x_to_y") == [[["", 3.0]], [["", 4.0]]]
    multi = checking_grpc.multi_inference(
        "tf1", [("classify_x_to_y", "tensorflow/serving/classify"), ("regress_x_to_y2", "tensorflow/serving/regress")],
        [example_bytes(2.0)],
    )
    assert multi.results[1].regression_result.regressions[0].value == 4.0


def test_tf1_signature_of_another_method_is_refused_by_name(checking_rest: RestClient) -> None:
    """Off, this is refused for its two outputs (test_classify_regress.py); on, for its name first."""
    with pytest.raises(CallError) as caught:
        checking_rest.regress("tf1", EXAMPLES, signature_name="classify_x_to_y")
    assert caught.value.message == REGRESS + "classify"


@pytest.mark.parametrize("model", ["tf2", "tf1"])
def test_predict_still_serves_predict_classify_and_regress_signatures(checking_rest: RestClient, model: str) -> None:
    assert _predict(checking_rest, model, {"instances": [2.0, 3.0, 4.0]}) == {"predictions": [3.0, 3.5, 4.0]}
    document = {"signature_name": "regress_x_to_y", "instances": [{"b64": base64.b64encode(example_bytes(2.0)).decode()}]}
    assert _predict(checking_rest, model, document) == {"predictions": [[3.0]]}

