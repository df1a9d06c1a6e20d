"""Bad requests get a 4xx naming the problem, nothing is forwarded or logged, and the gateway keeps serving."""

from __future__ import annotations

import json
import math

import grpc
import pytest

from serving.client import GrpcPredictionClient
from serving.prediction_log import read_prediction_logs
from serving.tensor_protos import serving_apis
from tests.serving.gateway.helpers import MODEL, instances, metric_value, predict, real_trips


def _good() -> dict:
    return instances(real_trips(1))[0]


def _with(**changes) -> dict:
    instance = _good()
    instance.update(changes)
    return instance


def _without(name: str) -> dict:
    instance = _good()
    del instance[name]
    return instance


# (id, raw body bytes, expected status, words the error must contain)
BAD_BODIES = [
    ("malformed-json", b'{"instances": [', 400, ["malformed JSON"]),
    ("not-json-at-all", b"fare=3", 400, ["malformed JSON"]),
    ("nested-too-deeply", b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, ["malformed JSON", "nested too deeply"]),
    ("number-of-5000-digits", json.dumps({"instances": [_good()]}).replace('"fare": ', '"fare": 1' + "0" * 5000 + ", \"x\": ").encode(),
     400, ["malformed JSON", "a number is too long"]),
    ("not-utf8", b'{"instances": [{"company": "\xff\xfe"}]}', 400, ["malformed JSON", "not UTF-8"]),
    ("empty-body", b"", 400, ["empty request body"]),
    ("body-is-a-list", json.dumps([_good()]).encode(), 400, ["JSON object"]),
    ("both-formats", json.dumps({"instances": [_good()], "inputs": {}}).encode(), 400, ["exactly one of"]),
    ("no-instances-key", json.dumps({"rows": [_good()]}).encode(), 400, ["unknown keys", "rows"]),
    ("instances-not-a-list", json.dumps({"instances": _good()}).encode(), 400, ["'instances' must be a list"]),
    ("empty-instances", json.dumps({"instances": []}).encode(), 400, ["empty"]),
    ("instance-not-object", json.dumps({"instances": [[1, 2, 3]]}).encode(), 400, ["instance 0", "object"]),
    ("missing-feature", json.dumps({"instances": [_good(), _without("fare")]}).encode(), 400, ["instance 1", "missing features ['fare']"]),
    ("extra-feature", json.dumps({"instances": [_with(tips=3.0)]}).encode(), 400, ["unknown features ['tips']"]),
    ("string-for-float", json.dumps({"instances": [_with(fare="12.5")]}).encode(), 400, ["'fare'", "number"]),
    ("bool-for-float", json.dumps({"instances": [_with(fare=True)]}).encode(), 400, ["'fare'", "number"]),
    ("fraction-for-int", json.dumps({"instances": [_with(trip_start_hour=3.5)]}).encode(), 400, ["'trip_start_hour'", "integer"]),
    ("int-beyond-int64", json.dumps({"instances": [_with(trip_start_hour=2**70)]}).encode(), 400, ["'trip_start_hour'", "64-bit"]),
    ("huge-int-for-float", json.dumps({"instances": [_with(fare=10**400)]}).encode(), 400, ["'fare'", "out of range"]),
    ("lone-surrogate", json.dumps({"instances": [_with(company="Flash \udcff Cab")]}).encode(), 400, ["'company'", "not valid text"]),
    ("number-for-string", json.dumps({"instances": [_with(payment_type=1)]}).encode(), 400, ["'payment_type'", "string"]),
    ("object-for-string", json.dumps({"instances": [_with(company={"b64": "eA=="})]}).encode(), 400, ["'company'", "string"]),
    ("nan-for-required", json.dumps({"instances": [_with(fare=math.nan)]}).encode(), 400, ["'fare'", "required"]),
    ("null-for-required", json.dumps({"instances": [_with(payment_type=None)]}).encode(), 400, ["'payment_type'", "required"]),
    ("infinity", json.dumps({"instances": [_with(trip_miles=math.inf)]}).encode(), 400, ["'trip_miles'", "finite"]),
    ("other-signature", json.dumps({"signature_name": "serving_examples", "instances": [_good()]}).encode(), 400, ["serving_examples"]),
    ("ragged-columns", json.dumps({"inputs": {"fare": [1.0, 2.0], "trip_miles": [1.0]}}).encode(), 400, ["same number of values"]),
    ("too-many-instances", json.dumps({"instances": [_good()] * 11}).encode(), 413, ["too many instances", "11", "10"]),
    ("oversized-body", json.dumps({"instances": [_with(company="x" * 70_000)]}).encode(), 413, ["65536 bytes"]),
]


@pytest.fixture
def gateway(start_gw):
    return start_gw(max_instances=10, max_body_bytes=65_536)


@pytest.mark.parametrize("raw, status, words", [case[1:] for case in BAD_BODIES], ids=[case[0] for case in BAD_BODIES])
def test_bad_body_gets_a_clear_4xx(gateway, http, raw, status, words):
    response = predict(http, gateway, None, raw=raw)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    for word in words:
        assert word in error, error


@pytest.mark.parametrize(
    "path, status, words",
    [
        ("/versions/7", 404, ["no version 7", "[1, 2]"]),
        ("/labels/blue", 404, ["no label 'blue'", "canary", "stable"]),
    ],
)
def test_unknown_version_or_label_is_404(gateway, http, path, status, words):
    response = predict(http, gateway, {"instances": [_good()]}, path=path)
    assert response.status_code == status, response.text
    assert all(word in response.json()["error"] for word in words), response.text


def test_unknown_model_and_verb(gateway, http):
    response = http.post(f"{gateway.url}/v1/models/rocket:predict", json={"instances": [_good()]}, timeout=10)
    assert response.status_code == 404 and "rocket" in response.json()["error"] and "taxi" in response.json()["error"]
    classify = http.post(f"{gateway.url}/v1/models/{MODEL}:classify", json={"instances": [_good()]}, timeout=10)
    assert classify.status_code == 501 and ":predict" in classify.json()["error"]


def test_null_means_missing_is_counted_and_forwarded_as_the_sentinel(gateway, http, tmp_path):
    instance = _with(trip_miles=None, company=None, pickup_community_area=None)
    nan_sentinel = json.dumps({"instances": [_with(dropoff_latitude=math.nan, trip_seconds=-1)]}).encode()  # NaN token
    assert predict(http, gateway, {"instances": [instance]}).status_code == 200
    assert predict(http, gateway, None, raw=nan_sentinel).status_code == 200
    metrics = http.get(f"{gateway.url}/metrics", timeout=10).text
    for feature in ("trip_miles", "company", "pickup_community_area", "dropoff_latitude", "trip_seconds"):
        expected = _good()[feature] is None and 2 or 1  # features already missing in the real row count twice
        assert metric_value(metrics, "mlops_gateway_missing_inputs_total", model=MODEL, feature=feature) == expected, feature
    gateway.stop()
    logs = read_prediction_logs(tmp_path / "logs")
    assert len(logs) == 2
    assert logs["trip_miles"].isna().iloc[0] and logs["company"].iloc[0] is None and logs["trip_seconds"].isna().iloc[1]


def _nan_body(*instances_: dict) -> bytes:
    """A body as TF Serving clients write it: Python's json writes a float NaN as the NaN token."""
    return json.dumps({"instances": list(instances_)}).encode()


def test_nan_tokens_are_missing_floats_and_text_that_says_nan_is_kept(gateway, http, tmp_path):
    # The gateway reads NaN tokens with a fast parse that marks them; text containing NaN must survive it.
    cases = [
        (_nan_body(_with(dropoff_latitude=math.nan, company="NaN Cab"), _with(trip_miles=math.nan)), "NaN Cab"),
        (_nan_body(_with(dropoff_latitude=math.nan, company="Cab:NaN, Ltd"), _good()), "Cab:NaN, Ltd"),
        (_nan_body(_with(dropoff_latitude=math.nan, company="\x00NaN")), "\x00NaN"),  # the mark's own text
        (_nan_body(_with(dropoff_latitude=math.nan, company='say "NaN"')), 'say "NaN"'),
        (_nan_body(_with(dropoff_latitude=math.nan, company="back\\NaN")), "back\\NaN"),
    ]
    for raw, company in cases:
        response = predict(http, gateway, None, raw=raw)
        assert response.status_code == 200, (raw, response.text)
    gateway.stop()
    logs = read_prediction_logs(tmp_path / "logs")
    assert list(logs["company"].iloc[[0, 2, 4, 5, 6]]) == [company for _, company in cases]
    assert logs["dropoff_latitude"].iloc[[0, 2, 4, 5, 6]].isna().all() and logs["trip_miles"].isna().iloc[1]


@pytest.mark.parametrize(
    "instance, words",
    [
        (_with(trip_start_hour=math.nan), ["'trip_start_hour'", "integer or null", "nan"]),
        (_with(payment_type=math.nan), ["'payment_type'", "string or null", "nan"]),
        (_with(fare=math.nan), ["'fare'", "required"]),
        (_with(fare=[math.nan]), ["'fare'", "number or null", "got [nan]"]),  # named as the client wrote it
    ],
    ids=["nan-for-int", "nan-for-string", "nan-for-required-float", "nan-in-a-list"],
)
def test_a_nan_token_where_no_float_belongs_is_refused_as_nan(gateway, http, instance, words):
    for raw in (_nan_body(instance), _nan_body(_good(), instance)):  # one example, and a column of two
        response = predict(http, gateway, None, raw=raw)
        assert response.status_code == 400, response.text
        for word in words:
            assert word in response.json()["error"], response.json()["error"]


def test_columnar_inputs_are_checked_and_answered_as_outputs(gateway, http):
    rows = instances(real_trips(3))
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    response = http.post(f"{gateway.url}/v1/models/{MODEL}:predict", json={"inputs": columns}, timeout=10)
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert len(outputs["probability"]) == len(outputs["class"]) == len(outputs["decision"]) == 3
    del columns["fare"]
    missing = http.post(f"{gateway.url}/v1/models/{MODEL}:predict", json={"inputs": columns}, timeout=10)
    assert missing.status_code == 400 and "missing features ['fare']" in missing.json()["error"]


def test_grpc_bad_requests_are_invalid_argument(gateway):
    apis = serving_apis()
    with GrpcPredictionClient(gateway.grpc_target, MODEL) as client, grpc.insecure_channel(gateway.grpc_target) as channel:
        request = client.build_request(real_trips(2))
        del request.inputs["fare"]
        stub = apis.prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "missing features ['fare']" in caught.value.details()
        request = client.build_request(real_trips(1))
        request.inputs["fare"].float_val[0] = math.inf
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "finite" in caught.value.details()
        request.model_spec.name = "rocket"
        request.inputs["fare"].float_val[0] = 3.0
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def _fill_from_one_value(size: int):
    def edit(request) -> None:  # every input: one value and a shape asking for `size` of them
        for tensor in request.inputs.values():
            tensor.tensor_shape.dim[0].size = size
    return edit


def _packed_bytes(count: int):
    def edit(request) -> None:
        request.inputs["fare"].ClearField("float_val")
        request.inputs["fare"].tensor_content = b"\x00" * count
    return edit


@pytest.mark.parametrize(
    "edit, words",
    [
        # A 60-byte request must not make the gateway build a list of 10^12 values.
        (_fill_from_one_value(2**40), ["has 1099511627776 values (its shape)", "at most 10 examples"]),
        (_fill_from_one_value(11), ["has 11 values (its shape)", "at most 10 examples"]),
        (_packed_bytes(3), ["input 'fare': tensor_content holds 3 bytes", "4-byte values"]),
        (lambda r: setattr(r.inputs["fare"], "dtype", 999), ["input 'fare' has unsupported dtype number 999"]),
        (lambda r: setattr(r.inputs["fare"], "dtype", 7), ["input 'fare'", "its string_val holds 0"]),  # DT_STRING, values left in float_val
        (lambda r: r.inputs["fare"].tensor_shape.__setattr__("unknown_rank", True), ["input 'fare'", "unknown rank"]),
    ],
    ids=["shape-2^40", "shape-over-max-instances", "packed-bytes", "dtype-999", "dtype-mismatch", "unknown-rank"],
)
def test_grpc_malformed_tensors_are_invalid_argument_naming_the_input(gateway, edit, words):
    with GrpcPredictionClient(gateway.grpc_target, MODEL) as client, grpc.insecure_channel(gateway.grpc_target) as channel:
        request = client.build_request(real_trips(1))
        edit(request)
        stub = serving_apis().prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        for word in words:
            assert word in caught.value.details()
        assert len(client.predict(real_trips(1)).predictions) == 1  # and it keeps serving


def test_a_body_that_does_not_match_its_content_encoding_is_400(gateway, http):
    import gzip

    body = json.dumps({"instances": [_good()]}).encode()
    url = f"{gateway.url}/v1/models/{MODEL}:predict"
    torn = http.post(url, data=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}, timeout=10)
    assert torn.status_code == 400, torn.text
    assert "could not be read" in torn.json()["error"] and "gzip" in torn.json()["error"]
    packed = http.post(url, data=gzip.compress(body), headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}, timeout=10)
    assert packed.status_code == 200, packed.text  # a real gzip body is read as usual


def test_grpc_output_filter_is_honoured_and_unknown_names_are_refused(gateway):
    with GrpcPredictionClient(gateway.grpc_target, MODEL) as client, grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = serving_apis().prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = client.build_request(real_trips(2))
        request.output_filter.append("probability")
        assert set(stub.Predict(request, timeout=10).outputs) == {"probability"}
        request.output_filter.append("scores")
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "output_filter names ['scores']" in caught.value.details() and "'decision'" in caught.value.details()


def test_the_gateway_keeps_serving_after_every_bad_request(gateway, http, tmp_path):
    for _, raw, _, _ in BAD_BODIES:
        predict(http, gateway, None, raw=raw)
    response = predict(http, gateway, {"instances": [_good()]})
    assert response.status_code == 200, response.text
    metrics = http.get(f"{gateway.url}/metrics", timeout=10).text
    assert metric_value(metrics, "mlops_gateway_requests_total", model=MODEL, label="none", code="400") == \
        sum(1 for case in BAD_BODIES if case[2] == 400)
    gateway.stop()
    assert len(read_prediction_logs(tmp_path / "logs")) == 1  # only the good request was logged
