"""TF Serving's own example model, half-plus-two (y = 0.5 * x + 2), asked what TF Serving's tests ask
of it, over REST and gRPC, as a native TF2 export, as a TF1 graph export and as a TF 1.0 export
that only TF1's session loader reads (tests/fixtures/half_plus_two.py).

Predict checks the input names and dtypes, never the shapes: TF Serving feeds the tensors as they
come and lets the graph decide, so a row of scalars for an `x` declared [-1,1] is answered, and an
op that cannot take a shape answers with TensorFlow's own INVALID_ARGUMENT.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from tests.fixtures.half_plus_two import example_bytes, export_half_plus_two_tf1, export_half_plus_two_tf2
from tests.serving.contract.clients import CallError, GrpcClient, RestClient, tensor_proto_to_numpy
from tests.serving.contract.conftest import ModelRepository, ServingTarget
from tests.serving.contract.layout import install_version

EXPORTS = {
    "tf2": export_half_plus_two_tf2,
    "tf1": export_half_plus_two_tf1,
    # A TF 1.0 export that tf.saved_model.load cannot read: served through the TF1 session loader.
    "tf1_0": functools.partial(export_half_plus_two_tf1, shapeless_examples=True),
}


@pytest.fixture(scope="module")
def half_plus_two_models(
    tmp_path_factory: pytest.TempPathFactory, serving_target: ServingTarget, exported_models: dict[float, Path]
) -> Iterator[dict[str, str]]:
    """Each export served as a model of its own (version 1) for this module: {kind: model name}."""
    if serving_target.base_dir is None:
        pytest.skip("writes into the model base path: set TFSERVING_MODEL_BASE_PATH")
    rest = RestClient(serving_target.rest_url) if serving_target.rest_url else None
    grpc_client = GrpcClient(serving_target.grpc_target) if serving_target.grpc_target else None
    repository = ModelRepository(serving_target, exported_models, rest, grpc_client)
    names: dict[str, str] = {}
    try:
        for kind, export in EXPORTS.items():
            name = repository.unique_name(f"half_plus_two_{kind}")
            install_version(export(tmp_path_factory.mktemp(kind) / "export"), repository.model_root(name), 1)
            repository.set_entry(name)
            names[kind] = name
        for name in names.values():
            repository.wait_available(name, {1})
        yield names
    finally:
        repository.cleanup()
        if grpc_client is not None:
            grpc_client.close()


@pytest.fixture(params=sorted(EXPORTS))
def model(request: pytest.FixtureRequest, half_plus_two_models: dict[str, str]) -> str:
    return half_plus_two_models[request.param]


def _post(rest: RestClient, model: str, document: Any, verb: str = "predict") -> tuple[int, Any]:
    response = rest.raw("POST", f"/v1/models/{model}:{verb}", json.dumps(document))
    return response.status_code, json.loads(response.text)


# --- shapes: the graph decides ----------------------------------------------------------------


def test_rest_row_of_scalars_for_a_column_input(rest: RestClient, model: str) -> None:
    """TF Serving's own example: a [3] tensor for `x` declared [-1,1] is answered."""
    assert _post(rest, model, {"instances": [2.0, 3.0, 4.0]}) == (200, {"predictions": [3.0, 3.5, 4.0]})


def test_rest_rows_of_the_declared_shape(rest: RestClient, model: str) -> None:
    assert _post(rest, model, {"instances": [[2.0], [3.0]]}) == (200, {"predictions": [[3.0], [3.5]]})


def test_rest_named_input_and_default_signature_name(rest: RestClient, model: str) -> None:
    document = {"signature_name": "serving_default", "instances": [{"x": 2.0}, {"x": 4.0}]}
    assert _post(rest, model, document) == (200, {"predictions": [3.0, 4.0]})


@pytest.mark.parametrize(
    ("inputs", "outputs"),
    [([2.0, 3.0], [3.0, 3.5]), ({"x": [[1.0, 2.0, 3.0]]}, [[2.5, 3.0, 3.5]]), (4.0, 4.0)],
)
def test_rest_columnar_inputs_of_any_shape(rest: RestClient, model: str, inputs: Any, outputs: Any) -> None:
    assert _post(rest, model, {"inputs": inputs}) == (200, {"outputs": outputs})


@pytest.mark.parametrize("shape", [(3,), (3, 1), (1, 3), (2, 1, 2), ()])
def test_grpc_any_shape_the_graph_takes(grpc_client: GrpcClient, model: str, shape: tuple[int, ...]) -> None:
    x = (np.arange(int(np.prod(shape)), dtype=np.float32) + 2.0).reshape(shape)
    response = grpc_client.predict_response(model, {"x": x})
    assert response.model_spec.signature_name == "serving_default"
    y = tensor_proto_to_numpy(response.outputs["y"])
    assert y.shape == shape
    np.testing.assert_allclose(y, 0.5 * x + 2.0)


# --- what the graph refuses, TensorFlow says ----------------------------------------------------


def test_rest_shape_the_graph_refuses_is_tensorflows_invalid_argument(rest: RestClient, model: str) -> None:
    """ParseExample needs a vector of serialized Examples: a [1,1] string tensor reaches it and fails."""
    status, document = _post(rest, model, {"signature_name": "regress_x_to_y", "inputs": [["not an example"]]})
    assert status == 400
    assert list(document) == ["error"]
    assert "Expected serialized to be a" in document["error"] and "got shape: [1,1]" in document["error"]
    assert "File " not in document["error"]  # the runtime's message, no server-side Python stack


def test_grpc_shape_the_graph_refuses_is_tensorflows_invalid_argument(grpc_client: GrpcClient, model: str) -> None:
    inputs = {"inputs": np.asarray([[b"not an example"]], dtype=object)}
    with pytest.raises(CallError) as caught:
        grpc_client.predict_response(model, inputs, signature_name="regress_x_to_y")
    assert caught.value.code == "INVALID_ARGUMENT"
    assert "Expected serialized to be a" in caught.value.message and "got shape: [1,1]" in caught.value.message


# --- what Predict still checks --------------------------------------------------------------------


def test_grpc_wrong_input_name_and_dtype_are_refused(grpc_client: GrpcClient, model: str) -> None:
    with pytest.raises(CallError) as caught:
        grpc_client.predict_response(model, {"z": np.asarray([1.0], dtype=np.float32)})
    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.message.startswith("Signature input alias: x(feed name: ")
    assert caught.value.message.endswith(
        "not found in request and no default value provided. Inputs expected to be in the request {z}, "
        "or default input alias set: "
    )
    with pytest.raises(CallError) as caught:
        grpc_client.predict_response(model, {"x": np.asarray([1.0], dtype=np.float64)})
    assert caught.value.code == "INVALID_ARGUMENT"
    assert "to be float but double is provided" in caught.value.message


def test_rest_string_for_a_float_input_is_refused(rest: RestClient, model: str) -> None:
    status, document = _post(rest, model, {"instances": ["two"]})
    assert status == 400
    assert 'JSON Value: "two" Type: String is not of expected type: float' in document["error"]


# --- Classify / Regress / MultiInference: no method-name check by default ------------------------
# A TF2 export's signatures all say `tensorflow/serving/predict`; TF Serving serves them anyway
# unless --enable_signature_method_name_check (test_method_name_check.py has the check turned on).

EXAMPLES = [{"x": 2.0}, {"x": 4.0}]


def test_rest_regress(rest: RestClient, model: str) -> None:
    assert _post(rest, model, {"signature_name": "regress_x_to_y", "examples": EXAMPLES}, "regress") == (
        200, {"results": [3.0, 4.0]})
    assert _post(rest, model, {"signature_name": "regress_x_to_y2", "examples": EXAMPLES}, "regress") == (
        200, {"results": [4.0, 5.0]})


def test_rest_classify(rest: RestClient, model: str) -> None:
    assert _post(rest, model, {"signature_name": "classify_x_to_y", "examples": EXAMPLES}, "classify") == (
        200, {"results": [[["", 3.0]], [["", 4.0]]]})


def test_grpc_classify_regress_and_multi_inference(grpc_client: GrpcClient, model: str) -> None:
    examples = [example_bytes(x["x"]) for x in EXAMPLES]
    regressed = grpc_client.regress(model, examples, signature_name="regress_x_to_y")
    assert [r.value for r in regressed.result.regressions] == [3.0, 4.0]
    classified = grpc_client.classify(model, examples, signature_name="classify_x_to_y")
    assert [[(c.label, c.score) for c in e.classes] for e in classified.result.classifications] == [[("", 3.0)], [("", 4.0)]]
    multi = grpc_client.multi_inference(
        model, [("classify_x_to_y", "tensorflow/serving/classify"), ("regress_x_to_y2", "tensorflow/serving/regress")], examples
    )
    assert [r.model_spec.signature_name for r in multi.results] == ["classify_x_to_y", "regress_x_to_y2"]
    assert [c.classes[0].score for c in multi.results[0].classification_result.classifications] == [3.0, 4.0]
    assert [r.value for r in multi.results[1].regression_result.regressions] == [4.0, 5.0]


def test_regress_on_a_classify_signature_is_refused_by_its_outputs(rest: RestClient, grpc_client: GrpcClient, model: str) -> None:
    """Without the method-name check the signature's structure still decides: no `outputs` output."""
    status, document = _post(rest, model, {"signature_name": "classify_x_to_y", "examples": EXAMPLES}, "regress")
    assert status == 400
    assert document["error"].startswith("No regression outputs found in SignatureDef: ")
    assert 'key: "scores"' in document["error"]  # TF Serving quotes the SignatureDef
    with pytest.raises(CallError) as caught:
        grpc_client.regress(model, [example_bytes(2.0)], signature_name="classify_x_to_y")
    assert (caught.value.code, caught.value.message) == ("INVALID_ARGUMENT", document["error"])


# --- SignatureDef.defaults (a TF2 function's default arguments) -----------------------------------


def test_grpc_an_input_with_a_default_may_be_left_out(grpc_client: GrpcClient, half_plus_two_models: dict[str, str]) -> None:
    model = half_plus_two_models["tf2"]
    response = grpc_client.predict_response(model, {}, signature_name="x_defaults_to_zero")
    np.testing.assert_array_equal(tensor_proto_to_numpy(response.outputs["y"]), [[2.0]])
    response = grpc_client.predict_response(model, {"x": np.asarray([[4.0]], dtype=np.float32)}, signature_name="x_defaults_to_zero")
    np.testing.assert_array_equal(tensor_proto_to_numpy(response.outputs["y"]), [[4.0]])
    with pytest.raises(CallError) as caught:
        grpc_client.predict_response(model, {"z": np.asarray([1.0], dtype=np.float32)}, signature_name="x_defaults_to_zero")
    assert (caught.value.code, caught.value.message) == (
        "INVALID_ARGUMENT", "Inputs contains invalid name. Used request inputs: , request input: z")
    with pytest.raises(CallError) as caught:  # no defaults: leaving an input out is a size mismatch
        grpc_client.predict_response(model, {})
    assert caught.value.message == (
        "input size does not match signature: 0!=1 len({}) != len({x}). Sent extra: {}. Missing but required: {x}.")
