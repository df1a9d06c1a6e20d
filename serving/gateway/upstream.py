"""The model server as the gateway calls it: its REST API (pooled keep-alive connections) or its
gRPC API, each behind a circuit breaker. Failures become typed errors (`serving.gateway.errors`):
the model server's own refusals are relayed (`ModelServerRefused`), an answer that is not a
prediction is `BadModelServerAnswer`, an unreachable or slow server UNAVAILABLE / DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import orjson

from serving.gateway.config import GatewaySettings
from serving.gateway.errors import BadModelServerAnswer, GatewayError, ModelServerRefused
from serving.gateway.http_pool import HttpPool, UpstreamClosed, UpstreamProtocolError, UpstreamUnreachable
from serving.gateway.inputs import JSON_NAN
from serving.gateway.upstream_batching import Columns, example_count
from serving.protocol import CLASS_OUTPUT, DEFAULT_SIGNATURE, PROBABILITY_OUTPUT
from serving.status import HTTP_STATUS, Code, code_of_http_status
from serving.tensor_protos import serving_apis, tensor_from_values, values_from_tensor
from transforms.features import SERVING_FEATURES, Kind

_OK = HTTP_STATUS[Code.OK]


class CircuitBreaker:
    """Fails fast while the model server is down; lets one probe through every `reset_s` to notice its return."""

    def __init__(self, threshold: int, reset_s: float) -> None:
        self.threshold = threshold
        self.reset_s = reset_s
        self.failures = 0
        self.open_until = 0.0
        self.probing = False

    def check(self, what: str) -> None:
        if self.failures < self.threshold:
            return
        now = time.monotonic()
        if now >= self.open_until and not self.probing:
            self.probing = True  # this request is the probe
            return
        raise GatewayError(Code.UNAVAILABLE, f"model server {what} is unavailable ({self.failures} consecutive failures); "
                                             f"retrying it in {max(0.0, self.open_until - now):.1f}s")

    def success(self) -> None:
        self.failures = 0
        self.probing = False

    def failure(self) -> None:
        self.failures += 1
        self.probing = False
        if self.failures >= self.threshold:
            self.open_until = time.monotonic() + self.reset_s


class RestUpstream:
    """The model server's REST API over a pool of keep-alive connections (serving.gateway.http_pool)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.base = settings.model_server_rest.rstrip("/")
        self.timeout_s = settings.upstream_timeout_s
        self.pool = HttpPool(self.base, max_idle=settings.upstream_pool_size,
                             connect_timeout_s=settings.upstream_connect_timeout_s)
        self.breaker = CircuitBreaker(settings.breaker_failure_threshold, settings.breaker_reset_s)

    async def close(self) -> None:
        await self.pool.close()

    async def predict(self, model: str, version: int | None, columns: Columns) -> tuple[list[Any], list[Any]]:
        # Columnar `inputs` in, `outputs` out: one list per feature costs both ends less than a
        # dict per example (the model server builds each tensor from a list either way).
        path = f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "") + ":predict"
        payload = orjson.dumps({"signature_name": DEFAULT_SIGNATURE, "inputs": columns})  # JSON_NAN -> NaN
        status, raw = await self._send("POST", path, payload)
        if status != _OK:
            raise ModelServerRefused(status, f"model server: {upstream_error_text(raw)}")
        count = example_count(columns)
        document = loads(raw)
        outputs = document.get("outputs") if isinstance(document, dict) else None
        if not isinstance(outputs, dict):
            raise BadModelServerAnswer(f"model server answered outputs {str(outputs)[:120]}, not an object with "
                                       f"{PROBABILITY_OUTPUT!r} and {CLASS_OUTPUT!r}")
        probabilities = outputs.get(PROBABILITY_OUTPUT)
        classes = outputs.get(CLASS_OUTPUT, [None] * count)
        for name, values in ((PROBABILITY_OUTPUT, probabilities), (CLASS_OUTPUT, classes)):
            if not isinstance(values, list) or len(values) != count:
                raise BadModelServerAnswer(f"model server answered {name} {str(values)[:120]} for {count} instances")
        return probabilities, classes

    async def get(self, path: str) -> tuple[int, bytes]:
        return await self._send("GET", path, None)

    async def _send(self, method: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        self.breaker.check(self.base)
        try:
            status, raw = await self.pool.request(method, path, payload, self.timeout_s)
        except UpstreamUnreachable as err:
            self.breaker.failure()
            raise GatewayError(Code.UNAVAILABLE, f"model server {self.base} is unreachable ({err})") from None
        except UpstreamClosed:
            self.breaker.failure()
            raise GatewayError(Code.UNAVAILABLE, f"model server {self.base} closed the connection") from None
        except asyncio.TimeoutError:
            self.breaker.failure()
            raise GatewayError(Code.DEADLINE_EXCEEDED, f"model server {self.base} did not answer within {self.timeout_s}s") from None
        except (UpstreamProtocolError, OSError) as err:
            self.breaker.failure()
            raise BadModelServerAnswer(f"model server {self.base}: {type(err).__name__}: {err}") from None
        self.breaker.success()
        return status, raw


class GrpcUpstream:
    """The model server's gRPC API over one channel (HTTP/2 multiplexes concurrent calls)."""

    def __init__(self, settings: GatewaySettings) -> None:
        import grpc

        self._grpc = grpc
        self.target = settings.model_server_grpc
        self.timeout_s = settings.upstream_timeout_s
        self.apis = serving_apis()
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        self.channel = grpc.aio.insecure_channel(self.target, options=options)
        self.predictions = self.apis.prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = self.apis.model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.breaker = CircuitBreaker(settings.breaker_failure_threshold, settings.breaker_reset_s)

    async def close(self) -> None:
        await self.channel.close()

    async def predict(self, model: str, version: int | None, columns: Columns) -> tuple[list[Any], list[Any]]:
        request = self.apis.predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = DEFAULT_SIGNATURE
        if version is not None:
            request.model_spec.version.value = version
        for feature in SERVING_FEATURES:
            name = feature.name
            values = columns[name]
            if feature.kind is Kind.FLOAT:
                values = [math.nan if value is JSON_NAN else value for value in values]
            request.inputs[name].CopyFrom(tensor_from_values(feature.kind, values))
        response = await self.call(self.predictions.Predict, request)
        count = example_count(columns)
        try:
            probabilities = values_from_tensor(response.outputs[PROBABILITY_OUTPUT], PROBABILITY_OUTPUT)
            classes = values_from_tensor(response.outputs[CLASS_OUTPUT], CLASS_OUTPUT) if CLASS_OUTPUT in response.outputs else [None] * count
        except (KeyError, ValueError) as err:
            raise BadModelServerAnswer(f"model server answered outputs {sorted(response.outputs)}: {err}") from None
        if len(probabilities) != count:
            raise BadModelServerAnswer(f"model server answered {len(probabilities)} probabilities for {count} instances")
        return probabilities, classes

    async def call(self, method: Any, request: Any) -> Any:
        self.breaker.check(self.target)
        try:
            response = await method(request, timeout=self.timeout_s)
        except self._grpc.aio.AioRpcError as err:
            code = err.code().name
            if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                self.breaker.failure()
            else:
                self.breaker.success()
            # Relayed as the code of the HTTP status TF Serving maps it to, as the gateway always
            # has (FAILED_PRECONDITION and OUT_OF_RANGE go out as INVALID_ARGUMENT, for instance).
            relayed = code_of_http_status(HTTP_STATUS[Code[code]])
            raise GatewayError(relayed, f"model server: {code}: {err.details()}") from None
        self.breaker.success()
        return response


def loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)  # NaN and Infinity tokens (TF Serving writes them); raises ValueError otherwise


def upstream_error_text(raw: bytes) -> str:
    try:
        document = loads(raw)
        if isinstance(document, dict) and "error" in document:
            return str(document["error"])
    except ValueError:
        pass
    return raw[:300].decode("utf-8", "replace")


# --- metrics ----------------------------------------------------------------------------------------
