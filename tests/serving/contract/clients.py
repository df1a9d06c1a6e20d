"""Thin REST and gRPC clients with one interface, so each contract test runs over both protocols.

They speak TF Serving's documented wire formats only (no code from `serving/`), so the same
tests hold against a real `tensorflow_model_server`. Errors come back as `CallError` carrying the
canonical code name, the HTTP status (REST) and the server's message.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any, Mapping

import grpc
import numpy as np
import requests
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

# TF Serving's HTTP mapping, inverted where it is unambiguous (400 is also FAILED_PRECONDITION).
HTTP_TO_CODE = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 409: "ALREADY_EXISTS", 501: "UNIMPLEMENTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
STATE_NAMES = {0: "UNKNOWN", 10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}


@dataclasses.dataclass
class CallError(Exception):
    code: str  # canonical code name, e.g. "NOT_FOUND"
    message: str
    http_status: int | None = None  # REST only

    def __str__(self) -> str:
        return f"{self.code} ({self.http_status}): {self.message}"


@dataclasses.dataclass(frozen=True)
class VersionState:
    version: int
    state: str
    error_code: str
    error_message: str


def _spec_path(name: str, version: int | None, label: str | None) -> str:
    path = f"/v1/models/{name}"
    if version is not None:
        path += f"/versions/{version}"
    if label is not None:
        path += f"/labels/{label}"
    return path


def _json_leaf(value: Any, binary: bool) -> Any:
    if isinstance(value, bytes):
        if binary:
            return {"b64": base64.b64encode(value).decode("ascii")}
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _column_to_json(array: Any, binary: bool) -> Any:
    if not isinstance(array, np.ndarray):
        return _json_leaf(array, binary)
    if array.ndim == 0:
        return _json_leaf(array[()], binary)
    return [_column_to_json(array[i], binary) for i in range(array.shape[0])]


class RestClient:
    api = "rest"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()

    def raw(self, method: str, path: str, body: bytes | str | None = None, timeout: float = 30) -> requests.Response:
        data = body.encode("utf-8") if isinstance(body, str) else body
        return self.session.request(method, self.base_url + path, data=data, timeout=timeout)

    def _call(self, method: str, path: str, document: Any = None) -> Any:
        body = None if document is None else json.dumps(document, allow_nan=True)
        response = self.raw(method, path, body)
        payload = json.loads(response.text) if response.text else None
        if response.status_code != 200:
            message = payload.get("error", response.text) if isinstance(payload, dict) else response.text
            raise CallError(HTTP_TO_CODE.get(response.status_code, str(response.status_code)), message, response.status_code)
        return payload

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionState]:
        payload = self._call("GET", _spec_path(name, version, label))
        return [
            VersionState(int(s["version"]), s["state"], s["status"]["error_code"], s["status"]["error_message"])
            for s in payload["model_version_status"]
        ]

    def metadata(self, name: str, version: int | None = None, label: str | None = None) -> dict[str, Any]:
        """{"name", "version", "signatures": {name: {"method_name", "inputs": {alias: (dtype, dims)}, "outputs": ...}}}"""
        payload = self._call("GET", _spec_path(name, version, label) + "/metadata")
        signatures = payload["metadata"]["signature_def"]["signature_def"]
        return {
            "name": payload["model_spec"]["name"],
            "version": int(payload["model_spec"]["version"]),
            "signatures": {key: _signature_from_json(sig) for key, sig in signatures.items()},
        }

    def predict(
        self,
        name: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: int | None = None,
        label: str | None = None,
        signature_name: str | None = None,
        columnar: bool = False,
        binary_inputs: tuple[str, ...] = (),
    ) -> dict[str, np.ndarray]:
        document: dict[str, Any] = {}
        if signature_name is not None:
            document["signature_name"] = signature_name
        columns = {k: _column_to_json(np.asarray(v), k in binary_inputs) for k, v in inputs.items()}
        if columnar:
            document["inputs"] = columns
        else:
            batch = len(next(iter(columns.values())))
            document["instances"] = [{k: column[i] for k, column in columns.items()} for i in range(batch)]
        payload = self._call("POST", _spec_path(name, version, label) + ":predict", document)
        if columnar:
            outputs = payload["outputs"]
            return {k: np.asarray(v) for k, v in outputs.items()} if isinstance(outputs, dict) else {"": np.asarray(outputs)}
        rows = payload["predictions"]
        if rows and isinstance(rows[0], dict):
            return {key: np.asarray([row[key] for row in rows]) for key in rows[0]}
        return {"": np.asarray(rows)}

    def classify(self, name: str, examples: list[dict[str, Any]], signature_name: str | None = None) -> Any:
        document: dict[str, Any] = {"examples": examples}
        if signature_name is not None:
            document["signature_name"] = signature_name
        return self._call("POST", _spec_path(name, None, None) + ":classify", document)["results"]

    def regress(self, name: str, examples: list[dict[str, Any]], signature_name: str | None = None) -> Any:
        document: dict[str, Any] = {"examples": examples}
        if signature_name is not None:
            document["signature_name"] = signature_name
        return self._call("POST", _spec_path(name, None, None) + ":regress", document)["results"]


def _signature_from_json(signature: dict[str, Any]) -> dict[str, Any]:
    def tensors(entries: dict[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
        result = {}
        for alias, info in entries.items():
            dims = tuple(int(d["size"]) for d in info.get("tensor_shape", {}).get("dim", []))
            result[alias] = (info["dtype"], dims)
        return result

    return {
        "method_name": signature["method_name"],
        "inputs": tensors(signature.get("inputs", {})),
        "outputs": tensors(signature.get("outputs", {})),
    }


_NUMPY_TO_DT = {
    np.dtype(np.float32): types_pb2.DT_FLOAT,
    np.dtype(np.float64): types_pb2.DT_DOUBLE,
    np.dtype(np.int32): types_pb2.DT_INT32,
    np.dtype(np.int64): types_pb2.DT_INT64,
    np.dtype(np.bool_): types_pb2.DT_BOOL,
}


def make_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """numpy -> TensorProto the way a typical client builds one (typed value fields)."""
    array = np.asarray(array)
    proto = tensor_pb2.TensorProto()
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape)
    if array.dtype == object or array.dtype.kind in "SU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.ravel().tolist())
        return proto
    proto.dtype = _NUMPY_TO_DT[array.dtype]
    field = {
        types_pb2.DT_FLOAT: "float_val",
        types_pb2.DT_DOUBLE: "double_val",
        types_pb2.DT_INT32: "int_val",
        types_pb2.DT_INT64: "int64_val",
        types_pb2.DT_BOOL: "bool_val",
    }[proto.dtype]
    getattr(proto, field).extend(array.ravel().tolist())
    return proto


def tensor_proto_to_numpy(proto: tensor_pb2.TensorProto) -> np.ndarray:
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.dtype == types_pb2.DT_STRING:
        return np.array(list(proto.string_val), dtype=object).reshape(shape)
    if proto.tensor_content:
        dtype = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_INT64: np.int64, types_pb2.DT_DOUBLE: np.float64}[proto.dtype]
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
    if proto.dtype == types_pb2.DT_FLOAT:
        return np.array(proto.float_val, dtype=np.float32).reshape(shape)
    if proto.dtype == types_pb2.DT_INT64:
        return np.array(proto.int64_val, dtype=np.int64).reshape(shape)
    if proto.dtype == types_pb2.DT_DOUBLE:
        return np.array(proto.double_val, dtype=np.float64).reshape(shape)
    raise AssertionError(f"unexpected output dtype {proto.dtype}")


class GrpcClient:
    api = "grpc"

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    @staticmethod
    def spec(name: str, version: int | None = None, label: str | None = None, signature_name: str | None = None) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=name)
        if version is not None:
            spec.version.value = version
        if label is not None:
            spec.version_label = label
        if signature_name is not None:
            spec.signature_name = signature_name
        return spec

    @staticmethod
    def _invoke(method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=60)
        except grpc.RpcError as err:
            raise CallError(err.code().name, err.details() or "") from None

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionState]:
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=self.spec(name, version, label))
        response = self._invoke(self.models.GetModelStatus, request)
        return [
            VersionState(
                s.version,
                STATE_NAMES[s.state],
                # error_codes.proto names, as TF Serving's JSON prints them
                _ERROR_CODE_NAMES.get(s.status.error_code, str(s.status.error_code)),
                s.status.error_message,
            )
            for s in response.model_version_status
        ]

    def metadata(self, name: str, version: int | None = None, label: str | None = None) -> dict[str, Any]:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=self.spec(name, version, label), metadata_field=["signature_def"]
        )
        response = self._invoke(self.prediction.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        assert response.metadata["signature_def"].Unpack(signature_map)
        signatures = {}
        for key, sig in signature_map.signature_def.items():
            signatures[key] = {
                "method_name": sig.method_name,
                "inputs": {a: (types_pb2.DataType.Name(i.dtype), tuple(d.size for d in i.tensor_shape.dim)) for a, i in sig.inputs.items()},
                "outputs": {a: (types_pb2.DataType.Name(i.dtype), tuple(d.size for d in i.tensor_shape.dim)) for a, i in sig.outputs.items()},
            }
        return {"name": response.model_spec.name, "version": response.model_spec.version.value, "signatures": signatures}

    def predict_response(
        self,
        name: str,
        inputs: Mapping[str, np.ndarray | tensor_pb2.TensorProto],
        *,
        version: int | None = None,
        label: str | None = None,
        signature_name: str | None = None,
        output_filter: tuple[str, ...] = (),
    ) -> predict_pb2.PredictResponse:
        request = predict_pb2.PredictRequest(model_spec=self.spec(name, version, label, signature_name))
        for alias, value in inputs.items():
            request.inputs[alias].CopyFrom(value if isinstance(value, tensor_pb2.TensorProto) else make_tensor_proto(value))
        request.output_filter.extend(output_filter)
        return self._invoke(self.prediction.Predict, request)

    def predict(self, name: str, inputs: Mapping[str, np.ndarray], **kwargs: Any) -> dict[str, np.ndarray]:
        kwargs.pop("columnar", None)
        kwargs.pop("binary_inputs", None)
        response = self.predict_response(name, inputs, **kwargs)
        return {alias: tensor_proto_to_numpy(t) for alias, t in response.outputs.items()}

    def classify(self, name: str, examples: list[bytes], signature_name: str | None = None) -> classification_pb2.ClassificationResponse:
        request = classification_pb2.ClassificationRequest(model_spec=self.spec(name, signature_name=signature_name))
        for serialized in examples:
            request.input.example_list.examples.add().ParseFromString(serialized)
        return self._invoke(self.prediction.Classify, request)

    def regress(self, name: str, examples: list[bytes], signature_name: str | None = None) -> regression_pb2.RegressionResponse:
        request = regression_pb2.RegressionRequest(model_spec=self.spec(name, signature_name=signature_name))
        for serialized in examples:
            request.input.example_list.examples.add().ParseFromString(serialized)
        return self._invoke(self.prediction.Regress, request)

    def multi_inference(self, name: str, tasks: list[tuple[str, str]], examples: list[bytes]) -> inference_pb2.MultiInferenceResponse:
        request = inference_pb2.MultiInferenceRequest()
        for signature_name, method in tasks:
            task = request.tasks.add(method_name=method)
            task.model_spec.CopyFrom(self.spec(name, signature_name=signature_name))
        for serialized in examples:
            request.input.example_list.examples.add().ParseFromString(serialized)
        return self._invoke(self.prediction.MultiInference, request)

    def reload_config(self, config: model_server_config_pb2.ModelServerConfig) -> model_management_pb2.ReloadConfigResponse:
        request = model_management_pb2.ReloadConfigRequest(config=config)
        return self._invoke(self.models.HandleReloadConfigRequest, request)

    def close(self) -> None:
        self.channel.close()


_ERROR_CODE_NAMES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION", 10: "ABORTED",
    11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}
