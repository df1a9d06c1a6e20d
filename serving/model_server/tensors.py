"""Tensors as the model server holds them: TensorFlow's data types, a signature's `TensorSpec`,
numpy arrays <-> `TensorProto` (gRPC requests and responses, warm-up records) and the serialized
tf.Examples of a gRPC `Input`.

The rules are TensorFlow's and TF Serving's (`Tensor::FromProto`, `AsProtoField`,
`input_util.cc`); where this module is stricter, it says so next to the check. The TensorFlow-free
conversions the clients and the gateway use are in `serving/tensor_protos.py`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.status import Code, ServingError, invalid

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


def shape_string(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


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
