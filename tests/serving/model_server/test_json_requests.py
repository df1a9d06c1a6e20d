"""REST request JSON -> numpy arrays with TF Serving's rules and error messages (json_requests.py)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest


def _specs(**dtypes: int) -> dict[str, Any]:
    from serving.model_server.tensors import TensorSpec

    return {name: TensorSpec(name, dtype, (-1,)) for name, dtype in dtypes.items()}


def test_json_to_array_shapes_types_and_b64() -> None:
    from serving.model_server.json_requests import json_to_array
    from serving.model_server.tensors import DT_FLOAT, DT_INT64, DT_STRING

    floats = json_to_array([[1, 2.5], [3, float("nan")]], DT_FLOAT)
    assert floats.dtype == np.float32 and floats.shape == (2, 2) and math.isnan(floats[1, 1])
    assert json_to_array(7, DT_INT64).shape == ()
    strings = json_to_array([{"b64": "aGk="}, "plain", {"b64": "aGk"}], DT_STRING)
    assert list(strings) == [b"hi", b"plain", b"hi"]


@pytest.mark.parametrize(
    ("value", "dtype_name", "message"),
    [
        ([1, "2"], "DT_FLOAT", 'JSON Value: "2" Type: String is not of expected type: float'),
        ([1.5], "DT_INT64", "JSON Value: 1.5 Type: Number is not of expected type: int64"),
        ([True], "DT_FLOAT", "JSON Value: true Type: True is not of expected type: float"),
        ([300], "DT_INT8", "JSON Value: 300 Type: Number is not of expected type: int8"),
        ([16777217], "DT_FLOAT", "Cannot convert JSON value: 16777217 to float without loss of precision."),
        ([1e39], "DT_FLOAT", "Cannot convert JSON value: 1e+39 to float without loss of precision."),
        ([[1], [1, 2]], "DT_FLOAT", "Encountered list at unexpected size: 2 at level: 1 expected size: 1"),
        ([[1], 2], "DT_FLOAT", "JSON Value: 2 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"),
        ([{"b64": "%%%"}], "DT_STRING", "Unable to base64 decode"),
        ([{"b65": "x"}], "DT_STRING", 'JSON Value: {"b65":"x"} not formatted correctly for base64 data'),
    ],
)
def test_json_to_array_errors_match_tf_serving(value: Any, dtype_name: str, message: str) -> None:
    from tensorflow.core.framework import types_pb2

    from serving.model_server.json_requests import json_to_array
    from serving.status import InvalidRequestError

    with pytest.raises(InvalidRequestError) as caught:
        json_to_array(value, types_pb2.DataType.Value(dtype_name))
    assert caught.value.message == message


def test_row_format_errors_name_element_and_key() -> None:
    from serving.model_server.json_requests import parse_predict_request
    from serving.model_server.tensors import DT_FLOAT, DT_STRING
    from serving.status import InvalidRequestError

    specs = _specs(a=DT_FLOAT, b=DT_STRING)
    body = json.dumps({"instances": [{"a": 1.0, "b": "x"}, {"a": "oops", "b": "y"}]}).encode()
    with pytest.raises(InvalidRequestError) as caught:
        parse_predict_request(body, lambda _: specs)
    assert caught.value.message == (
        "Failed to process element: 1 key: a of 'instances' list. Error: INVALID_ARGUMENT: "
        'JSON Value: "oops" Type: String is not of expected type: float'
    )
    ragged = json.dumps({"instances": [{"a": [1.0], "b": "x"}, {"a": [1.0, 2.0], "b": "y"}]}).encode()
    with pytest.raises(InvalidRequestError, match="Failed to process element: 1 key: a .* Expecting tensor size: 1 but got: 2"):
        parse_predict_request(ragged, lambda _: specs)


def test_row_and_columnar_requests_give_the_same_arrays() -> None:
    from serving.model_server.json_requests import RequestFormat, parse_predict_request
    from serving.model_server.tensors import DT_FLOAT, DT_INT64

    specs = _specs(x=DT_FLOAT, n=DT_INT64)
    rows = parse_predict_request(b'{"instances": [{"x": [1, 2], "n": 3}, {"x": [3, NaN], "n": 4}]}', lambda _: specs)
    columns = parse_predict_request(b'{"inputs": {"x": [[1, 2], [3, NaN]], "n": [3, 4]}}', lambda _: specs)
    assert (rows.format, columns.format) == (RequestFormat.ROW, RequestFormat.COLUMNAR)
    for name in specs:
        np.testing.assert_array_equal(rows.inputs[name], columns.inputs[name])
    assert rows.inputs["x"].shape == (2, 2) and rows.inputs["n"].dtype == np.int64


def test_parse_errors_use_rapidjson_wording() -> None:
    from serving.model_server.json_requests import parse_json_body
    from serving.status import InvalidRequestError

    for body, message in [
        (b"", "JSON Parse error: The document is empty"),
        (b"{", "JSON Parse error: Missing a name for object member. at offset: 1"),
        (b'{"a" 1}', "JSON Parse error: Missing a colon after a name of object member. at offset: 5"),
        (b"[1] x", "JSON Parse error: The document root must not be followed by other values. at offset: 4"),
        # Python's own message names the escape "\\uXXXX": the mapping must still find it
        (b'["\\uZZZZ"]', "JSON Parse error: Incorrect hex digit after \\u escape in string. at offset: 3"),
        (b'["\\q"]', "JSON Parse error: Invalid escape character in string. at offset: 2"),
        (b"[" * 100_000, "JSON Parse error: the document is nested too deeply"),
    ]:
        with pytest.raises(InvalidRequestError) as caught:
            parse_json_body(body)
        assert caught.value.message == message
    assert math.isinf(parse_json_body(b"[-Infinity]")[0])
