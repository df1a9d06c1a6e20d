"""The gRPC edge: `tensorflow.serving.PredictionService/Predict` through the core, and
`GetModelMetadata` / `ModelService.GetModelStatus` passed through to the model server's gRPC port.

The routing key comes in metadata `x-request-key`, the request id in `x-request-id`; the answer
adds a `decision` string output and trailing metadata `x-request-id`, `x-model-label`,
`x-automation`; `output_filter` picks among `probability`, `class` and `decision`. The core's
errors end the call with their code (`GatewayError.code`).
"""

from __future__ import annotations

import math
import time
from typing import Any

from serving.gateway.core import GatewayCore, Served, assign_request_id
from serving.gateway.errors import GatewayError, InvalidRequest
from serving.gateway.inputs import check_inputs
from serving.protocol import (
    CLASS_OUTPUT,
    DECISION_OUTPUT,
    DEFAULT_SIGNATURE,
    PROBABILITY_OUTPUT,
    REQUEST_ID_METADATA,
    REQUEST_KEY_METADATA,
)
from serving.tensor_protos import serving_apis, tensor_from_values, values_from_tensor
from transforms.features import Kind

_GRPC_OUTPUTS = frozenset({PROBABILITY_OUTPUT, CLASS_OUTPUT, DECISION_OUTPUT})


def build_grpc_server(core: GatewayCore) -> Any:
    """A grpc.aio server with the gateway's two services (ports are added by the caller)."""
    import grpc

    apis = serving_apis()
    api = GrpcApi(core)

    class PredictionService(apis.prediction_service_pb2_grpc.PredictionServiceServicer):
        async def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
            return await api.predict(request, context)

        async def GetModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
            return await api.passthrough("GetModelMetadata", request, context)

    class ModelService(apis.model_service_pb2_grpc.ModelServiceServicer):
        async def GetModelStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
            return await api.passthrough("GetModelStatus", request, context)

    limit = core.settings.max_body_bytes
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", 64 << 20)])
    apis.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(), server)
    apis.model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)
    return server


class GrpcApi:
    """The gRPC handlers of one gateway."""

    def __init__(self, core: GatewayCore) -> None:
        self.core = core
        self.settings = core.settings

    async def predict(self, request: Any, context: Any) -> Any:
        started = time.perf_counter()
        arrival_us = time.time_ns() // 1000
        metadata = {key: value for key, value in (context.invocation_metadata() or ())}
        request_id = assign_request_id(metadata.get(REQUEST_ID_METADATA))
        trailing = [(REQUEST_ID_METADATA, request_id)]
        core = self.core
        core.enter()
        try:
            spec = request.model_spec
            choice = spec.WhichOneof("version_choice")
            version = spec.version.value if choice == "version" else None
            label = spec.version_label if choice == "version_label" else None
            try:
                if spec.signature_name not in ("", DEFAULT_SIGNATURE):
                    raise InvalidRequest(f"signature_name {spec.signature_name!r} is not served by the gateway; use {DEFAULT_SIGNATURE!r}")
                unknown_outputs = set(request.output_filter) - _GRPC_OUTPUTS
                if unknown_outputs:
                    raise InvalidRequest(f"output_filter names {sorted(unknown_outputs)}; the gateway's outputs are {sorted(_GRPC_OUTPUTS)}")
                checked = check_inputs(_columns(request.inputs, self.settings.max_instances), self.settings.max_instances)
            except GatewayError as err:
                core.count_refusal(spec.name, err)
                raise
            served = await core.serve(spec.name, version, label, checked, metadata.get(REQUEST_KEY_METADATA), request_id, arrival_us, started)
            trailing += [("x-model-label", served.target.label), ("x-automation", served.route.automation)]
            context.set_trailing_metadata(tuple(trailing))
            return self._answer(served, spec, set(request.output_filter))
        except GatewayError as err:
            context.set_trailing_metadata(tuple(trailing))
            await context.abort(_status_code(err), err.message)
        finally:
            core.leave()

    @staticmethod
    def _answer(served: Served, spec: Any, wanted: set[str]) -> Any:
        """The PredictResponse; `wanted` is the request's output_filter (empty: every output, as in TF Serving)."""
        apis = serving_apis()
        response = apis.predict_pb2.PredictResponse()
        response.model_spec.name = served.route.model_name
        response.model_spec.signature_name = spec.signature_name or DEFAULT_SIGNATURE
        if served.target.version is not None:
            response.model_spec.version.value = served.target.version
        if served.route.automation != "shadow":
            response.outputs[PROBABILITY_OUTPUT].CopyFrom(tensor_from_values(
                Kind.FLOAT, [p if p is not None else math.nan for p in served.probabilities]))
            response.outputs[CLASS_OUTPUT].CopyFrom(tensor_from_values(
                Kind.INT, [c if c is not None else -1 for c in served.classes]))
        response.outputs[DECISION_OUTPUT].CopyFrom(tensor_from_values(Kind.STRING, served.decisions))
        if wanted:
            for alias in set(response.outputs) - wanted:
                del response.outputs[alias]
        return response

    async def passthrough(self, method: str, request: Any, context: Any) -> Any:
        """GetModelMetadata and GetModelStatus, asked of the model server's gRPC API."""
        try:
            self.core.require_model(request.model_spec.name)
            upstream = self.core.grpc_passthrough()
            stub = upstream.models if method == "GetModelStatus" else upstream.predictions
            return await upstream.call(getattr(stub, method), request)
        except GatewayError as err:
            await context.abort(_status_code(err), err.message)


def _columns(inputs: Any, max_instances: int) -> dict[str, list[Any]]:
    """gRPC input tensors as columns (strings decoded), for the same checks as REST."""
    columns: dict[str, list[Any]] = {}
    for name, tensor in inputs.items():
        try:
            values = values_from_tensor(tensor, name, max_instances)
        except ValueError as err:
            raise InvalidRequest(str(err)) from None
        if values and isinstance(values[0], bytes):
            try:
                values = [value.decode("utf-8") for value in values]
            except UnicodeDecodeError:
                raise InvalidRequest(f"input {name!r} holds bytes that are not UTF-8 text") from None
        columns[name] = values
    if not columns:
        raise InvalidRequest("the request has no inputs; send one 1-D tensor per feature")
    return columns


def _status_code(err: GatewayError) -> Any:
    import grpc

    return getattr(grpc.StatusCode, err.code.name)
