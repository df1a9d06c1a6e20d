"""numpy arrays and classify/regress results -> TF Serving's REST response JSON.

Row requests get `{"predictions": [...]}` (a list of objects when there are several outputs),
columnar requests get `{"outputs": ...}`; DT_STRING outputs named `*_bytes` are base64 objects;
NaN and ±Infinity are written as TF Serving writes them (`util/json_tensor.cc`). Errors are
`{"error": "..."}` (`error_body`). orjson writes the common case straight from the arrays; only
non-finite floats take the standard library's slower writer.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Mapping, Sequence

import numpy as np
import orjson

from serving.model_server.json_requests import RequestFormat
from serving.model_server.tensors import dtype_name, dtype_of_array
from serving.status import invalid

# --- Predict responses ------------------------------------------------------------------------


def _is_bytes_output(name: str) -> bool:
    """TF Serving writes DT_STRING outputs whose alias ends in `_bytes` as base64 objects."""
    return name.endswith("_bytes")


def _string_leaf(raw: Any, as_bytes: bool) -> Any:
    data = raw if isinstance(raw, bytes) else str(raw).encode("utf-8")
    if not as_bytes:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass  # TF Serving would emit invalid JSON here; a b64 object keeps the bytes intact
    return {"b64": base64.b64encode(data).decode("ascii")}


def _jsonable(name: str, array: np.ndarray) -> tuple[Any, bool]:
    """(value orjson can write, True when it holds NaN/±Infinity that need the slow writer)."""
    kind = array.dtype
    if kind == object or kind.kind in ("S", "U"):
        as_bytes = _is_bytes_output(name)
        flat = [_string_leaf(v, as_bytes) for v in array.ravel().tolist()]
        return _nest(flat, array.shape), False
    if kind.kind == "c":
        raise invalid(f"Failed to write JSON value for tensor type: {dtype_name(dtype_of_array(array))}")
    if kind.name == "bfloat16":
        array = array.astype(np.float32)
        kind = array.dtype
    if kind.kind == "f":
        if not np.all(np.isfinite(array)):
            return array, True
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return array, False


def _nest(flat: list[Any], shape: tuple[int, ...]) -> Any:
    """Flat row-major values -> nested lists of `shape` (any dimension may be 0)."""
    holder = np.empty(len(flat), dtype=object)
    holder[:] = flat
    return holder.reshape(shape).tolist()


def _slow_json(array: Any) -> Any:
    """Non-finite floats as Python floats so `json` writes NaN/Infinity like TF Serving does."""
    if isinstance(array, np.ndarray) and array.dtype.kind == "f":
        # str() of a float32 is its shortest round-trip text; keep that precision, not float64 noise.
        values = [float(str(v)) for v in array.ravel()] if array.dtype == np.float32 else array.ravel().tolist()
        return _nest(values, array.shape)
    if isinstance(array, np.ndarray):
        return array.tolist()
    return array


def _dump(doc: Any, needs_slow: bool) -> bytes:
    if not needs_slow:
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(_deep_slow(doc), separators=(",", ":"), allow_nan=True).encode("utf-8")


def _deep_slow(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_slow(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_slow(v) for v in value]
    if isinstance(value, np.ndarray):
        return _slow_json(value)
    if isinstance(value, np.generic):
        return _slow_json(np.asarray(value))
    return value


def encode_predict_response(outputs: Mapping[str, np.ndarray], request_format: RequestFormat) -> bytes:
    """Output arrays -> TF Serving's response JSON (`predictions` for rows, `outputs` for columns)."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if request_format is RequestFormat.COLUMNAR:
        converted = {name: _jsonable(name, outputs[name]) for name in names}
        needs_slow = any(slow for _, slow in converted.values())
        if len(names) == 1:
            body: Any = converted[names[0]][0]
        else:
            body = {name: value for name, (value, _) in converted.items()}
        return _dump({"outputs": body}, needs_slow)

    batch = 0
    for name in names:
        array = outputs[name]
        if array.ndim == 0:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if array.shape[0] < 1:
            raise invalid(f"Tensor name: {name} has invalid batch size: {array.shape[0]}")
        if batch and array.shape[0] != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch}")
        batch = array.shape[0]
    converted = {name: _jsonable(name, outputs[name]) for name in names}
    needs_slow = any(slow for _, slow in converted.values())
    if len(names) == 1:
        return _dump({"predictions": converted[names[0]][0]}, needs_slow)
    columns = [(name, value) for name, (value, _) in converted.items()]
    rows = [{name: value[i] for name, value in columns} for i in range(batch)]
    return _dump({"predictions": rows}, needs_slow)


def error_body(message: str) -> bytes:
    """TF Serving's REST error document."""
    return orjson.dumps({"error": message})


# --- Classify / Regress responses -------------------------------------------------------------


def encode_classification_results(classes: Sequence[Sequence[tuple[str, float]]]) -> bytes:
    """`{"results": [[[label, score], ...], ...]}`, one list of (label, score) pairs per example."""
    if not classes:
        raise invalid("Cannot convert empty ClassificationResults to JSON")
    results = [[[label, _json_float(score)] for label, score in example] for example in classes]
    return json.dumps({"results": results}, separators=(",", ":"), allow_nan=True).encode("utf-8")


def encode_regression_results(values: Sequence[float]) -> bytes:
    if not len(values):
        raise invalid("Cannot convert empty RegressionResults to JSON")
    return json.dumps({"results": [_json_float(v) for v in values]}, separators=(",", ":"), allow_nan=True).encode()


def _json_float(value: float) -> float:
    return float(str(np.float32(value)))
