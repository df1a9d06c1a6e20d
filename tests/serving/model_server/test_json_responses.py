"""numpy outputs -> TF Serving's REST response JSON (json_responses.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest


def test_responses_follow_tf_servings_shapes_and_tokens() -> None:
    from serving.model_server.json_requests import RequestFormat
    from serving.model_server.json_responses import encode_predict_response

    outputs = {"p": np.asarray([0.25, float("nan")], dtype=np.float32), "c": np.asarray([1, 0], dtype=np.int64)}
    rows = encode_predict_response(outputs, RequestFormat.ROW).decode()
    assert "NaN" in rows  # written as TF Serving does, not as null
    parsed = json.loads(rows)["predictions"]
    assert parsed[0] == {"c": 1, "p": 0.25} and math.isnan(parsed[1]["p"])
    single = json.loads(encode_predict_response({"p": np.asarray([[1.0, 2.0]], dtype=np.float32)}, RequestFormat.ROW))
    assert single == {"predictions": [[1.0, 2.0]]}
    columnar = json.loads(encode_predict_response(outputs | {"p": np.asarray([0.5, 1.0], dtype=np.float32)}, RequestFormat.COLUMNAR))
    assert columnar == {"outputs": {"c": [1, 0], "p": [0.5, 1.0]}}
    binary = json.loads(
        encode_predict_response(
            {"img_bytes": np.asarray([b"\x00\x01"], dtype=object), "text": np.asarray([b"\xff"], dtype=object)},
            RequestFormat.COLUMNAR,
        )
    )
    assert binary == {"outputs": {"img_bytes": [{"b64": "AAE="}], "text": [{"b64": "/w=="}]}}


def test_row_response_refuses_outputs_without_a_batch() -> None:
    from serving.model_server.json_requests import RequestFormat
    from serving.model_server.json_responses import encode_predict_response
    from serving.status import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="Tensor name: s has no shape information"):
        encode_predict_response({"s": np.float32(1.0) * np.ones(())}, RequestFormat.ROW)
    with pytest.raises(InvalidRequestError, match="Tensor name: b has inconsistent batch size: 3 expecting: 2"):
        encode_predict_response({"a": np.zeros(2), "b": np.zeros(3)}, RequestFormat.ROW)
