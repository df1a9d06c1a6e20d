"""Predict: the formats clients use, checked against the same SavedModel run in this process."""

from __future__ import annotations

import base64
import json
from typing import Any, Callable

import numpy as np
import pytest

from beam_jobs.example_codec import serialize_row
from tests.serving.contract.clients import GrpcClient, RestClient
from tests.serving.contract.conftest import local_predict
from tests.serving.contract.layout import CANARY_VERSION, CONTRACT_MODEL, STABLE_VERSION

Signatures = Callable[..., Any]


def _assert_same_predictions(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    np.testing.assert_array_equal(got["class"], want["class"])
    np.testing.assert_allclose(np.asarray(got["probability"], dtype=np.float32), want["probability"], rtol=1e-6)


def _rows(inputs: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    return {k: v[:count] for k, v in inputs.items()}


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("version", [STABLE_VERSION, CANARY_VERSION])
def test_row_format_matches_the_model_in_process(
    client: RestClient | GrpcClient, taxi_inputs: dict, local_signatures: Signatures, version: int, batch: int
) -> None:
    inputs = _rows(taxi_inputs, batch)
    got = client.predict(CONTRACT_MODEL, inputs, version=version)
    _assert_same_predictions(got, local_predict(local_signatures(version), inputs))
    assert got["probability"].shape == (batch,)


def test_versions_really_differ(client: RestClient | GrpcClient, taxi_inputs: dict) -> None:
    stable = client.predict(CONTRACT_MODEL, taxi_inputs, version=STABLE_VERSION)["probability"]
    canary = client.predict(CONTRACT_MODEL, taxi_inputs, version=CANARY_VERSION)["probability"]
    assert not np.allclose(stable, canary)


def test_columnar_format_matches_the_model(rest: RestClient, taxi_inputs: dict, local_signatures: Signatures) -> None:
    inputs = _rows(taxi_inputs, 5)
    got = rest.predict(CONTRACT_MODEL, inputs, version=STABLE_VERSION, columnar=True)
    _assert_same_predictions(got, local_predict(local_signatures(STABLE_VERSION), inputs))


def test_response_shapes_follow_the_request_format(rest: RestClient, taxi_inputs: dict) -> None:
    """Row requests get a list of objects (several outputs); columnar ones an object of lists."""
    row = {k: _json_value(v[0]) for k, v in taxi_inputs.items()}
    rows_doc = json.loads(rest.raw("POST", f"/v1/models/{CONTRACT_MODEL}:predict", json.dumps({"instances": [row, row]})).text)
    assert list(rows_doc) == ["predictions"]
    assert len(rows_doc["predictions"]) == 2
    assert set(rows_doc["predictions"][0]) == {"class", "probability"}
    assert isinstance(rows_doc["predictions"][0]["class"], int)
    assert isinstance(rows_doc["predictions"][0]["probability"], float)

    columns = {k: [_json_value(v[0]), _json_value(v[1])] for k, v in taxi_inputs.items()}
    columns_doc = json.loads(rest.raw("POST", f"/v1/models/{CONTRACT_MODEL}:predict", json.dumps({"inputs": columns})).text)
    assert list(columns_doc) == ["outputs"]
    assert set(columns_doc["outputs"]) == {"class", "probability"}
    assert len(columns_doc["outputs"]["probability"]) == 2


def _json_value(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value.item()


def test_latest_is_the_highest_version(client: RestClient | GrpcClient, taxi_inputs: dict) -> None:
    latest = client.predict(CONTRACT_MODEL, taxi_inputs)
    highest = client.predict(CONTRACT_MODEL, taxi_inputs, version=max(STABLE_VERSION, CANARY_VERSION))
    np.testing.assert_array_equal(latest["probability"], highest["probability"])


@pytest.mark.parametrize(("label", "version"), [("stable", STABLE_VERSION), ("canary", CANARY_VERSION)])
def test_labels_route_to_their_version(client: RestClient | GrpcClient, taxi_inputs: dict, label: str, version: int) -> None:
    by_label = client.predict(CONTRACT_MODEL, taxi_inputs, label=label)
    by_version = client.predict(CONTRACT_MODEL, taxi_inputs, version=version)
    np.testing.assert_array_equal(by_label["probability"], by_version["probability"])


def test_grpc_response_names_the_version_and_signature(grpc_client: GrpcClient, taxi_inputs: dict) -> None:
    response = grpc_client.predict_response(CONTRACT_MODEL, _rows(taxi_inputs, 2), label="stable")
    assert response.model_spec.name == CONTRACT_MODEL
    assert response.model_spec.version.value == STABLE_VERSION
    assert response.model_spec.signature_name == "serving_default"


def test_grpc_output_filter_returns_only_the_named_outputs(grpc_client: GrpcClient, taxi_inputs: dict) -> None:
    response = grpc_client.predict_response(CONTRACT_MODEL, _rows(taxi_inputs, 3), output_filter=("class",))
    assert set(response.outputs) == {"class"}


def test_examples_signature_takes_serialized_examples_as_b64(
    client: RestClient | GrpcClient, taxi_rows: list, taxi_inputs: dict, local_signatures: Signatures
) -> None:
    """serving_examples on serialized tf.Examples gives the same answer as serving_default."""
    from transforms.features import SERVING_FEATURES, parse_value

    serialized = []
    for row in taxi_rows[:8]:
        parsed = {f.name: parse_value(f, row[f.name]) for f in SERVING_FEATURES}
        serialized.append(serialize_row(parsed))
    examples = {"examples": np.asarray(serialized, dtype=object)}
    got = client.predict(
        CONTRACT_MODEL, examples, version=STABLE_VERSION, signature_name="serving_examples", binary_inputs=("examples",)
    )
    _assert_same_predictions(got, local_predict(local_signatures(STABLE_VERSION, "serving_examples"), examples))
    dense = client.predict(CONTRACT_MODEL, _rows(taxi_inputs, 8), version=STABLE_VERSION)
    np.testing.assert_allclose(got["probability"], dense["probability"], rtol=1e-6)


def test_b64_values_work_in_a_plain_instances_list(rest: RestClient, taxi_rows: list) -> None:
    """A single-input signature accepts `instances` as a plain list of b64 objects."""
    from transforms.features import SERVING_FEATURES, parse_value

    parsed = {f.name: parse_value(f, taxi_rows[0][f.name]) for f in SERVING_FEATURES}
    b64 = base64.b64encode(serialize_row(parsed)).decode()
    body = json.dumps({"signature_name": "serving_examples", "instances": [{"b64": b64}, {"b64": b64}]})
    response = rest.raw("POST", f"/v1/models/{CONTRACT_MODEL}:predict", body)
    assert response.status_code == 200, response.text
    predictions = json.loads(response.text)["predictions"]
    assert len(predictions) == 2 and predictions[0] == predictions[1]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_json_accepts_nan_and_infinity(rest: RestClient, taxi_inputs: dict, local_signatures: Signatures, token: str) -> None:
    """TF Serving parses NaN/Infinity in request JSON; the model receives exactly that float."""
    row = {k: _json_value(v[0]) for k, v in taxi_inputs.items()}
    row["fare"] = "@fare@"
    text = json.dumps({"instances": [row]}).replace('"@fare@"', token)
    response = rest.raw("POST", f"/v1/models/{CONTRACT_MODEL}/versions/{STABLE_VERSION}:predict", text)
    assert response.status_code == 200, response.text
    inputs = _rows(taxi_inputs, 1)
    inputs["fare"] = np.asarray([float(token.replace("Infinity", "inf"))], dtype=np.float32)
    want = local_predict(local_signatures(STABLE_VERSION), inputs)
    got = json.loads(response.text)["predictions"][0]
    assert got["class"] == want["class"][0]
    assert np.float32(got["probability"]) == pytest.approx(want["probability"][0], rel=1e-6)


def test_int_for_a_float_input_is_accepted_when_exact(rest: RestClient, taxi_inputs: dict) -> None:
    row = {k: _json_value(v[0]) for k, v in taxi_inputs.items()}
    row["fare"] = 12  # an integer literal for a float input: exact in float32
    response = rest.raw("POST", f"/v1/models/{CONTRACT_MODEL}:predict", json.dumps({"instances": [row]}))
    assert response.status_code == 200, response.text
