"""A SignatureDef as the server uses it, and TF Serving's checks around a call to one: the
request checks before it (predict_util.cc, classifier.cc, regressor.cc) and the checks that turn
the outputs of a classify or regress signature into results after it. Plain functions of the
signature and numpy arrays: they never call TensorFlow.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Sequence

import numpy as np
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving.model_server.tensors import (
    DT_FLOAT,
    DT_STRING,
    TensorSpec,
    dtype_name,
    dtype_of_array,
    shape_string,
    tensor_proto_to_array,
)
from serving.status import Code, ServingError, invalid

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


@dataclasses.dataclass(frozen=True)
class Signature:
    """A SignatureDef as the server uses it: typed inputs and outputs by alias."""

    name: str
    method_name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    debug_string: str = ""  # the SignatureDef as text, as TF Serving's messages quote it (DebugString)
    feed_names: Mapping[str, str] = dataclasses.field(default_factory=dict)  # alias -> graph tensor name
    # SignatureDef.defaults (a TF2 function's default arguments): alias -> value, None if unreadable
    defaults: Mapping[str, np.ndarray | None] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_def(cls, name: str, signature_def: meta_graph_pb2.SignatureDef) -> "Signature":
        return cls(
            name=name,
            method_name=signature_def.method_name,
            inputs={alias: _tensor_spec(alias, info) for alias, info in signature_def.inputs.items()},
            outputs={alias: _tensor_spec(alias, info) for alias, info in signature_def.outputs.items()},
            debug_string=text_format.MessageToString(signature_def),
            feed_names={alias: info.name for alias, info in signature_def.inputs.items()},
            defaults={alias: _default_value(alias, proto) for alias, proto in signature_def.defaults.items()},
        )


def _default_value(alias: str, proto: tensor_pb2.TensorProto) -> np.ndarray | None:
    try:
        return tensor_proto_to_array(proto, alias)
    except ServingError:  # TF Serving fails the requests that need it ("tensor parsing error")
        return None


ClassificationResult = list[list[tuple[bytes, float]]]  # per example: (label, score) per class


def _tensor_spec(alias: str, info: meta_graph_pb2.TensorInfo) -> TensorSpec:
    shape = None if info.tensor_shape.unknown_rank else tuple(int(d.size) for d in info.tensor_shape.dim)
    return TensorSpec(alias=alias, dtype=int(info.dtype), shape=shape)


def check_input_names(signature: Signature, names: Iterable[str]) -> None:
    """predict_util.cc's VerifyRequestInputsSize, then the name checks of TF's
    saved_model::GetInputValues, with their messages: every signature input is sent or has a
    default (SignatureDef.defaults), and every name sent is a signature input."""
    sent, wanted = sorted(names), sorted(signature.inputs)
    if len(sent) > len(wanted) or (len(sent) < len(wanted) and not signature.defaults):
        extra = sorted(set(sent) - set(wanted))
        missing = sorted(set(wanted) - set(sent))
        raise invalid(
            f"input size does not match signature: {len(sent)}!={len(wanted)} len({{{','.join(sent)}}}) != "
            f"len({{{','.join(wanted)}}}). Sent extra: {{{','.join(extra)}}}. "
            f"Missing but required: {{{','.join(missing)}}}."
        )
    for alias in wanted:
        if alias not in sent and alias not in signature.defaults:
            raise invalid(
                f"Signature input alias: {alias}(feed name: {signature.feed_names.get(alias, '')}) not found in "
                f"request and no default value provided. Inputs expected to be in the request {{{','.join(sent)}}}, "
                f"or default input alias set: {','.join(sorted(signature.defaults))}"
            )
    used = [alias for alias in sent if alias in signature.inputs]
    if sent and len(used) != len(sent):
        raise invalid(f"Inputs contains invalid name. Used request inputs: {','.join(used)}, request input: {','.join(sent)}")


def with_defaults(signature: Signature, inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """The inputs plus the signature's default value of each input not sent (names checked first)."""
    if len(inputs) == len(signature.inputs):
        return inputs
    filled = dict(inputs)
    for alias in signature.inputs:
        if alias not in filled:
            value = signature.defaults[alias]
            if value is None:
                raise invalid(f"tensor parsing error: {alias}")
            filled[alias] = value
    return filled


def check_input_arrays(
    signature: Signature, inputs: Mapping[str, np.ndarray], graph_dtypes: Mapping[str, int] | None = None
) -> None:
    """The dtype of each input, with the message TF's runtime gives for a fed tensor of another type.
    `graph_dtypes` (alias -> DataType) are the types the graph takes, where known: TF Serving's
    runtime compares with those, not with the SignatureDef (old exports have wrong dtypes there).

    Shapes are not checked: TF Serving feeds the tensors as they come (predict_util.cc checks the
    input names only) and lets the graph decide, so a [3] tensor for an `x` declared [-1,1] runs
    wherever the graph's ops accept it, and an op that cannot take it answers with TF's own
    INVALID_ARGUMENT."""
    for index, alias in enumerate(sorted(inputs)):
        array, spec = inputs[alias], signature.inputs[alias]
        want = (graph_dtypes or {}).get(alias, spec.dtype)
        got = dtype_of_array(array)
        if got != want:
            raise invalid(
                f"Expects arg[{index}] to be {dtype_name(want)} but {dtype_name(got)} is provided "
                f"(input '{alias}')"
            )


def check_output_filter(signature: Signature, output_filter: Sequence[str]) -> list[str]:
    if not output_filter:
        return list(signature.outputs)
    seen: set[str] = set()
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{','.join(sorted(signature.outputs))}}}."
            )
        if alias in seen:
            raise invalid(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return list(output_filter)


def check_predict_method_name(signature: Signature, check_method_name: bool) -> None:
    """predict_util.cc's VerifySignature: only with --enable_signature_method_name_check."""
    if check_method_name and signature.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
        raise ServingError(
            Code.INTERNAL,
            f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, "
            f"{CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: {signature.method_name}",
        )


def check_examples_signature(signature: Signature, method: str, check_method_name: bool) -> None:
    """PreProcessClassification / PreProcessRegression (classifier.cc, regressor.cc).

    The method name is checked only with --enable_signature_method_name_check (TF Serving's default
    is off, so the signatures of a native TF2 export, all `tensorflow/serving/predict`, can serve
    Classify and Regress); the signature's inputs and outputs are checked either way."""
    kind = "classification" if method == CLASSIFY_METHOD else "regression"
    if check_method_name and signature.method_name != method:
        raise invalid(f"Expected {kind} signature method_name to be {method}. Was: {signature.method_name}")
    if len(signature.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if method == CLASSIFY_METHOD and len(signature.outputs) not in (1, 2):
        raise invalid(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if method == REGRESS_METHOD and len(signature.outputs) != 1:
        raise invalid("Expected one output Tensor.")
    if "inputs" not in signature.inputs:
        raise invalid(f"No {kind} inputs found in SignatureDef: {signature.debug_string}")
    if method == CLASSIFY_METHOD and "classes" not in signature.outputs and "scores" not in signature.outputs:
        raise invalid(
            'Expected classification signature outputs to contain at least one of "classes" or "scores". '
            f"Signature was: {signature.debug_string}"
        )
    if method == REGRESS_METHOD and "outputs" not in signature.outputs:
        raise invalid(f"No regression outputs found in SignatureDef: {signature.debug_string}")


def classification_result(outputs: Mapping[str, np.ndarray], num_examples: int) -> ClassificationResult:
    """PostProcessClassificationResult: validate `classes`/`scores`, then pair them per example."""
    classes, scores = outputs.get("classes"), outputs.get("scores")
    for name, tensor, dtype in (("classes", classes, DT_STRING), ("scores", scores, DT_FLOAT)):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got {shape_string(tensor.shape)}")
        if dtype_of_array(tensor) != dtype:
            raise invalid(f"Expected {name} Tensor of DT_{dtype_name(dtype).upper()}. Got: {dtype_name(dtype_of_array(tensor))}")
        if tensor.shape[0] != num_examples:
            raise invalid(f"Expected {name} output batch size of {num_examples}. Got: {tensor.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid(f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}")
    num_classes = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    result: ClassificationResult = []
    for i in range(num_examples):
        result.append(
            [
                (
                    bytes(classes[i, c]) if classes is not None else b"",
                    float(scores[i, c]) if scores is not None else 0.0,
                )
                for c in range(num_classes)
            ]
        )
    return result


def regression_result(output: np.ndarray, num_examples: int) -> list[float]:
    if not (output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)):
        raise invalid(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {shape_string(output.shape)}"
        )
    if output.shape[0] != num_examples:
        raise invalid(f"Input batch size did not match output batch size: {num_examples} vs. {output.shape[0]}")
    if output.dtype != np.float32:
        raise invalid(f"Expected output Tensor of DT_FLOAT.  Got: {dtype_name(dtype_of_array(output))}")
    return [float(v) for v in output.ravel()]
