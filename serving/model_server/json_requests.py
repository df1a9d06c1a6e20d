"""TF Serving's REST request JSON -> numpy arrays and serialized tf.Examples.

The rules follow TF Serving's own `util/json_tensor.cc` and `servables/tensorflow/predict_util.cc`
(read from tensorflow/serving), so a client written against `tensorflow_model_server` gets the same
shapes, the same type checks and the same error messages here:

- predict: `signature_name`, then `instances` (row format) or `inputs` (columnar), never both;
  binary values as `{"b64": "..."}`; NaN/Infinity/-Infinity accepted; an int sent for a float is
  accepted only when float32 can hold it exactly; a float sent for an int is a type error.
- classify/regress: `examples` (JSON objects, one key per feature) and an optional shared `context`.
- errors: `InvalidRequestError` (INVALID_ARGUMENT) naming the value, in TF Serving's wording;
  the REST edge turns them into `{"error": "..."}` bodies.

Conversions are vectorised: a batch of scalars becomes one numpy array without a Python loop per
value; the slow, value-by-value path only runs to find the exact place of an error.

Where this module is stricter than TF Serving, it says so next to the check: a request is never
silently truncated or half-used. The answers go back as JSON through `json_responses.py`.

Why one file of ~600 lines: the fast vectorised path and the slow value-by-value path must agree
on every rule (the slow one exists to word the error the fast one detected), so they stay side by
side where one reader can check them against each other.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import itertools
import json
import math
from typing import Any, Callable, Mapping

import numpy as np
import orjson
from tensorflow.core.example import example_pb2, feature_pb2

from serving.model_server.tensors import (
    DT_BOOL,
    DT_DOUBLE,
    DT_FLOAT,
    DT_INT8,
    DT_INT16,
    DT_INT32,
    DT_INT64,
    DT_STRING,
    DT_UINT8,
    DT_UINT16,
    DT_UINT32,
    DT_UINT64,
    TensorSpec,
    dtype_name,
    numpy_dtype,
    shape_string,
)
from serving.status import Code, InvalidRequestError, ServingError, invalid


def _utf8(value: str) -> bytes:
    """A JSON string as tensor bytes; a lone surrogate (valid JSON escape, not text) is a client error."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise invalid(f"JSON Parse error: Invalid encoding in string: {value[max(err.start - 10, 0):err.end + 10]!r}") from None


def with_message(err: ServingError, message: str) -> ServingError:
    """The same kind of error (and class) with a message that adds where it happened."""
    return invalid(message) if err.code == Code.INVALID_ARGUMENT else ServingError(err.code, message)


# --- JSON parsing -----------------------------------------------------------------------------

_JSON_DECODE_REASONS = (
    # Python's json messages -> rapidjson's (what TF Serving prints), most specific first.
    ("Expecting property name enclosed in double quotes", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Expecting ',' delimiter", "Missing a comma or '}' after an object member."),
    ("Unterminated string", "Missing a closing quotation mark in string."),
    ("Invalid control character", "Invalid encoding in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
    ("Invalid \\uXXXX escape", "Incorrect hex digit after \\u escape in string."),
    ("Extra data", "The document root must not be followed by other values."),
    ("Expecting value", "Invalid value."),
)


def parse_json_body(body: bytes) -> Any:
    """Parses a request body. orjson first (fast); the standard library accepts NaN and ±Infinity.

    Errors use TF Serving's wording: `JSON Parse error: <reason> at offset: <n>`.
    """
    if not body or not body.strip():
        raise invalid("JSON Parse error: The document is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # NaN/Infinity, integers beyond 64 bits, or a real syntax error: the slow parser decides
    try:
        return json.loads(body)
    except json.JSONDecodeError as err:
        reason = next((tf_text for py_text, tf_text in _JSON_DECODE_REASONS if err.msg.startswith(py_text)), err.msg)
        raise invalid(f"JSON Parse error: {reason} at offset: {err.pos}") from None
    except UnicodeDecodeError as err:
        raise invalid(f"JSON Parse error: Invalid encoding in string. at offset: {err.start}") from None
    except RecursionError:
        raise invalid("JSON Parse error: the document is nested too deeply") from None
    except ValueError:  # an integer of more than 4,300 digits (Python's int parsing limit)
        raise invalid("JSON Parse error: Number too big to be stored in double.") from None


def json_value_string(value: Any, limit: int = 240) -> str:
    """A JSON value as it appears in error messages (truncated: a message must stay readable)."""
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=True, default=str)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...(truncated)"


def _json_type_name(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _type_error(value: Any, dtype: int) -> InvalidRequestError:
    return invalid(
        f"JSON Value: {json_value_string(value)} Type: {_json_type_name(value)} "
        f"is not of expected type: {dtype_name(dtype)}"
    )


def _is_b64_object(value: Any) -> bool:
    """TF Serving's IsValBase64Object: an object with exactly one key, "b64", holding a string."""
    return type(value) is dict and len(value) == 1 and type(value.get("b64")) is str


def _decode_b64(value: Any) -> bytes:
    if not _is_b64_object(value):
        raise invalid(f"JSON Value: {json_value_string(value)} not formatted correctly for base64 data")
    text = value["b64"]
    try:
        # absl::Base64Unescape accepts unpadded input; so do we.
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


_FLOAT32_MAX_EXACT_INT = (1 << 24) - 1
_FLOAT64_MAX_EXACT_INT = (1 << 53) - 1
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT_RANGES: dict[int, tuple[int, int]] = {
    DT_INT32: (-(2**31), 2**31 - 1),
    DT_INT16: (-(2**15), 2**15 - 1),
    DT_INT8: (-(2**7), 2**7 - 1),
    DT_UINT8: (0, 2**8 - 1),
    DT_UINT16: (0, 2**16 - 1),
    DT_UINT32: (0, 2**32 - 1),
    DT_UINT64: (0, 2**64 - 1),
    DT_INT64: (-(2**63), 2**63 - 1),
}


def _lossy(value: Any, target: str) -> InvalidRequestError:
    return invalid(f"Cannot convert JSON value: {json_value_string(value)} to {target} without loss of precision.")


def _convert_scalar(value: Any, dtype: int) -> Any:
    """One JSON leaf -> a Python value of `dtype` (TF Serving's AddValueToTensor), or the exact error."""
    kind = type(value)
    if dtype in (DT_FLOAT, DT_DOUBLE):
        if kind not in (int, float):
            raise _type_error(value, dtype)
        if kind is int:
            limit = _FLOAT32_MAX_EXACT_INT if dtype == DT_FLOAT else _FLOAT64_MAX_EXACT_INT
            if abs(value) > limit:
                raise _lossy(value, dtype_name(dtype))
            return float(value)
        if dtype == DT_FLOAT and math.isfinite(value) and abs(value) > _FLOAT32_MAX:
            raise _lossy(value, "float")
        return value
    if dtype in _INT_RANGES:
        if kind is not int:
            raise _type_error(value, dtype)
        low, high = _INT_RANGES[dtype]
        # TF Serving rejects what rapidjson cannot hold in the target width (IsInt/IsInt64/IsUint...);
        # for int8/int16/uint8 it would wrap around silently, which loses data: rejected here.
        if not low <= value <= high:
            raise _type_error(value, dtype)
        return value
    if dtype == DT_BOOL:
        if kind is not bool:
            raise _type_error(value, dtype)
        return value
    if dtype == DT_STRING:
        if kind is str:
            return _utf8(value)
        if kind is dict:
            return _decode_b64(value)
        raise _type_error(value, dtype)
    raise ServingError(
        Code.UNIMPLEMENTED, f"Conversion of JSON Value: {json_value_string(value)} to type: {dtype_name(dtype)}"
    )


def _dense_shape(value: Any) -> list[int]:
    """TF Serving's GetDenseTensorShape: follow the first element of each nested list."""
    dims: list[int] = []
    while type(value) is list:
        dims.append(len(value))
        if not value:
            break
        value = value[0]
    return dims


def _fill_slow(value: Any, level: int, dims: list[int], dtype: int, out: list[Any]) -> None:
    """TF Serving's FillTensorProto, value by value: the reference for every error message."""
    rank = len(dims)
    if type(value) is not list:
        if level != rank:
            raise invalid(
                f"JSON Value: {json_value_string(value)} found at incorrect level: {level + 1} "
                f"in the JSON DOM. Expected at level: {rank}"
            )
        if type(value) is dict and dtype != DT_STRING:
            raise _type_error(value, dtype)
        out.append(_convert_scalar(value, dtype))
        return
    if level >= rank:
        raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != dims[level]:
        raise invalid(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {dims[level]}"
        )
    for item in value:
        _fill_slow(item, level + 1, dims, dtype, out)


class _NotFast(Exception):
    """The vectorised path met something unusual; the slow path will produce the exact error."""



_LIST_ONLY = frozenset((list,))
_NUMBERS = frozenset((int, float))


def _flatten_fast(value: list[Any]) -> tuple[list[int], list[Any], frozenset[type]]:
    """A list of dense nested lists -> (shape, leaves, leaf types), one C-level pass per level."""
    dims: list[int] = [len(value)]
    level = value
    while True:
        kinds = frozenset(map(type, level))
        if kinds != _LIST_ONLY:
            if list in kinds:
                raise _NotFast
            return dims, level, kinds
        lengths = set(map(len, level))
        if len(lengths) != 1:
            raise _NotFast
        (length,) = lengths
        dims.append(length)
        level = list(itertools.chain.from_iterable(level))
        if length == 0:
            return dims, [], frozenset()


def _flatten_value(value: Any) -> tuple[list[int], list[Any], frozenset[type]]:
    if type(value) is list:
        return _flatten_fast(value)
    return [], [value], frozenset((type(value),))


def _leaves_to_array(leaves: list[Any], dtype: int, kinds: frozenset[type]) -> np.ndarray:
    """JSON leaves -> a flat numpy array of `dtype`, checking types for the whole batch at once."""
    if not leaves:
        return np.empty(0, dtype=numpy_dtype(dtype))
    if dtype == DT_FLOAT and kinds == {float}:
        as_float = np.array(leaves, dtype=np.float32)
        # Overflow shows up as ±inf; only then (or with NaN/inf sent on purpose) look closer.
        if not np.isfinite(as_float).all() and any(math.isfinite(v) and abs(v) > _FLOAT32_MAX for v in leaves):
            raise _NotFast
        return as_float
    if dtype in (DT_FLOAT, DT_DOUBLE):
        if not kinds <= _NUMBERS:
            raise _NotFast
        try:
            as_double = np.array(leaves, dtype=np.float64)
        except (OverflowError, ValueError):
            raise _NotFast from None
        if int in kinds:
            limit = _FLOAT32_MAX_EXACT_INT if dtype == DT_FLOAT else _FLOAT64_MAX_EXACT_INT
            if any(abs(v) > limit for v in leaves if type(v) is int):
                raise _NotFast
        if dtype == DT_DOUBLE:
            return as_double
        finite = np.isfinite(as_double)
        if np.any(np.abs(as_double[finite]) > _FLOAT32_MAX):
            raise _NotFast
        return as_double.astype(np.float32)
    if dtype in _INT_RANGES:
        if kinds != {int}:  # bool is its own type here, so True is not taken for 1
            raise _NotFast
        low, high = _INT_RANGES[dtype]
        # numpy 1.x wraps out-of-range Python ints into small types with only a warning: check first.
        if min(leaves) < low or max(leaves) > high:
            raise _NotFast
        return np.array(leaves, dtype=numpy_dtype(dtype))
    if dtype == DT_BOOL:
        if kinds != {bool}:
            raise _NotFast
        return np.array(leaves, dtype=np.bool_)
    if dtype == DT_STRING:
        try:
            if kinds == {str}:
                encoded = [s.encode("utf-8") for s in leaves]
            elif kinds <= {str, dict}:
                encoded = [s.encode("utf-8") if type(s) is str else _decode_b64(s) for s in leaves]
            else:
                raise _NotFast
        except UnicodeEncodeError:
            raise _NotFast from None  # the slow path names the bad value
        array = np.empty(len(encoded), dtype=object)
        array[:] = encoded
        return array
    raise _NotFast


def json_to_array(value: Any, dtype: int) -> np.ndarray:
    """One JSON tensor (a scalar, a b64 object or dense nested lists) -> numpy array of `dtype`.

    The shape comes from the first element at each level, as in TF Serving; a ragged list, a
    value at the wrong depth or a value of the wrong type is an INVALID_ARGUMENT naming the value.
    """
    try:
        dims, leaves, kinds = _flatten_value(value)
        return _leaves_to_array(leaves, dtype, kinds).reshape(dims)
    except _NotFast:
        pass
    dims = _dense_shape(value)
    out: list[Any] = []
    _fill_slow(value, 0, dims, dtype, out)
    # The slow pass found no error, so the fast one only declined (e.g. mixed b64 and plain text).
    array = np.empty(len(out), dtype=numpy_dtype(dtype)) if dtype == DT_STRING else None
    if array is not None:
        array[:] = out
        return array.reshape(dims)
    return np.array(out, dtype=numpy_dtype(dtype)).reshape(dims)


# --- Predict requests -------------------------------------------------------------------------


class RequestFormat(enum.Enum):
    ROW = "row"  # "instances" in, "predictions" out
    COLUMNAR = "columnar"  # "inputs" in, "outputs" out


@dataclasses.dataclass(frozen=True)
class PredictJsonRequest:
    signature_name: str  # "" means the default signature
    inputs: dict[str, np.ndarray]
    format: RequestFormat


InputSpecsFn = Callable[[str], Mapping[str, TensorSpec]]


def _signature_name(doc: dict[str, Any]) -> str:
    if "signature_name" not in doc:
        return ""
    name = doc["signature_name"]
    if type(name) is not str:
        raise invalid(
            f"JSON Value: {json_value_string(doc)} not formatted correctly. "
            f"'signature_name' key must be a string value."
        )
    return name


def parse_predict_request(body: bytes, input_specs: InputSpecsFn) -> PredictJsonRequest:
    """A REST predict body -> input arrays, typed by the signature (`input_specs(signature_name)`)."""
    doc = parse_json_body(body)
    if type(doc) is not dict:
        raise invalid(f"JSON Value: {json_value_string(doc)} Is not object")
    signature_name = _signature_name(doc)
    specs = input_specs(signature_name)
    if not specs:
        raise invalid(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid(
            f"JSON Value: {json_value_string(doc)} Not formatted correctly expecting only one of "
            f"'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        instances = doc["instances"]
        if type(instances) is not list:
            raise invalid(f"JSON Value: {json_value_string(doc)} Excepting 'instances' to be an list/array")
        if not instances:
            raise invalid(f"JSON Value: {json_value_string(doc)} No values in 'instances' array")
        return PredictJsonRequest(signature_name, _instances_to_arrays(instances, specs), RequestFormat.ROW)
    if has_inputs:
        return PredictJsonRequest(signature_name, _inputs_to_arrays(doc["inputs"], specs), RequestFormat.COLUMNAR)
    raise invalid("Missing 'inputs' or 'instances' key")


def _is_element_object(value: Any) -> bool:
    return type(value) is dict and not _is_b64_object(value)


def _instances_to_arrays(instances: list[Any], specs: Mapping[str, TensorSpec]) -> dict[str, np.ndarray]:
    """Row format: every element yields one row per input; rows are stacked along a new batch axis."""
    elements_are_objects = _is_element_object(instances[0])
    if not elements_are_objects and len(specs) > 1:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map"
        )
    names = set(specs)
    if elements_are_objects:
        if not all(type(item) is dict and item.keys() == names for item in instances):
            _instances_slow(instances, specs, elements_are_objects)  # raises the precise error
        columns = {name: [item[name] for item in instances] for name in names}
    else:
        (only,) = names
        if any(_is_element_object(item) for item in instances):
            _instances_slow(instances, specs, elements_are_objects)
        columns = {only: instances}
    arrays: dict[str, np.ndarray] = {}
    for name, column in columns.items():
        try:
            dims, leaves, kinds = _flatten_fast(column)
            arrays[name] = _leaves_to_array(leaves, specs[name].dtype, kinds).reshape(dims)
        except (_NotFast, ServingError):  # the slow pass reports it with the element and the key
            return _instances_slow(instances, specs, elements_are_objects)
    return arrays


def _instances_slow(
    instances: list[Any], specs: Mapping[str, TensorSpec], elements_are_objects: bool
) -> dict[str, np.ndarray]:
    """TF Serving's FillTensorMapFromInstancesList, element by element, with its messages."""
    expected = sorted(specs)
    rows: dict[str, list[np.ndarray]] = {name: [] for name in specs}
    shapes: dict[str, list[int]] = {}
    for index, item in enumerate(instances):
        if elements_are_objects:
            if not _is_element_object(item):
                raise invalid(f"Expecting object but got list at item {index} of input list")
            for name, value in item.items():
                try:
                    if name not in specs:
                        raise invalid(f"JSON object: does not have named input: {name}")
                    rows[name].append(_instance_item(value, specs[name].dtype, shapes, name))
                except ServingError as err:
                    raise with_message(
                        err,
                        f"Failed to process element: {index} key: {name} of 'instances' list. "
                        f"Error: {err.status_string()}",
                    ) from None
            if item.keys() != specs.keys():
                missing = sorted(set(specs) - set(item))
                raise invalid(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{json_value_string(item)} must only have keys: {','.join(expected)}"
                    + (f" (missing: {','.join(missing)})" if missing else "")
                )
        else:
            if _is_element_object(item):
                raise invalid(f"Expecting value/list but got object at item {index} of input list")
            (name,) = specs
            try:
                rows[name].append(_instance_item(item, specs[name].dtype, shapes, name))
            except ServingError as err:
                raise with_message(
                    err, f"Failed to process element: {index} of 'instances' list. Error: {err.status_string()}"
                ) from None
    return {name: _stack(parts, specs[name].dtype, shapes.get(name, [])) for name, parts in rows.items()}


def _instance_item(value: Any, dtype: int, shapes: dict[str, list[int]], name: str) -> np.ndarray:
    dims = _dense_shape(value)
    out: list[Any] = []
    _fill_slow(value, 0, dims, dtype, out)
    if name not in shapes:
        shapes[name] = dims
    else:
        want = shapes[name]
        if math.prod(want) != len(out):
            raise invalid(f"Expecting tensor size: {math.prod(want)} but got: {len(out)}")
        if want != dims:
            raise invalid(f"Expecting shape {shape_string(want)} but got: {shape_string(dims)}")
    array = np.empty(len(out), dtype=numpy_dtype(dtype))
    array[:] = out
    return array.reshape(dims)


def _stack(parts: list[np.ndarray], dtype: int, item_shape: list[int]) -> np.ndarray:
    if not parts:
        return np.empty([0, *item_shape], dtype=numpy_dtype(dtype))
    return np.stack(parts)


def _inputs_to_arrays(value: Any, specs: Mapping[str, TensorSpec]) -> dict[str, np.ndarray]:
    """Columnar format: one tensor, or an object naming every input."""
    if type(value) is not dict or _is_b64_object(value):
        if len(specs) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map"
            )
        (name,) = specs
        return {name: json_to_array(value, specs[name].dtype)}
    arrays: dict[str, np.ndarray] = {}
    for name in sorted(specs):
        if name not in value:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = json_to_array(value[name], specs[name].dtype)
    # Stricter than TF Serving, which ignores unknown keys here: a misspelt input silently
    # dropped would be lost data, so it is refused with predict_util's wording.
    extra = sorted(set(value) - set(specs))
    if extra:
        raise invalid(
            f"input tensor alias not found in signature: {extra[0]}. "
            f"Inputs expected to be in the set {{{','.join(sorted(specs))}}}."
        )
    return arrays



# --- Classify / Regress requests (tf.Example input) -------------------------------------------


def _add_value_to_feature(value: Any, name: str, feature: feature_pb2.Feature) -> None:
    """TF Serving's AddValueToFeature: JSON -> one value of a tf.train.Feature, kinds never mixed."""

    def require(kind: str) -> None:
        current = feature.WhichOneof("kind")
        if current is not None and current != kind:
            readable = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}[current]
            raise invalid(f"Unexpected element type in feature: {name} expecting type: {readable}")

    kind = type(value)
    if value is None or kind is list:
        raise invalid(f"Feature: {name} has element with unexpected JSON type: {_json_type_name(value)}")
    if kind is bool:
        require("int64_list")
        feature.int64_list.value.append(1 if value else 0)
    elif kind is dict:
        if not _is_b64_object(value):
            raise invalid(f"Feature: {name} has element with unexpected JSON type: Object")
        require("bytes_list")
        feature.bytes_list.value.append(_decode_b64(value))
    elif kind is str:
        require("bytes_list")
        feature.bytes_list.value.append(_utf8(value))
    elif kind is float:
        require("float_list")
        if math.isfinite(value) and abs(value) > _FLOAT32_MAX:
            raise _lossy(value, "float")
        feature.float_list.value.append(value)
    else:
        require("int64_list")
        if value > 2**63 - 1 or value < -(2**63):
            raise invalid(f"Feature: {name} has uint64 element. Only int64 is supported.")
        feature.int64_list.value.append(value)


def example_from_json(value: Any) -> example_pb2.Example:
    """One JSON object -> tf.train.Example (each key a feature; a list is that feature's values)."""
    if type(value) is not dict:
        raise invalid(f"Example must be JSON object but got JSON {_json_type_name(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        feature = example.features.feature[name]
        for item in content if type(content) is list else [content]:
            _add_value_to_feature(item, name, feature)
    return example


def parse_examples_request(body: bytes, method: str) -> tuple[str, list[bytes]]:
    """A REST classify/regress body -> (signature_name, serialized Examples with the context merged)."""
    doc = parse_json_body(body)
    if type(doc) is not dict:
        raise invalid(f"JSON Value: {json_value_string(doc)} Is not object")
    signature_name = _signature_name(doc)
    context: bytes = b""
    if "context" in doc:
        context = example_from_json(doc["context"]).SerializeToString()
    if "examples" not in doc:
        raise invalid(
            f"JSON Value: {json_value_string(doc)} When method is {method}, key 'examples' is expected and was not found"
        )
    examples = doc["examples"]
    if type(examples) is not list:
        raise invalid(f"JSON Value: {json_value_string(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid(f"JSON Value: {json_value_string(doc)} 'examples' value is an empty array")
    # Concatenated serialized protos merge, which is how TF Serving applies the shared context.
    return signature_name, [context + example_from_json(item).SerializeToString() for item in examples]
