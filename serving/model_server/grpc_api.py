"""TF Serving's gRPC services: `PredictionService` and `ModelService` (tensorflow_serving/apis).

Each method follows TF Serving's implementation (prediction_service_impl.cc, model_service_impl.cc,
get_model_metadata_impl.cc, get_model_status_impl.cc): the same checks in the same order, the same
status codes and messages, responses filled the same way (output tensors in the typed `*_val`
fields, the metadata's SignatureDefMap packed in an `Any`). The server is grpcio's thread-pool
server: each call runs on a worker thread, and TensorFlow releases the GIL while it computes.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from typing import Any, Sequence

import grpc
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

from serving.model_server.manager import ModelManager, status_response
from serving.model_server.metrics import ServingMetrics
from serving.model_server.servable import Servable
from serving.model_server.signatures import CLASSIFY_METHOD, REGRESS_METHOD, check_input_names
from serving.model_server.tensors import array_to_tensor_proto, examples_from_input, tensor_proto_to_array
from serving.status import Code, ServingError, invalid

log = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}
# TF Serving sets both limits to INT_MAX: large batches are the client's call, not the server's.
_MAX_MESSAGE_BYTES = 2**31 - 1


def grpc_status(code: Code) -> grpc.StatusCode:
    return _GRPC_CODES[int(code)]


def _abort(context: grpc.ServicerContext, err: ServingError) -> Any:
    context.abort(grpc_status(err.code), err.message)


def _servable(manager: ModelManager, spec: model_pb2.ModelSpec) -> Servable:
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    label = spec.version_label if choice == "version_label" else None
    return manager.get_servable(spec.name, version, label)


def _model_spec(name: str, version: int, signature_name: str | None = None) -> model_pb2.ModelSpec:
    """MakeModelSpec (servables/tensorflow/util.cc): what the response says answered."""
    spec = model_pb2.ModelSpec(name=name)
    spec.version.value = version
    if signature_name is not None:
        spec.signature_name = signature_name
    return spec


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager, metrics: ServingMetrics | None = None) -> None:
        self._manager = manager
        self._metrics = metrics

    def _record(self, name: str, api: str, code: Code, start: int) -> None:
        if self._metrics is not None:
            self._metrics.record_request(name, api, "GRPC", code, (time.perf_counter_ns() - start) // 1000)

    def _guarded(self, api: str, name: str, context: grpc.ServicerContext, call: Any) -> Any:
        start = time.perf_counter_ns()
        code = Code.OK
        try:
            return call()
        except ServingError as err:
            code = err.code
            _abort(context, err)
        except Exception as err:  # noqa: BLE001 - a bug costs one call, never the server
            log.exception("gRPC %s failed", api)
            code = Code.INTERNAL
            _abort(context, ServingError(Code.INTERNAL, f"{type(err).__name__}: {err}"))
        finally:
            if api != "GetModelMetadata":
                self._record(name, api, code, start)

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
        def call() -> predict_pb2.PredictResponse:
            servable = _servable(self._manager, request.model_spec)
            signature = servable.predict_signature(request.model_spec.signature_name)
            check_input_names(signature, request.inputs.keys())
            inputs = {alias: tensor_proto_to_array(tensor, alias) for alias, tensor in request.inputs.items()}
            used, outputs = servable.predict(signature.name, inputs, list(request.output_filter))
            response = predict_pb2.PredictResponse(model_spec=_model_spec(request.model_spec.name, servable.version, used))
            for alias, array in outputs.items():
                response.outputs[alias].CopyFrom(array_to_tensor_proto(array))
            return response

        return self._guarded("Predict", request.model_spec.name, context, call)

    def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        def call() -> get_model_metadata_pb2.GetModelMetadataResponse:
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            if not request.metadata_field:
                raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
            for field in request.metadata_field:
                if field != SIGNATURE_DEF_FIELD:
                    raise invalid(f"Metadata field {field} is not supported")
            servable = _servable(self._manager, request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse(
                model_spec=_model_spec(servable.name, servable.version)
            )
            response.metadata[SIGNATURE_DEF_FIELD].Pack(servable.signature_def_map())
            return response

        return self._guarded("GetModelMetadata", request.model_spec.name, context, call)

    def Classify(
        self, request: classification_pb2.ClassificationRequest, context: grpc.ServicerContext
    ) -> classification_pb2.ClassificationResponse:
        def call() -> classification_pb2.ClassificationResponse:
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            servable = _servable(self._manager, request.model_spec)
            signature = servable.examples_signature(request.model_spec.signature_name, CLASSIFY_METHOD)
            used, classes = servable.classify(signature.name, examples_from_input(request.input))
            response = classification_pb2.ClassificationResponse(
                model_spec=_model_spec(request.model_spec.name, servable.version, used)
            )
            _fill_classifications(response.result, classes)
            return response

        return self._guarded("Classify", request.model_spec.name, context, call)

    def Regress(
        self, request: regression_pb2.RegressionRequest, context: grpc.ServicerContext
    ) -> regression_pb2.RegressionResponse:
        def call() -> regression_pb2.RegressionResponse:
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            servable = _servable(self._manager, request.model_spec)
            signature = servable.examples_signature(request.model_spec.signature_name, REGRESS_METHOD)
            used, values = servable.regress(signature.name, examples_from_input(request.input))
            response = regression_pb2.RegressionResponse(
                model_spec=_model_spec(request.model_spec.name, servable.version, used)
            )
            response.result.regressions.extend(regression_pb2.Regression(value=v) for v in values)
            return response

        return self._guarded("Regress", request.model_spec.name, context, call)

    def MultiInference(
        self, request: inference_pb2.MultiInferenceRequest, context: grpc.ServicerContext
    ) -> inference_pb2.MultiInferenceResponse:
        def call() -> inference_pb2.MultiInferenceResponse:
            first = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
            servable = _servable(self._manager, first)
            for task in request.tasks:
                if not task.model_spec.name:
                    raise invalid("Found ModelSpec with an empty model name.")
                if task.model_spec.name != first.name:
                    raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
            tasks = [(task.model_spec.signature_name, task.method_name) for task in request.tasks]
            # The tasks are checked before the input is read, as multi_inference.cc does.
            for signature_name, method in tasks:
                if method in (CLASSIFY_METHOD, REGRESS_METHOD):
                    servable.examples_signature(signature_name, method)
            results = servable.multi_inference(tasks, examples_from_input(request.input))
            response = inference_pb2.MultiInferenceResponse()
            for used, method, result in results:
                entry = response.results.add()
                entry.model_spec.CopyFrom(_model_spec(first.name, servable.version, used))
                if method == CLASSIFY_METHOD:
                    _fill_classifications(entry.classification_result, result)  # type: ignore[arg-type]
                else:
                    entry.regression_result.regressions.extend(
                        regression_pb2.Regression(value=v) for v in result  # type: ignore[union-attr]
                    )
            return response

        return self._guarded("MultiInference", request.tasks[0].model_spec.name if request.tasks else "", context, call)


def _fill_classifications(result: classification_pb2.ClassificationResult, classes: Any) -> None:
    for example in classes:
        entry = result.classifications.add()
        entry.classes.extend(classification_pb2.Class(label=label.decode("utf-8", "replace"), score=score) for label, score in example)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        try:
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            spec = request.model_spec
            # Like TF Serving, only an explicit version narrows the answer; a label does not.
            version = spec.version.value if spec.WhichOneof("version_choice") == "version" else None
            statuses = self._manager.model_status(spec.name, version)
        except ServingError as err:
            return _abort(context, err)
        return status_response(statuses)

    def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        response = model_management_pb2.ReloadConfigResponse()
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid(
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                    "Only ModelConfigList is currently supported"
                )
            self._manager.reload_config(request.config)
        except ServingError as err:
            log.error("ReloadConfig failed: %s", err.message)
            return _abort(context, err)
        response.status.error_code = 0
        return response


class GrpcServer:
    """grpcio's thread-pool server with both services; `start()` returns the bound port."""

    def __init__(
        self,
        manager: ModelManager,
        *,
        host: str,
        port: int | None,
        max_workers: int,
        metrics: ServingMetrics | None = None,
        socket_path: str | None = None,
        channel_arguments: Sequence[tuple[str, int | str]] = (),
    ) -> None:
        # None: no TCP port (TF Serving's --port=0 with --grpc_socket_path serves the socket only).
        self._address = None if port is None else (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        # --grpc_socket_path: TF Serving listens on "unix:<path>" as well as on the TCP port.
        self._socket_address = f"unix:{socket_path}" if socket_path else None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc")
        self._server = grpc.server(
            self._executor,
            options=[
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                # Without this two servers could share one port and split the traffic silently.
                ("grpc.so_reuseport", 0),
                # --grpc_channel_arguments last, so that they override the defaults above.
                *channel_arguments,
            ],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(manager, metrics), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager), self._server)
        self.port = 0

    def _bind(self, address: str) -> int:
        try:
            port = self._server.add_insecure_port(address)
        except RuntimeError as err:
            raise OSError(f"cannot bind the gRPC server to {address}: {err}") from None
        if port == 0:
            raise OSError(f"cannot bind the gRPC server to {address} (address in use?)")
        return port

    def start(self) -> int:
        port = self._bind(self._address) if self._address is not None else 0
        if self._socket_address is not None:
            # gRPC replaces a stale socket file at the path (TF Serving's tests start every server on
            # the same path) but refuses any other kind of file.
            self._bind(self._socket_address)
        self._server.start()
        self.port = port
        return port

    def stop(self, grace: float = 2.0) -> None:
        self._server.stop(grace).wait(grace + 1.0)
        self._executor.shutdown(wait=False, cancel_futures=True)
