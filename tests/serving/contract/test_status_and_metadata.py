"""Model status and metadata: what a deployment script and a client generator read from the server."""

from __future__ import annotations

import json

import pytest

from tests.serving.contract.clients import CallError, GrpcClient, RestClient
from tests.serving.contract.layout import CANARY_VERSION, CONTRACT_MODEL, STABLE_VERSION
from transforms.features import SERVING_FEATURES, Kind

SERVED = sorted({STABLE_VERSION, CANARY_VERSION}, reverse=True)
DTYPES = {Kind.FLOAT: "DT_FLOAT", Kind.INT: "DT_INT64", Kind.STRING: "DT_STRING"}


def test_status_lists_every_served_version_highest_first(client: RestClient | GrpcClient) -> None:
    states = client.status(CONTRACT_MODEL)
    assert [s.version for s in states] == SERVED
    assert all(s.state == "AVAILABLE" and s.error_code == "OK" and s.error_message == "" for s in states)


def test_status_of_one_version(client: RestClient | GrpcClient) -> None:
    (state,) = client.status(CONTRACT_MODEL, version=STABLE_VERSION)
    assert (state.version, state.state, state.error_code) == (STABLE_VERSION, "AVAILABLE", "OK")


def test_status_by_label_lists_every_version_as_tf_serving_does(client: RestClient | GrpcClient) -> None:
    # TF Serving's GetModelStatus narrows only by version number; a label path lists them all.
    assert [s.version for s in client.status(CONTRACT_MODEL, label="stable")] == SERVED


def test_status_json_document_is_tf_servings(rest: RestClient) -> None:
    response = rest.raw("GET", f"/v1/models/{CONTRACT_MODEL}/versions/{CANARY_VERSION}")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert json.loads(response.text) == {
        "model_version_status": [
            {"version": str(CANARY_VERSION), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }


def test_rest_paths_are_case_insensitive(rest: RestClient) -> None:
    response = rest.raw("GET", f"/V1/Models/{CONTRACT_MODEL}/Versions/{STABLE_VERSION}")
    assert response.status_code == 200, response.text
    assert json.loads(response.text)["model_version_status"][0]["version"] == str(STABLE_VERSION)


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [
        ("nope", None, "Could not find any versions of model nope"),
        (CONTRACT_MODEL, 7, f"Could not find version 7 of model {CONTRACT_MODEL}"),
    ],
)
def test_status_of_unknown_model_or_version_is_not_found(
    client: RestClient | GrpcClient, name: str, version: int | None, message: str
) -> None:
    with pytest.raises(CallError) as caught:
        client.status(name, version=version)
    assert caught.value.code == "NOT_FOUND"
    assert caught.value.message == message
    if client.api == "rest":
        assert caught.value.http_status == 404


def test_metadata_describes_the_serving_contract(client: RestClient | GrpcClient) -> None:
    metadata = client.metadata(CONTRACT_MODEL)
    assert (metadata["name"], metadata["version"]) == (CONTRACT_MODEL, max(SERVED))
    signatures = metadata["signatures"]
    assert {"serving_default", "serving_examples"} <= set(signatures)
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"] == {f.name: (DTYPES[f.kind], (-1,)) for f in SERVING_FEATURES}
    assert default["outputs"] == {"probability": ("DT_FLOAT", (-1,)), "class": ("DT_INT64", (-1,))}
    assert signatures["serving_examples"]["inputs"] == {"examples": ("DT_STRING", (-1,))}
    assert signatures["serving_examples"]["outputs"] == default["outputs"]


@pytest.mark.parametrize(("version", "label", "expected"), [(STABLE_VERSION, None, STABLE_VERSION), (None, "canary", CANARY_VERSION)])
def test_metadata_by_version_or_label_names_the_version_that_answers(
    client: RestClient | GrpcClient, version: int | None, label: str | None, expected: int
) -> None:
    assert client.metadata(CONTRACT_MODEL, version=version, label=label)["version"] == expected


def test_metadata_json_document_is_tf_servings(rest: RestClient) -> None:
    document = json.loads(rest.raw("GET", f"/v1/models/{CONTRACT_MODEL}/metadata").text)
    assert document["model_spec"] == {"name": CONTRACT_MODEL, "signature_name": "", "version": str(max(SERVED))}
    # TF Serving nests the SignatureDefMap under metadata.signature_def: the key appears twice.
    fare = document["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["fare"]
    assert fare["dtype"] == "DT_FLOAT"
    assert fare["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False}
    assert fare["name"].endswith(":0")


def test_grpc_metadata_packs_a_signature_def_map(grpc_client: GrpcClient) -> None:
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=grpc_client.spec(CONTRACT_MODEL), metadata_field=["signature_def"]
    )
    response = grpc_client.prediction.GetModelMetadata(request)
    packed = response.metadata["signature_def"]
    assert packed.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    assert (response.model_spec.name, response.model_spec.version.value) == (CONTRACT_MODEL, max(SERVED))


def test_grpc_metadata_without_a_field_is_invalid(grpc_client: GrpcClient) -> None:
    from tensorflow_serving.apis import get_model_metadata_pb2

    with pytest.raises(CallError) as caught:
        grpc_client._invoke(
            grpc_client.prediction.GetModelMetadata,
            get_model_metadata_pb2.GetModelMetadataRequest(model_spec=grpc_client.spec(CONTRACT_MODEL)),
        )
    assert (caught.value.code, caught.value.message) == (
        "INVALID_ARGUMENT",
        "GetModelMetadataRequest must specify at least one metadata_field",
    )


def test_metadata_of_unknown_model_is_not_found(client: RestClient | GrpcClient) -> None:
    with pytest.raises(CallError) as caught:
        client.metadata("nope")
    assert (caught.value.code, caught.value.message) == ("NOT_FOUND", "Servable not found for request: Latest(nope)")
