"""TF Serving's wire formats: REST JSON <-> numpy arrays, `TensorProto` <-> numpy arrays, and errors.

The rules follow TF Serving's own `util/json_tensor.cc` and `servables/tensorflow/predict_util.cc`
(read from tensorflow/serving), so a client written against `tensorflow_model_server` gets the same
shapes, the same type checks and the same error messages here:

- requests: `signature_name`, then `instances` (row format) or `inputs` (columnar), never both;
  binary values as `{"b64": "..."}`; NaN/Infinity/-Infinity accepted; an int sent for a float is
  accepted only when float32 can hold it exactly; a float sent for an int is a type error.
- responses: row requests get `{"predictions": [...]}` (a list of objects when there are several
  outputs), columnar requests get `{"outputs": ...}`; outputs named `*_bytes` are base64 objects.
- errors: a status code (the gRPC code set) and a message; REST bodies are `{"error": "..."}`.

Conversions are vectorised: a batch of scalars becomes one numpy array without a Python loop per
value; the slow, value-by-value path only runs to find the exact place of an error.

Where this module is stricter than TF Serving, it says so next to the check: a request is never
silently truncated or half-used.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import itertools
import json
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import orjson
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from core.errors import DataError
from serving.status import HTTP_STATUS, Code, ServingError  # noqa: F401 - re-exported for the model server


class InvalidRequestError(ServingError, DataError):
    """The request itself is unusable (INVALID_ARGUMENT): wrong type, shape, name or JSON."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.INVALID_ARGUMENT, message)


def invalid(message: str) -> InvalidRequestError:
    return InvalidRequestError(message)


def _utf8(value: str) -> bytes:
    """A JSON string as tensor bytes; a lone surrogate (valid JSON escape, not text) is a client error."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise invalid(f"JSON Parse error: Invalid encoding in string: {value[max(err.start - 10, 0):err.end + 10]!r}") from None


def with_message(err: ServingError, message: str) -> ServingError:
    """The same kind of error (and class) with a message that adds where it happened."""
    return invalid(message) if err.code == Code.INVALID_ARGUMENT else ServingError(err.code, message)


# --- Data types -------------------------------------------------------------------------------

DT_FLOAT = types_pb2.DT_FLOAT
DT_DOUBLE = types_pb2.DT_DOUBLE
DT_INT32 = types_pb2.DT_INT32
DT_UINT8 = types_pb2.DT_UINT8
DT_INT16 = types_pb2.DT_INT16
DT_INT8 = types_pb2.DT_INT8
DT_STRING = types_pb2.DT_STRING
DT_COMPLEX64 = types_pb2.DT_COMPLEX64
DT_INT64 = types_pb2.DT_INT64
DT_BOOL = types_pb2.DT_BOOL
DT_BFLOAT16 = types_pb2.DT_BFLOAT16
DT_UINT16 = types_pb2.DT_UINT16
DT_COMPLEX128 = types_pb2.DT_COMPLEX128
DT_HALF = types_pb2.DT_HALF
DT_UINT32 = types_pb2.DT_UINT32
DT_UINT64 = types_pb2.DT_UINT64


@dataclasses.dataclass(frozen=True)
class _DType:
    name: str  # TensorFlow's DataTypeString, used in messages
    numpy: Any  # numpy dtype of the in-memory array (object for strings)
    proto_field: str  # the repeated TensorProto field AsProtoField writes
    bits_view: Any = None  # half/bfloat16 travel as their 16-bit patterns in `half_val`


def _bfloat16_dtype() -> Any:
    import ml_dtypes  # shipped with TensorFlow; only needed for bfloat16 tensors

    return np.dtype(ml_dtypes.bfloat16)


_DTYPES: dict[int, _DType] = {
    DT_FLOAT: _DType("float", np.dtype(np.float32), "float_val"),
    DT_DOUBLE: _DType("double", np.dtype(np.float64), "double_val"),
    DT_INT32: _DType("int32", np.dtype(np.int32), "int_val"),
    DT_UINT8: _DType("uint8", np.dtype(np.uint8), "int_val"),
    DT_INT16: _DType("int16", np.dtype(np.int16), "int_val"),
    DT_INT8: _DType("int8", np.dtype(np.int8), "int_val"),
    DT_UINT16: _DType("uint16", np.dtype(np.uint16), "int_val"),
    DT_STRING: _DType("string", np.dtype(object), "string_val"),
    DT_COMPLEX64: _DType("complex64", np.dtype(np.complex64), "scomplex_val"),
    DT_COMPLEX128: _DType("complex128", np.dtype(np.complex128), "dcomplex_val"),
    DT_INT64: _DType("int64", np.dtype(np.int64), "int64_val"),
    DT_BOOL: _DType("bool", np.dtype(np.bool_), "bool_val"),
    DT_HALF: _DType("half", np.dtype(np.float16), "half_val", bits_view=np.dtype(np.uint16)),
    DT_UINT32: _DType("uint32", np.dtype(np.uint32), "uint32_val"),
    DT_UINT64: _DType("uint64", np.dtype(np.uint64), "uint64_val"),
}


def dtype_name(dtype: int) -> str:
    """TensorFlow's name for a DataType enum value (`float`, `int64`, `string`...)."""
    known = _DTYPES.get(dtype)
    if known is not None:
        return known.name
    if dtype == DT_BFLOAT16:
        return "bfloat16"
    name = types_pb2.DataType.Name(dtype) if dtype in types_pb2.DataType.values() else str(dtype)
    return name.removeprefix("DT_").lower()


def numpy_dtype(dtype: int) -> np.dtype:
    """The numpy dtype holding a tensor of `dtype`; UNIMPLEMENTED for types TF Serving cannot carry."""
    if dtype == DT_BFLOAT16:
        return _bfloat16_dtype()
    known = _DTYPES.get(dtype)
    if known is None:
        raise ServingError(Code.UNIMPLEMENTED, f"Tensors of type {dtype_name(dtype)} are not supported")
    return known.numpy


def dtype_of_array(array: np.ndarray) -> int:
    """The DataType enum of a numpy array (bytes/str/object arrays are DT_STRING)."""
    kind = array.dtype
    if kind == object or kind.kind in ("S", "U"):
        return DT_STRING
    for enum_value, info in _DTYPES.items():
        if info.numpy == kind and enum_value != DT_STRING:
            return enum_value
    if kind.name == "bfloat16":
        return DT_BFLOAT16
    raise ServingError(Code.UNIMPLEMENTED, f"numpy arrays of dtype {kind} have no TensorFlow equivalent")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One signature input or output, as the SignatureDef's TensorInfo describes it."""

    alias: str  # the key in the SignatureDef (what clients name)
    dtype: int  # DataType enum
    shape: tuple[int, ...] | None  # -1 for an unknown dimension; None for unknown rank

    def shape_string(self) -> str:
        return "[?]" if self.shape is None else "[" + ",".join(str(d) for d in self.shape) + "]"

    def accepts_shape(self, shape: Sequence[int]) -> bool:
        if self.shape is None:
            return True
        return len(shape) == len(self.shape) and all(want in (-1, got) for want, got in zip(self.shape, shape))


def shape_string(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


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


_SCALAR_TYPES = frozenset((int, float, str, bool, dict, type(None)))


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


# --- Classify / Regress (tf.Example input) ----------------------------------------------------


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


# --- TensorProto <-> numpy --------------------------------------------------------------------


def array_to_tensor_proto(array: np.ndarray, dtype: int | None = None) -> tensor_pb2.TensorProto:
    """numpy -> TensorProto in TF Serving's response encoding (typed `*_val` fields, not tensor_content)."""
    dtype = dtype_of_array(array) if dtype is None else dtype
    proto = tensor_pb2.TensorProto(dtype=dtype)
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in array.shape)
    flat = array.ravel()
    if dtype == DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode("utf-8") for v in flat.tolist())
    elif dtype in (DT_HALF, DT_BFLOAT16):
        proto.half_val.extend(flat.view(np.uint16).astype(np.int32).tolist())
    elif dtype in (DT_COMPLEX64, DT_COMPLEX128):
        pairs = np.empty(flat.size * 2, dtype=np.float64)
        pairs[0::2], pairs[1::2] = flat.real, flat.imag
        getattr(proto, _DTYPES[dtype].proto_field).extend(pairs.tolist())
    else:
        info = _DTYPES.get(dtype)
        if info is None:
            raise ServingError(Code.UNIMPLEMENTED, f"Tensors of type {dtype_name(dtype)} are not supported")
        getattr(proto, info.proto_field).extend(flat.tolist())
    return proto


# The most elements a tensor may be filled up to from fewer values (TensorFlow's "repeat the last
# value" rule). A few bytes of proto must not make the server allocate gigabytes: TF Serving would
# try (and fail, or be killed for it) on a shape of 10^9 strings.
MAX_FILLED_ELEMENTS = 1 << 22


def tensor_proto_to_array(proto: tensor_pb2.TensorProto, alias: str) -> np.ndarray:
    """TensorProto -> numpy with TensorFlow's Tensor::FromProto rules (tensor_content or `*_val`).

    As in TensorFlow, fewer values than the shape holds repeat the last value (up to
    MAX_FILLED_ELEMENTS elements); more is an error.
    """
    if proto.tensor_shape.unknown_rank:
        raise invalid(f"tensor parsing error: {alias} (the tensor has an unknown rank)")
    shape = [int(d.size) for d in proto.tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise invalid(f"tensor parsing error: {alias} (negative dimension in shape {shape_string(shape)})")
    size = math.prod(shape)
    dtype = proto.dtype
    target = numpy_dtype(dtype)
    if dtype == DT_STRING:
        values: Any = list(proto.string_val)
    elif proto.tensor_content:
        try:
            return np.frombuffer(proto.tensor_content, dtype=target).reshape(shape).copy()
        except ValueError:
            raise invalid(
                f"tensor parsing error: {alias} (tensor_content holds {len(proto.tensor_content)} bytes, "
                f"not {size} values of {dtype_name(dtype)})"
            ) from None
    elif dtype in (DT_HALF, DT_BFLOAT16):
        values = np.array(proto.half_val, dtype=np.uint16).view(target)
    elif dtype in (DT_COMPLEX64, DT_COMPLEX128):
        pairs = np.array(getattr(proto, _DTYPES[dtype].proto_field), dtype=np.float64)
        values = (pairs[0::2] + 1j * pairs[1::2]).astype(target)
    else:
        values = getattr(proto, _DTYPES[dtype].proto_field)
    count = len(values)
    if count > size:
        raise invalid(f"tensor parsing error: {alias} ({count} values for shape {shape_string(shape)})")
    if count < size and size > MAX_FILLED_ELEMENTS:
        raise invalid(
            f"tensor parsing error: {alias} (shape {shape_string(shape)} asks for {size} elements from {count} values; "
            f"at most {MAX_FILLED_ELEMENTS} elements are filled in from fewer values: send the values)"
        )
    if dtype == DT_STRING:
        array = np.empty(size, dtype=object)
        if count:
            array[:count] = values
            array[count:] = values[-1]
        else:
            array[:] = b""
        return array.reshape(shape)
    flat = np.asarray(values, dtype=target) if count else np.zeros(0, dtype=target)
    if count == size:
        return flat.reshape(shape)
    filled = np.zeros(size, dtype=target)
    if count:
        filled[:count] = flat
        filled[count:] = flat[-1]
    return filled.reshape(shape)


def examples_from_input(input_proto: Any) -> list[bytes]:
    """`tensorflow.serving.Input` -> serialized Examples (context merged), TF Serving's rule."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        context = input_proto.example_list_with_context.context.SerializeToString()
        examples = [context + e.SerializeToString() for e in input_proto.example_list_with_context.examples]
    else:
        examples = []
    if not examples:
        raise invalid("Input is empty.")
    return examples
