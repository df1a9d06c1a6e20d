"""numpy arrays <-> TensorProto with TensorFlow's rules (tensors.py)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize(
    "array",
    [
        np.asarray([[1.5, -2.0]], dtype=np.float32),
        np.asarray([1.0, 2.0], dtype=np.float64),
        np.asarray([1, -2], dtype=np.int32),
        np.asarray([[1], [2]], dtype=np.int64),
        np.asarray([True, False]),
        np.asarray([1, 255], dtype=np.uint8),
        np.asarray([1.5, 2.0], dtype=np.float16),
        np.asarray([b"a", b"\xff"], dtype=object),
        np.asarray([1 + 2j], dtype=np.complex64),
    ],
)
def test_tensor_proto_round_trip(array: np.ndarray) -> None:
    from serving.model_server.tensors import array_to_tensor_proto, tensor_proto_to_array

    back = tensor_proto_to_array(array_to_tensor_proto(array), "x")
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_tensor_proto_rules_from_tensorflow() -> None:
    import tensorflow as tf

    from serving.model_server.tensors import tensor_proto_to_array
    from serving.status import InvalidRequestError

    content = tf.make_tensor_proto(np.arange(6, dtype=np.float32).reshape(2, 3))  # tensor_content encoding
    np.testing.assert_array_equal(tensor_proto_to_array(content, "x"), np.arange(6, dtype=np.float32).reshape(2, 3))
    short = tf.make_tensor_proto(np.float32(0))
    short.tensor_shape.dim.add(size=3)
    short.ClearField("tensor_content")
    short.float_val[:] = [7.0]
    np.testing.assert_array_equal(tensor_proto_to_array(short, "x"), [7.0, 7.0, 7.0])  # last value repeats
    too_many = tf.make_tensor_proto([1, 2, 3], dtype=tf.int64)
    too_many.ClearField("tensor_content")
    too_many.int64_val[:] = [1, 2, 3, 4]
    with pytest.raises(InvalidRequestError, match="tensor parsing error: x"):
        tensor_proto_to_array(too_many, "x")
