"""Every way a request can be wrong: the status code, TF Serving's message, and a server still up."""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pytest

from tests.serving.contract.clients import CallError, GrpcClient, RestClient, make_tensor_proto
from tests.serving.contract.layout import CONTRACT_MODEL, STABLE_VERSION

PREDICT = f"/v1/models/{CONTRACT_MODEL}:predict"


def _row(inputs: dict[str, np.ndarray], index: int = 0) -> dict[str, Any]:
    return {k: (v[index].decode() if isinstance(v[index], bytes) else v[index].item()) for k, v in inputs.items()}


def _rest_error(rest: RestClient, body: Any, path: str = PREDICT, method: str = "POST") -> tuple[int, str]:
    text = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body, allow_nan=True)
    response = rest.raw(method, path, text)
    assert response.status_code != 200, f"expected an error, got 200: {response.text[:200]}"
    document = json.loads(response.text)
    assert list(document) == ["error"], document  # TF Serving's error document: one key
    return response.status_code, document["error"]


# --- model, version, label --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "label", "code", "http", "message"),
    [
        (None, None, "NOT_FOUND", 404, "Servable not found for request: Latest(nope)"),
        (7, None, "NOT_FOUND", 404, "Servable not found for request: Specific(nope, 7)"),
        (None, "gold", "INVALID_ARGUMENT", 400, "Unrecognized servable version label: gold"),
    ],
)
def test_unknown_model(client: RestClient | GrpcClient, taxi_inputs: dict, version: Any, label: Any, code: str, http: int, message: str) -> None:
    with pytest.raises(CallError) as caught:
        client.predict("nope", taxi_inputs, version=version, label=label)
    assert (caught.value.code, caught.value.message) == (code, message)
    if client.api == "rest":
        assert caught.value.http_status == http


def test_unknown_version_of_a_known_model(client: RestClient | GrpcClient, taxi_inputs: dict) -> None:
    with pytest.raises(CallError) as caught:
        client.predict(CONTRACT_MODEL, taxi_inputs, version=7)
    assert (caught.value.code, caught.value.message) == ("NOT_FOUND", f"Servable not found for request: Specific({CONTRACT_MODEL}, 7)")


def test_unknown_label_of_a_known_model(client: RestClient | GrpcClient, taxi_inputs: dict) -> None:
    with pytest.raises(CallError) as caught:
        client.predict(CONTRACT_MODEL, taxi_inputs, label="gold")
    assert (caught.value.code, caught.value.message) == ("INVALID_ARGUMENT", "Unrecognized servable version label: gold")


def test_unknown_signature(client: RestClient | GrpcClient, taxi_inputs: dict) -> None:
    with pytest.raises(CallError) as caught:
        client.predict(CONTRACT_MODEL, taxi_inputs, signature_name="nope")
    if client.api == "rest":  # the REST handler looks the signature up to type the JSON
        assert (caught.value.http_status, caught.value.message) == (400, 'Serving signature name: "nope" not found in signature def')
    else:
        assert (caught.value.code, caught.value.message) == ("FAILED_PRECONDITION", 'Serving signature key "nope" not found.')


# --- JSON body --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "JSON Parse error: The document is empty"),
        ('{"instances": [1,', "JSON Parse error: "),
        ("{instances: []}", "JSON Parse error: Missing a name for object member."),
        ("[1, 2]", "Is not object"),
        ("{}", "Missing 'inputs' or 'instances' key"),
        ('{"instances": []}', "No values in 'instances' array"),
        ('{"instances": {"fare": 1.0}}', "Excepting 'instances' to be an list/array"),
        ('{"instances": [], "inputs": {}}', "expecting only one of 'inputs' or 'instances' keys to exist"),
        ('{"signature_name": 5, "instances": [1]}', "'signature_name' key must be a string value."),
    ],
)
def test_malformed_bodies_are_400_with_tf_servings_message(rest: RestClient, body: str, message: str) -> None:
    status, error = _rest_error(rest, body)
    assert status == 400
    assert message in error


def test_wrong_dtype_names_the_input_and_the_expected_type(rest: RestClient, taxi_inputs: dict) -> None:
    row = _row(taxi_inputs)
    row["fare"] = "twelve dollars"
    status, error = _rest_error(rest, {"instances": [row]})
    assert status == 400
    assert "key: fare" in error and 'JSON Value: "twelve dollars" Type: String is not of expected type: float' in error


def test_float_for_an_int_input_is_a_type_error(rest: RestClient, taxi_inputs: dict) -> None:
    row = _row(taxi_inputs)
    row["trip_start_hour"] = 3.5
    status, error = _rest_error(rest, {"instances": [row]})
    assert status == 400
    assert "key: trip_start_hour" in error and "is not of expected type: int64" in error


def test_null_is_not_a_value(rest: RestClient, taxi_inputs: dict) -> None:
    row = _row(taxi_inputs)
    row["fare"] = None
    status, error = _rest_error(rest, {"instances": [row]})
    assert status == 400
    assert "key: fare" in error and "Type: Null" in error


def test_a_lone_surrogate_in_a_string_is_a_client_error(rest: RestClient, taxi_inputs: dict) -> None:
    # Valid JSON escape, but not text: it cannot become UTF-8 tensor bytes.
    row = _row(taxi_inputs)
    row["company"] = "Flash \udcff Cab"
    status, error = _rest_error(rest, {"instances": [row]})
    assert status == 400 and error


def test_int_too_large_for_float32_is_refused_not_rounded(rest: RestClient, taxi_inputs: dict) -> None:
    row = _row(taxi_inputs)
    row["fare"] = 16777217  # 2**24 + 1: float32 cannot hold it
    status, error = _rest_error(rest, {"instances": [row]})
    assert status == 400
    assert "Cannot convert JSON value: 16777217 to float without loss of precision." in error


def test_missing_input_in_rows_names_the_input(rest: RestClient, taxi_inputs: dict) -> None:
    row = _row(taxi_inputs)
    del row["fare"]
    status, error = _rest_error(rest, {"instances": [row]})
    assert status == 400
    assert "Failed to process element: 0 of 'instances' list." in error and "fare" in error


def test_missing_input_in_columns_names_the_input(rest: RestClient, taxi_inputs: dict) -> None:
    columns = {k: [v] for k, v in _row(taxi_inputs).items()}
    del columns["fare"]
    status, error = _rest_error(rest, {"inputs": columns})
    assert (status, error) == (400, "Missing named input: fare in 'inputs' object.")


def test_unknown_input_in_rows_names_the_input(rest: RestClient, taxi_inputs: dict) -> None:
    row = _row(taxi_inputs)
    row["colour"] = "red"
    status, error = _rest_error(rest, {"instances": [row]})
    assert status == 400
    assert "JSON object: does not have named input: colour" in error


@pytest.mark.usefixtures("embedded_only")
def test_unknown_input_in_columns_is_refused(rest: RestClient, taxi_inputs: dict) -> None:
    """TF Serving ignores it; the embedded server refuses: a misspelt input is data the client loses."""
    columns = {k: [v] for k, v in _row(taxi_inputs).items()}
    columns["colour"] = ["red"]
    status, error = _rest_error(rest, {"inputs": columns})
    assert status == 400
    assert error.startswith("input tensor alias not found in signature: colour.")


def test_ragged_instances_are_refused(rest: RestClient, taxi_inputs: dict) -> None:
    first, second = _row(taxi_inputs, 0), _row(taxi_inputs, 1)
    second["fare"] = [second["fare"], 1.0]
    status, error = _rest_error(rest, {"instances": [first, second]})
    assert status == 400
    assert "Failed to process element: 1 key: fare of 'instances' list." in error


def test_ragged_nested_lists_are_refused(rest: RestClient) -> None:
    status, error = _rest_error(rest, {"signature_name": "serving_examples", "inputs": [["a"], ["b", "c"]]})
    assert status == 400
    assert "Encountered list at unexpected size: 2 at level: 1 expected size: 1" in error


def test_bad_base64_is_refused(rest: RestClient) -> None:
    status, error = _rest_error(rest, {"signature_name": "serving_examples", "instances": [{"b64": "not base64!"}]})
    assert status == 400
    assert "Unable to base64 decode" in error


def test_another_rank_than_declared_reaches_the_graph(rest: RestClient, taxi_inputs: dict) -> None:
    """TF Serving checks input names and dtypes, not shapes: [1, 1] tensors for inputs declared [-1]
    are fed as they are, and this model's element-wise graph answers [1, 1] outputs (a graph that
    cannot take a shape answers TF's INVALID_ARGUMENT: test_half_plus_two.py)."""
    columns = {k: [[v]] for k, v in _row(taxi_inputs).items()}
    response = rest.raw("POST", PREDICT, json.dumps({"inputs": columns}))
    assert response.status_code == 200, response.text
    outputs = json.loads(response.text)["outputs"]
    expected = rest.predict(CONTRACT_MODEL, {k: v[:1] for k, v in taxi_inputs.items()}, columnar=True)
    assert outputs["class"] == [[int(expected["class"][0])]]
    assert outputs["probability"][0][0] == pytest.approx(float(expected["probability"][0]), rel=1e-6)


# --- gRPC tensors -----------------------------------------------------------------------------


def test_grpc_missing_and_extra_inputs_are_named(grpc_client: GrpcClient, taxi_inputs: dict) -> None:
    inputs = dict(taxi_inputs)
    inputs.pop("fare")
    with pytest.raises(CallError) as caught:
        grpc_client.predict(CONTRACT_MODEL, inputs)
    assert caught.value.code == "INVALID_ARGUMENT"
    assert "Missing but required: {fare}." in caught.value.message

    inputs["colour"] = np.asarray([b"red"] * len(inputs["company"]), dtype=object)
    with pytest.raises(CallError) as caught:
        grpc_client.predict(CONTRACT_MODEL, inputs)
    assert caught.value.code == "INVALID_ARGUMENT"
    # TF's saved_model::GetInputValues, which TF Serving's Predict uses for the names
    assert caught.value.message.startswith("Signature input alias: fare(feed name: ")
    assert "not found in request and no default value provided. Inputs expected to be in the request {" in caught.value.message


def test_grpc_wrong_dtype_is_invalid_argument(grpc_client: GrpcClient, taxi_inputs: dict) -> None:
    inputs = dict(taxi_inputs)
    inputs["fare"] = inputs["fare"].astype(np.float64)
    with pytest.raises(CallError) as caught:
        grpc_client.predict(CONTRACT_MODEL, inputs)
    assert caught.value.code == "INVALID_ARGUMENT"
    assert "to be float but double is provided" in caught.value.message


def test_grpc_tensor_with_more_values_than_its_shape_is_refused(grpc_client: GrpcClient, taxi_inputs: dict) -> None:
    inputs: dict[str, Any] = dict(taxi_inputs)
    broken = make_tensor_proto(inputs["fare"])
    broken.tensor_shape.dim[0].size = 1  # 32 values for a shape of [1]
    inputs["fare"] = broken
    with pytest.raises(CallError) as caught:
        grpc_client.predict_response(CONTRACT_MODEL, inputs)
    assert caught.value.code == "INVALID_ARGUMENT"
    assert "fare" in caught.value.message


def test_grpc_model_spec_without_name(grpc_client: GrpcClient, taxi_inputs: dict) -> None:
    with pytest.raises(CallError) as caught:
        grpc_client.predict("", taxi_inputs)
    assert (caught.value.code, caught.value.message) == ("INVALID_ARGUMENT", "ModelSpec has no name specified.")


# --- classify / regress / multi-inference on a predict-only model -----------------------------


@pytest.mark.parametrize("method", ["classify", "regress"])
def test_classify_and_regress_on_a_predict_signature(rest: RestClient, grpc_client: GrpcClient, method: str) -> None:
    """No method-name check by default (as TF Serving): the signature's many inputs are refused."""
    message = "Expected one input Tensor."
    status, error = _rest_error(rest, {"examples": [{"fare": 10.0, "payment_type": "Cash"}]}, path=f"/v1/models/{CONTRACT_MODEL}:{method}")
    assert (status, error) == (400, message)
    from beam_jobs.example_codec import serialize_row

    with pytest.raises(CallError) as caught:
        getattr(grpc_client, method)(CONTRACT_MODEL, [serialize_row({"fare": 10.0, "payment_type": "Cash"})])
    assert (caught.value.code, caught.value.message) == ("INVALID_ARGUMENT", message)


def test_classify_without_examples_key(rest: RestClient) -> None:
    status, error = _rest_error(rest, {"instances": [1]}, path=f"/v1/models/{CONTRACT_MODEL}:classify")
    assert status == 400
    assert "When method is classify, key 'examples' is expected and was not found" in error


def test_multi_inference_on_a_predict_model(grpc_client: GrpcClient) -> None:
    from beam_jobs.example_codec import serialize_row

    examples = [serialize_row({"fare": 10.0, "payment_type": "Cash"})]
    with pytest.raises(CallError) as caught:
        grpc_client.multi_inference(CONTRACT_MODEL, [("serving_default", "tensorflow/serving/predict")], examples)
    assert (caught.value.code, caught.value.message) == ("UNIMPLEMENTED", "Unsupported signature method_name: tensorflow/serving/predict")
    with pytest.raises(CallError) as caught:
        grpc_client.multi_inference(CONTRACT_MODEL, [("serving_default", "tensorflow/serving/classify")], examples)
    assert (caught.value.code, caught.value.message) == ("INVALID_ARGUMENT", "Expected one input Tensor.")


# --- paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("POST", f"/v1/models/{CONTRACT_MODEL}", f"Malformed request: POST /v1/models/{CONTRACT_MODEL}"),
        ("GET", f"/v1/models/{CONTRACT_MODEL}:predict", f"Malformed request: GET /v1/models/{CONTRACT_MODEL}:predict"),
        ("PUT", f"/v1/models/{CONTRACT_MODEL}", f"Malformed request: PUT /v1/models/{CONTRACT_MODEL}"),
        ("GET", "/v1/models", "Missing model name in request."),
        ("POST", f"/v1/models/{CONTRACT_MODEL}/versions/1/labels/stable:predict", "Malformed request"),
    ],
)
def test_malformed_paths(rest: RestClient, method: str, path: str, message: str) -> None:
    status, error = _rest_error(rest, "{}" if method != "GET" else None, path=path, method=method)
    assert status == 400
    assert error.startswith(message)


def test_paths_outside_v1_are_not_found(rest: RestClient) -> None:
    assert rest.raw("GET", "/v2/models/taxi").status_code == 404


# --- robustness -------------------------------------------------------------------------------


def _malformed_rest_requests(taxi_inputs: dict) -> list[tuple[str, str, bytes]]:
    rng = random.Random(7)
    good = _row(taxi_inputs)
    requests_: list[tuple[str, str, bytes]] = [
        ("POST", PREDICT, b"\x00\xff\xfe garbage"),
        ("POST", PREDICT, b"[" * 5000 + b"]" * 5000),  # deeper than any JSON parser's recursion
        ("POST", PREDICT, b'{"instances": [' + b'{"fare": 1},' * 2000 + b"1]}"),
        ("POST", PREDICT, b'{"instances": "' + b"x" * 100_000 + b'"}'),
        ("POST", PREDICT, json.dumps({"instances": [{**good, "fare": {"nested": [1, 2]}}]}).encode()),
        ("POST", PREDICT, json.dumps({"inputs": {"fare": [[[[1.0]]]]}}).encode()),
        ("POST", PREDICT, json.dumps({"instances": [good, [1, 2, 3]]}).encode()),
        ("POST", PREDICT, b'{"instances": [1e999999]}'),
        ("POST", PREDICT, b'{"instances": [123456789012345678901234567890]}'),
        ("POST", PREDICT, b'{"signature_name": "serving_examples", "instances": [{"b64": 5}]}'),
        ("POST", f"/v1/models/{CONTRACT_MODEL}/versions/99999999999999999999999:predict", b"{}"),
        ("POST", f"/v1/models/{CONTRACT_MODEL}:explain", b"{}"),
        ("GET", "/v1/models/%ff%fe/metadata", b""),
        ("DELETE", "/v1/models/taxi", b""),
        ("POST", f"/v1/models/{CONTRACT_MODEL}:classify", b'{"examples": [{"f": [[1]]}]}'),
        ("POST", f"/v1/models/{CONTRACT_MODEL}:regress", b'{"examples": [null]}'),
    ]
    while len(requests_) < 50:
        garbage = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
        requests_.append(("POST", PREDICT, garbage))
    return requests_


def test_server_survives_fifty_malformed_requests_in_a_row(rest: RestClient, grpc_client: GrpcClient, taxi_inputs: dict) -> None:
    for method, path, body in _malformed_rest_requests(taxi_inputs):
        response = rest.raw(method, path, body)
        assert 400 <= response.status_code < 500, (path, body[:60], response.status_code, response.text[:200])
    for size in (0, 1, 3):
        inputs: dict[str, Any] = {k: make_tensor_proto(v[:size]) for k, v in taxi_inputs.items()}
        inputs["fare"].ClearField("float_val")
        inputs["fare"].tensor_content = b"\x01\x02\x03"  # not a whole float
        with pytest.raises(CallError):
            grpc_client.predict_response(CONTRACT_MODEL, inputs)
    # Still serving, and serving correctly.
    assert [s.state for s in rest.status(CONTRACT_MODEL)] == ["AVAILABLE", "AVAILABLE"]
    ok = rest.predict(CONTRACT_MODEL, {k: v[:2] for k, v in taxi_inputs.items()}, version=STABLE_VERSION)
    assert ok["probability"].shape == (2,)


@pytest.mark.usefixtures("embedded_only")
def test_unreadable_bodies_are_400_not_500(rest: RestClient) -> None:
    """A 5,000-digit number and a body that is not what its Content-Encoding says (both were 500s)."""
    status, error = _rest_error(rest, '{"instances": [' + "1" * 5000 + "]}")
    assert status == 400 and "Number too big" in error
    response = rest.session.post(rest.base_url + PREDICT, data=b'{"instances": [1]}', timeout=30,
                                 headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert response.status_code == 400 and "Failed to read the request body" in response.json()["error"]
    assert response.headers.get("Connection", "").lower() == "close"
    assert rest.status(CONTRACT_MODEL)  # the client's next request on the same session is answered


@pytest.mark.usefixtures("embedded_only")
@pytest.mark.parametrize("feature, size", [("company", 10**9), ("fare", 2**40)], ids=["1e9-strings", "2^40-floats"])
def test_a_shape_far_beyond_the_values_sent_is_refused_not_allocated(
    rest: RestClient, grpc_client: GrpcClient, taxi_inputs: dict, feature: str, size: int
) -> None:
    """TF Serving fills a short tensor up to its shape whatever the size; the embedded server bounds it."""
    from serving.model_server.tensors import MAX_FILLED_ELEMENTS

    inputs: dict[str, Any] = {k: make_tensor_proto(v[:1]) for k, v in taxi_inputs.items()}
    inputs[feature].tensor_shape.dim[0].size = size  # one value, `size` elements asked for
    with pytest.raises(CallError) as caught:
        grpc_client.predict_response(CONTRACT_MODEL, inputs)
    assert caught.value.code == "INVALID_ARGUMENT"
    assert f"{feature} (shape [{size}] asks for {size} elements from 1 values" in caught.value.message
    assert str(MAX_FILLED_ELEMENTS) in caught.value.message
    ok = rest.predict(CONTRACT_MODEL, {k: v[:2] for k, v in taxi_inputs.items()}, version=STABLE_VERSION)
    assert ok["probability"].shape == (2,)


@pytest.mark.usefixtures("embedded_only")
def test_body_over_the_limit_is_400_naming_the_limit(tmp_path: Any, exported_models: dict) -> None:
    from serving.model_server import start_model_server
    from tests.serving.contract.layout import install_version

    install_version(exported_models[1.0], tmp_path / "small", 1)
    with start_model_server(
        port=0, rest_api_port=0, model_name="small", model_base_path=tmp_path / "small", rest_api_max_body_bytes=1000
    ) as handle:
        client = RestClient(handle.rest_url)
        status, error = _rest_error(client, json.dumps({"instances": ["x" * 2000]}), path="/v1/models/small:predict")
        assert status == 400
        assert "larger than the server's limit of 1000 bytes" in error
        assert client.status("small")[0].state == "AVAILABLE"
