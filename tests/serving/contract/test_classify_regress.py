"""Classify, Regress and MultiInference on a model that has such signatures (an Estimator-style
export), over REST and gRPC: TF Serving's `results` documents and result protos."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from beam_jobs.example_codec import serialize_row
from tests.serving.contract.clients import CallError, GrpcClient, RestClient
from tests.serving.contract.conftest import ModelRepository
from tests.serving.contract.layout import export_examples_model, install_version

TRIPS = [{"fare": 10.0, "payment_type": "Credit Card"}, {"fare": 50.0, "payment_type": "Cash"}]


def _probability(trip: dict[str, Any]) -> float:
    card = 1.0 if trip["payment_type"] == "Credit Card" else 0.0
    return 1.0 / (1.0 + math.exp(-(2.0 * card - 1.0 + 0.01 * trip["fare"])))


@pytest.fixture(scope="module")
def examples_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_examples_model(tmp_path_factory.mktemp("examples_model") / "export")


@pytest.fixture
def examples_model(repository: ModelRepository, examples_export: Path) -> str:
    name = repository.unique_name("estimator")
    install_version(examples_export, repository.model_root(name), 1)
    repository.set_entry(name)
    repository.wait_available(name, {1})
    return name


def test_rest_classify_returns_label_score_pairs(rest: RestClient, examples_model: str) -> None:
    for signature in (None, "classify"):
        results = rest.classify(examples_model, TRIPS, signature_name=signature)
        assert [[label for label, _ in example] for example in results] == [["small", "big"], ["small", "big"]]
        for trip, example in zip(TRIPS, results):
            assert example[1][1] == pytest.approx(_probability(trip), rel=1e-6)
            assert example[0][1] == pytest.approx(1.0 - _probability(trip), rel=1e-6)


def test_rest_classify_with_context_and_scores_only(rest: RestClient, examples_model: str) -> None:
    body = {"signature_name": "scores_only", "context": {"payment_type": "Credit Card"}, "examples": [{"fare": 10.0}, {"fare": 0.0}]}
    response = rest.raw("POST", f"/v1/models/{examples_model}:classify", json.dumps(body))
    assert response.status_code == 200, response.text
    results = json.loads(response.text)["results"]
    assert results[0][1][0] == ""  # no classes output: empty labels, as TF Serving writes them
    assert results[0][1][1] == pytest.approx(_probability({"fare": 10.0, "payment_type": "Credit Card"}), rel=1e-6)


def test_rest_regress(rest: RestClient, examples_model: str) -> None:
    assert rest.regress(examples_model, TRIPS, signature_name="tip") == pytest.approx([2.0, 10.0], rel=1e-6)


def test_rest_regress_on_a_classify_signature_is_refused(rest: RestClient, examples_model: str) -> None:
    """The method name is not checked by default (--enable_signature_method_name_check=false, as in
    TF Serving): the signature's two outputs are what a regression cannot use."""
    with pytest.raises(CallError) as caught:
        rest.regress(examples_model, TRIPS, signature_name="classify")
    assert (caught.value.http_status, caught.value.message) == (400, "Expected one output Tensor.")


def test_int_feature_for_a_float_column_is_the_runtimes_type_error(rest: RestClient, examples_model: str) -> None:
    """`0` in an Example is an int64_list: TF's parser refuses it (TF Serving's best-known pitfall)."""
    with pytest.raises(CallError) as caught:
        rest.classify(examples_model, [{"fare": 0, "payment_type": "Cash"}])
    assert caught.value.http_status == 400
    assert "Key: fare, Index: 0.  Data types don't match. Data type: int64 but expected type: float" in caught.value.message
    assert "File " not in caught.value.message  # no server-side Python stack in the answer


def test_rest_feature_kinds_cannot_be_mixed(rest: RestClient, examples_model: str) -> None:
    with pytest.raises(CallError) as caught:
        rest.classify(examples_model, [{"fare": [1.0, "x"]}])
    assert caught.value.message == "Unexpected element type in feature: fare expecting type: float"


def test_grpc_classify_regress_and_multi_inference(grpc_client: GrpcClient, examples_model: str) -> None:
    examples = [serialize_row(trip) for trip in TRIPS]
    classified = grpc_client.classify(examples_model, examples, signature_name="classify")
    assert classified.model_spec.signature_name == "classify" and classified.model_spec.version.value == 1
    for trip, result in zip(TRIPS, classified.result.classifications):
        assert [c.label for c in result.classes] == ["small", "big"]
        assert result.classes[1].score == pytest.approx(_probability(trip), rel=1e-6)

    regressed = grpc_client.regress(examples_model, examples, signature_name="tip")
    assert [r.value for r in regressed.result.regressions] == pytest.approx([2.0, 10.0], rel=1e-6)

    multi = grpc_client.multi_inference(
        examples_model, [("classify", "tensorflow/serving/classify"), ("tip", "tensorflow/serving/regress")], examples
    )
    assert [r.model_spec.signature_name for r in multi.results] == ["classify", "tip"]
    assert multi.results[0].classification_result.classifications[0].classes[1].score == pytest.approx(_probability(TRIPS[0]), rel=1e-6)
    assert [r.value for r in multi.results[1].regression_result.regressions] == pytest.approx([2.0, 10.0], rel=1e-6)


def test_grpc_multi_inference_refuses_a_signature_twice(grpc_client: GrpcClient, examples_model: str) -> None:
    with pytest.raises(CallError) as caught:
        grpc_client.multi_inference(
            examples_model,
            [("classify", "tensorflow/serving/classify"), ("classify", "tensorflow/serving/classify")],
            [serialize_row(TRIPS[0])],
        )
    assert (caught.value.code, caught.value.message) == ("INVALID_ARGUMENT", "Duplicate evaluation of signature: classify")


def test_grpc_classify_without_examples(grpc_client: GrpcClient, examples_model: str) -> None:
    with pytest.raises(CallError) as caught:
        grpc_client.classify(examples_model, [], signature_name="classify")
    assert (caught.value.code, caught.value.message) == ("INVALID_ARGUMENT", "Input is empty.")
