"""TF Serving's protos without TensorFlow, and conversions between feature columns and
`TensorProto`s: what the clients and the gateway need to speak gRPC (14 s and ~500 MB of
TensorFlow they never use).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import threading
import types
from typing import Any, Sequence

from transforms.features import Kind

_PROTO_LOCK = threading.Lock()


@functools.cache
def serving_apis() -> types.SimpleNamespace:
    """TF Serving's `tensorflow_serving.apis` modules, plus `tensor_pb2` and `types_pb2`.

    Those protos import `tensorflow.core.framework.*_pb2`, and importing any `tensorflow.*`
    module runs `tensorflow/__init__.py`, which loads all of TensorFlow. When TensorFlow is not
    loaded yet, a bare package object stands in for `tensorflow` while the pure-protobuf
    modules load from TensorFlow's own files, and is removed afterwards, so a later
    `import tensorflow` still runs the real initialisation (and shares these very classes).
    """
    with _PROTO_LOCK:
        stand_in = None
        if "tensorflow" not in sys.modules:
            spec = importlib.util.find_spec("tensorflow")
            if spec is None or not spec.submodule_search_locations:
                raise ImportError("the tensorflow package (which ships the TensorFlow protos) is not installed")
            stand_in = types.ModuleType("tensorflow")
            stand_in.__path__ = list(spec.submodule_search_locations)
            sys.modules["tensorflow"] = stand_in
        try:
            names = ("predict_pb2", "prediction_service_pb2_grpc", "get_model_metadata_pb2", "get_model_status_pb2",
                     "model_service_pb2_grpc", "model_pb2")
            apis = {name: importlib.import_module(f"tensorflow_serving.apis.{name}") for name in names}
            apis["tensor_pb2"] = importlib.import_module("tensorflow.core.framework.tensor_pb2")
            apis["types_pb2"] = importlib.import_module("tensorflow.core.framework.types_pb2")
        finally:
            if stand_in is not None and sys.modules.get("tensorflow") is stand_in:
                del sys.modules["tensorflow"]
    return types.SimpleNamespace(**apis)


def tensor_from_values(kind: Kind, values: Sequence[Any]) -> Any:
    """A 1-D `TensorProto` of `values` with the dtype the serving signature expects for `kind`."""
    apis = serving_apis()
    tensor = apis.tensor_pb2.TensorProto()
    tensor.tensor_shape.dim.add().size = len(values)
    if kind is Kind.FLOAT:
        tensor.dtype = apis.types_pb2.DT_FLOAT
        tensor.float_val.extend(values)
    elif kind is Kind.INT:
        tensor.dtype = apis.types_pb2.DT_INT64
        tensor.int64_val.extend(values)
    else:
        tensor.dtype = apis.types_pb2.DT_STRING
        tensor.string_val.extend(v.encode("utf-8") if isinstance(v, str) else v for v in values)
    return tensor


# tensorflow/core/framework/types.proto numbers (wire constants): dtype -> (value field, packed numpy dtype).
_TENSOR_FIELDS: dict[int, tuple[str, str | None]] = {
    1: ("float_val", "<f4"),  # DT_FLOAT
    2: ("double_val", "<f8"),  # DT_DOUBLE
    3: ("int_val", "<i4"),  # DT_INT32
    9: ("int64_val", "<i8"),  # DT_INT64
    7: ("string_val", None),  # DT_STRING
}


def values_from_tensor(tensor: Any, name: str, max_count: int | None = None) -> list[Any]:
    """The values of a 1-D `TensorProto` as Python floats, ints or bytes.

    Handles the packed `tensor_content` form that `tf.make_tensor_proto` produces, and TF's rule
    that a single value fills the whole shape. A shape longer than `max_count` is refused before
    anything is filled in. Raises ValueError naming the tensor otherwise.
    """
    dims = tensor.tensor_shape.dim
    if tensor.tensor_shape.unknown_rank or len(dims) != 1 or dims[0].size < 0:
        shape = "a tensor of unknown rank" if tensor.tensor_shape.unknown_rank else f"shape {[d.size for d in dims]}"
        raise ValueError(f"input {name!r} must be a 1-D tensor (one value per example), got {shape}")
    count = dims[0].size
    if max_count is not None and count > max_count:
        raise ValueError(f"input {name!r} has {count} values (its shape); at most {max_count} examples are accepted per request")
    field = _TENSOR_FIELDS.get(tensor.dtype)
    if field is None:
        types = serving_apis().types_pb2.DataType
        dtype = types.Name(tensor.dtype) if tensor.dtype in types.values() else f"number {tensor.dtype}"
        raise ValueError(f"input {name!r} has unsupported dtype {dtype}")
    if tensor.tensor_content:
        if field[1] is None:
            raise ValueError(f"input {name!r}: packed tensor_content is not supported for strings")
        import numpy as np

        width = np.dtype(field[1]).itemsize
        if len(tensor.tensor_content) % width:
            raise ValueError(f"input {name!r}: tensor_content holds {len(tensor.tensor_content)} bytes, "
                             f"not a whole number of {width}-byte values")
        values = np.frombuffer(tensor.tensor_content, dtype=field[1]).tolist()
    else:
        values = list(getattr(tensor, field[0]))
    if len(values) == 1 and count > 1:
        values = values * count
    if len(values) != count:
        raise ValueError(f"input {name!r}: shape says {count} values, its {field[0]} holds {len(values)}")
    return values
