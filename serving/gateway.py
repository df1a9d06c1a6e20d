"""The serving gateway: TF Serving's REST and gRPC predict API in front of a model server.

It routes each request by the model's policy (blue-green, canary, shadow; see
`serving/routing.py`), checks inputs before forwarding, adds a per-instance `decision` from the
model's degree of automation, logs every served example to Parquet (`serving/prediction_log.py`),
exposes Prometheus metrics, and has a token-protected admin API for rollouts.

Run it: `python -m serving.gateway --config gateway.toml [--rest-port N ...]`, or in-process:
`start_gateway(settings)` returns a handle with `.rest_port`, `.grpc_port` and `.stop()`.

REST (same paths as TF Serving):
- `POST /v1/models/{name}[/versions/N|/labels/L]:predict` with `instances` (rows: one object per
  example, every feature of `features.SERVING_COLUMNS`) or `inputs` (columns), optional
  `signature_name` (`serving_default` only). A value of `null` means missing (counted, then sent
  as the serving sentinel); NaN/-1/"" sentinels are accepted as missing too. Required features
  may not be missing. Answers `{"predictions": [{"probability", "class", "decision"}...],
  "automation": mode}` (columnar requests: `{"outputs": {"probability": [...], "class": [...],
  "decision": [...]}}`). Clients that ignore unknown fields see plain TF Serving answers. In
  `shadow` automation the model's output is withheld: each prediction is `{"decision": "none"}`.
  Headers: `X-Request-Key` (sticky canary assignment) and `X-Request-Id` (kept if given, else
  generated) in; `X-Request-Id`, `X-Model-Version`, `X-Model-Label` out.
  An explicit `/versions/N` or `/labels/L` bypasses the policy (logged with label `version:N` or `L`).
- `GET /v1/models/{name}[...]` and `.../metadata`: passed through to the model server.
- `POST /v1/feedback`: `{"request_id", "instance_index": 0, "ground_truth": 0|1}` and/or
  `"human_decision": "big_tipper"|"not_big_tipper"`, optional `"source"`; or a list of such
  objects. Feedback for a request id still in memory is checked (the instance must exist); older
  ids (ground truth often arrives days later, after restarts) are accepted and reported back as
  `unmatched`: the join with the request log happens in monitoring.
- `GET /metrics` (Prometheus), `GET /healthz`.
- `/admin/...` (needs `Authorization: Bearer <token>`): see `serving/rollout.py`.

gRPC: `tensorflow.serving.PredictionService/Predict` (routing key in metadata `x-request-key`,
request id in `x-request-id`; the answer adds a `decision` string output and trailing metadata
`x-request-id`, `x-model-label`, `x-automation`; `output_filter` picks among `probability`, `class`
and `decision`), and `GetModelMetadata` /
`ModelService.GetModelStatus` passed through to the model server's gRPC port.

Under load, requests for the same model version that arrive while `upstream_max_in_flight` calls
to it are already out wait and then go to the model server merged into one call
(`serving/upstream_batching.py`); a lone request never waits. Each is still routed, checked,
logged and answered on its own. Whatever format the client used, the gateway checks examples as
columns (one list per feature) and calls the model server's REST API in the columnar format
(`inputs` -> `outputs`): per example, that is the cheapest form for the check, the merge, both
ends' JSON and the log.

Every example served with status 200 is one row in the request log; a shadow copy that was sent
is one row with `is_shadow=true`. A request waits for room in a full log queue; if none comes in
`log_backpressure_timeout_s` it fails with 503 (so it was neither served nor logged).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import hmac
import itertools
import json
import logging
import math
import re
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Sequence

import orjson
import prometheus_client
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from core.errors import MlopsError
from serving import prediction_log, routing
from serving.client import (
    CLASS_OUTPUT,
    DECISION_OUTPUT,
    DEFAULT_SIGNATURE,
    MODEL_LABEL_HEADER,
    MODEL_VERSION_HEADER,
    PROBABILITY_OUTPUT,
    REQUEST_ID_HEADER,
    REQUEST_ID_METADATA,
    REQUEST_KEY_HEADER,
    REQUEST_KEY_METADATA,
    serving_apis,
    tensor_from_values,
    values_from_tensor,
)
from serving.gateway_config import GatewaySettings, add_settings_arguments, load_gateway_settings, settings_overrides
from serving.http_pool import HttpPool, UpstreamClosed, UpstreamProtocolError, UpstreamUnreachable
from serving.prediction_log import Feedback, LoggedRequest
from serving.routing import ModelRoute, RoutingError, Target, UnknownModel
from serving.upstream_batching import Columns, UpstreamBatcher, example_count
from transforms.features import SERVING_FEATURES, Kind

log = logging.getLogger(__name__)

_PREDICT_PATH = re.compile(r"(?i)^/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)$")
_MODEL_PATH = re.compile(r"(?i)^/v1/models/([^/:]+)(/versions/\d+|/labels/[^/:]+)?(/metadata)?$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_JSON = "application/json"
_FEATURE_NAMES = frozenset(feature.name for feature in SERVING_FEATURES)
_BODY_KEYS = frozenset({"signature_name", "instances", "inputs"})
_SENTINELS = {Kind.FLOAT: float("nan"), Kind.INT: -1, Kind.STRING: ""}
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
_GRPC_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
               409: "ABORTED", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
               501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_HTTP_FROM_GRPC = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400, "NOT_FOUND": 404,
                   "ALREADY_EXISTS": 409, "ABORTED": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
                   "DEADLINE_EXCEEDED": 504, "UNIMPLEMENTED": 501, "UNAVAILABLE": 503, "UNAUTHENTICATED": 401,
                   "CANCELLED": 499}


class GatewayError(Exception):
    """Ends a request with `status` and `{"error": message}`; raised only at the service edge."""

    def __init__(self, status: int, message: str, *, close_connection: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # The connection cannot carry another request (its body could not be read to the end).
        self.close_connection = close_connection


def _error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": message}), content_type=_JSON, headers=headers)


def _gateway_error_response(err: GatewayError, headers: dict[str, str] | None = None) -> web.Response:
    response = _error_response(err.status, err.message, headers)
    if err.close_connection:
        response.force_close()  # answers with Connection: close, so the client does not reuse it
    return response


# --- input checks ---------------------------------------------------------------------------------


@dataclass(slots=True)
class CheckedInstances:
    """Validated examples as columns (feature name -> one value per example).

    `forward` carries the serving sentinels for the model (a missing float is `JSON_NAN`, which
    orjson writes as the NaN token TF Serving expects); `logged` carries None for a missing value.
    A column with nothing to change is the same list in both, and the caller's own list.
    """

    forward: dict[str, list[Any]]
    logged: dict[str, list[Any]]
    count: int
    missing: dict[str, int]


# orjson writes a float NaN as null, which TF Serving rejects; a Fragment is written verbatim.
JSON_NAN = orjson.Fragment(b"NaN")
_FLOAT, _INT, _STRING = 0, 1, 2
# Plain ints for kinds on the hot path: hashing an Enum member runs Python code.
_CHECKS = tuple(
    (f.name, {Kind.FLOAT: _FLOAT, Kind.INT: _INT, Kind.STRING: _STRING}[f.kind], f.required,
     JSON_NAN if f.kind is Kind.FLOAT else _SENTINELS[f.kind])
    for f in SERVING_FEATURES
)
_INFINITIES = (math.inf, -math.inf)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1  # what a tensor holds; larger JSON integers are a client error


def check_instances(instances: Any, max_instances: int, *, marked_nan: bool = False) -> CheckedInstances:
    """Checks row-format instances against `features.SERVING_FEATURES`; GatewayError 400/413 names the problem.

    `marked_nan`: the body was parsed with NaN tokens as `_NAN_MARK` strings (`Gateway._checked_predict_body`).
    """
    if not isinstance(instances, list):
        raise GatewayError(400, f"'instances' must be a list of objects (one per example), got {type(instances).__name__}")
    if not instances:
        raise GatewayError(400, "'instances' is empty: send at least one example")
    if len(instances) > max_instances:
        raise GatewayError(413, f"too many instances: {len(instances)} in one request, the limit is {max_instances}")
    feature_count = len(_FEATURE_NAMES)
    for index, instance in enumerate(instances):
        if type(instance) is not dict:
            raise GatewayError(400, f"instance {index}: expected an object of feature values, got {type(instance).__name__}")
        if len(instance) != feature_count or not _FEATURE_NAMES.issuperset(instance):
            raise GatewayError(400, f"instance {index}: {_feature_name_problems(instance)}")
    if len(instances) == 1:
        return _check_one(_unmarked_row(instances[0]) if marked_nan else instances[0])
    columns = {name: [instance[name] for instance in instances] for name, *_ in _CHECKS}
    return _check_columns(_unmarked_columns(columns) if marked_nan else columns, len(instances))


def check_inputs(inputs: Any, max_instances: int, *, marked_nan: bool = False) -> CheckedInstances:
    """Checks columnar `inputs` ({feature: [values...]}, REST `inputs` or gRPC tensors) like `check_instances`."""
    if not isinstance(inputs, dict):
        raise GatewayError(400, f"'inputs' must be an object mapping each feature to a list of values, got {type(inputs).__name__}")
    lengths = {}
    for name, values in inputs.items():
        if type(values) is not list:
            raise GatewayError(400, f"inputs[{name!r}] must be a list (one value per example), got {type(values).__name__}")
        lengths[name] = len(values)
    if len(set(lengths.values())) > 1:
        raise GatewayError(400, f"all inputs must have the same number of values, got {lengths}")
    if len(inputs) != len(_FEATURE_NAMES) or not _FEATURE_NAMES.issuperset(inputs):
        raise GatewayError(400, f"inputs: {_feature_name_problems(inputs)}")
    count = next(iter(lengths.values()))
    if not count:
        raise GatewayError(400, "'inputs' holds no examples: send at least one value per feature")
    if count > max_instances:
        raise GatewayError(413, f"too many instances: {count} in one request, the limit is {max_instances}")
    if marked_nan:
        inputs = _unmarked_columns(inputs)
    if count == 1:
        return _check_one({name: values[0] for name, values in inputs.items()})
    return _check_columns(inputs, count)


# A NaN token of a predict body, as `Gateway._checked_predict_body` hands it to orjson, and as it comes back.
_NAN_MARK_JSON = b'"\\u0000NaN"'
_NAN_MARK = "\x00NaN"


def _unmarked_row(instance: dict[str, Any]) -> dict[str, Any]:
    return {name: math.nan if value == _NAN_MARK else value for name, value in instance.items()}


def _unmarked_columns(columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {name: [math.nan if value == _NAN_MARK else value for value in values] if _NAN_MARK in values else values
            for name, values in columns.items()}


def _feature_name_problems(given: dict[str, Any]) -> str:
    parts = []
    absent = sorted(_FEATURE_NAMES.difference(given))
    extra = sorted(set(given).difference(_FEATURE_NAMES))
    if absent:
        parts.append(f"missing features {absent} (send null for a missing value)")
    if extra:
        parts.append(f"unknown features {extra}")
    return "; ".join(parts)


def _check_columns(columns: dict[str, list[Any]], count: int) -> CheckedInstances:
    forward: dict[str, list[Any]] = {}
    logged: dict[str, list[Any]] = {}
    missing: dict[str, int] = {}
    for name, kind, required, sentinel in _CHECKS:
        checked = _check_common_column(kind, required, columns[name])
        if checked is None:
            checked = _check_values(name, kind, required, sentinel, columns[name])
        forward[name], logged[name], absent = checked
        if absent:
            missing[name] = absent
    return CheckedInstances(forward, logged, count, missing)


_NONE = type(None)
_FLOAT_KINDS, _INT_KINDS, _STRING_KINDS = frozenset({float, _NONE}), frozenset({int, _NONE}), frozenset({str, _NONE})


def _check_common_column(kind: int, required: bool, values: list[Any]) -> tuple[list[Any], list[Any], int] | None:
    """(forwarded, logged, missing) for a column of the usual shape, with C-level calls and list
    comprehensions; None for anything else (an int for a float, a wrong type, a bad value, a
    required feature missing), which `_check_values` then takes value by value and names.
    """
    kinds = set(map(type, values))
    if kind == _FLOAT:
        if not kinds <= _FLOAT_KINDS:
            return None
        if _NONE not in kinds and math.isfinite(sum(values)):  # NaN or an infinity makes the sum NaN or infinite
            return values, values, 0
        if math.inf in values or -math.inf in values:
            return None
        logged = [None if value is None or value != value else value for value in values]  # NaN is missing
        forward = [JSON_NAN if value is None else value for value in logged]
    elif kind == _INT:
        if not kinds <= _INT_KINDS:
            return None
        present = values if _NONE not in kinds else [value for value in values if value is not None]
        if present and not (_INT64_MIN <= min(present) and max(present) <= _INT64_MAX):
            return None
        if _NONE not in kinds and -1 not in values:
            return values, values, 0
        logged = [None if value is None or value == -1 else value for value in values]
        forward = values if _NONE not in kinds else [-1 if value is None else value for value in values]
    else:
        if not kinds <= _STRING_KINDS:
            return None
        forward = values if _NONE not in kinds else [value or "" for value in values]
        if not all(map(str.isascii, forward)):  # non-ASCII text is checked for lone surrogates one by one
            return None
        if "" not in forward:
            return values, values, 0
        logged = [value or None for value in values]
    missing = logged.count(None)
    if missing and required:
        return None
    return forward, logged, missing


def _check_values(name: str, kind: int, required: bool, sentinel: Any, values: list[Any]) -> tuple[list[Any], list[Any], int]:
    """One feature's values one by one: (forwarded values, logged values, how many are missing)."""
    forward: list[Any] = []
    logged: list[Any] = []
    missing = 0
    for index, value in enumerate(values):
        value = _checked_value(index, name, kind, value)
        if value is None:
            if required:
                raise _required(index, name)
            missing += 1
            forward.append(sentinel)
        else:
            forward.append(value)
        logged.append(value)
    return forward, logged, missing


def _check_one(instance: dict[str, Any]) -> CheckedInstances:
    """A single example (the usual serving request), feature by feature: no column machinery to pay for."""
    forward: dict[str, list[Any]] = {}
    logged: dict[str, list[Any]] = {}
    missing: dict[str, int] = {}
    for name, kind, required, sentinel in _CHECKS:
        value = _checked_value(0, name, kind, instance[name])
        if value is None:
            if required:
                raise _required(0, name)
            missing[name] = 1
            forward[name], logged[name] = [sentinel], [None]
        else:
            forward[name] = logged[name] = [value]
    return CheckedInstances(forward, logged, 1, missing)


def _checked_value(index: int, name: str, kind: int, value: Any) -> Any:
    """The value as it is forwarded (an int for a float becomes a float), None when it is missing;
    GatewayError 400 naming the example and the feature when it is invalid."""
    kind_of_value = type(value)
    if kind == _FLOAT:
        if kind_of_value is float:
            if value != value:  # NaN: the float sentinel for missing
                return None
            if value in _INFINITIES:
                raise GatewayError(400, f"instance {index}: feature {name!r} must be a finite number, got {value}")
        elif kind_of_value is int:
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise GatewayError(400, f"instance {index}: feature {name!r} is out of range, got {value!r:.80}")
            return float(value)
        elif value is not None:
            raise GatewayError(400, f"instance {index}: feature {name!r} must be a number or null, got {value!r:.80}")
    elif kind == _INT:
        if kind_of_value is float and value.is_integer():
            value, kind_of_value = int(value), int
        if kind_of_value is int:
            if value == -1:
                return None
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise GatewayError(400, f"instance {index}: feature {name!r} must fit in a 64-bit integer, got {value!r:.80}")
        elif value is not None:
            raise GatewayError(400, f"instance {index}: feature {name!r} must be an integer or null, got {value!r:.80}")
    elif kind_of_value is str:
        if not value:
            return None
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise GatewayError(400, f"instance {index}: feature {name!r} is not valid text (a lone "
                                        f"surrogate escape), got {value!r:.80}") from None
    elif value is not None:
        raise GatewayError(400, f"instance {index}: feature {name!r} must be a string or null, got {value!r:.80}")
    return value


def _required(index: int, name: str) -> GatewayError:
    return GatewayError(400, f"instance {index}: feature {name!r} is required and may not be missing (null, NaN or sentinel)")


def _parse_json(raw: bytes) -> Any:
    """A request body as JSON; GatewayError 400 naming what is wrong with it."""
    if b"NaN" not in raw and b"Infinity" not in raw:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(raw)  # accepts NaN/Infinity tokens (orjson does not), as TF Serving does
    except json.JSONDecodeError as err:
        raise GatewayError(400, f"malformed JSON in the request body: {err}") from None
    except UnicodeDecodeError as err:
        raise GatewayError(400, f"malformed JSON in the request body: not UTF-8 text at byte {err.start}") from None
    except ValueError:  # Python refuses to parse integers of more than 4,300 digits
        raise GatewayError(400, "malformed JSON in the request body: a number is too long (over 4,300 digits)") from None
    except RecursionError:
        raise GatewayError(400, "malformed JSON in the request body: nested too deeply") from None


# --- the model server ---------------------------------------------------------------------------


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
        raise GatewayError(503, f"model server {what} is unavailable ({self.failures} consecutive failures); "
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
    """The model server's REST API over a pool of keep-alive connections (serving.http_pool)."""

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
        if status != 200:
            raise GatewayError(status, f"model server: {_upstream_error_text(raw)}")
        count = example_count(columns)
        document = _loads(raw)
        outputs = document.get("outputs") if isinstance(document, dict) else None
        if not isinstance(outputs, dict):
            raise GatewayError(502, f"model server answered outputs {str(outputs)[:120]}, not an object with "
                                    f"{PROBABILITY_OUTPUT!r} and {CLASS_OUTPUT!r}")
        probabilities = outputs.get(PROBABILITY_OUTPUT)
        classes = outputs.get(CLASS_OUTPUT, [None] * count)
        for name, values in ((PROBABILITY_OUTPUT, probabilities), (CLASS_OUTPUT, classes)):
            if not isinstance(values, list) or len(values) != count:
                raise GatewayError(502, f"model server answered {name} {str(values)[:120]} for {count} instances")
        return probabilities, classes

    async def get(self, path: str) -> tuple[int, bytes]:
        return await self._send("GET", path, None)

    async def _send(self, method: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        self.breaker.check(self.base)
        try:
            status, raw = await self.pool.request(method, path, payload, self.timeout_s)
        except UpstreamUnreachable as err:
            self.breaker.failure()
            raise GatewayError(503, f"model server {self.base} is unreachable ({err})") from None
        except UpstreamClosed:
            self.breaker.failure()
            raise GatewayError(503, f"model server {self.base} closed the connection") from None
        except asyncio.TimeoutError:
            self.breaker.failure()
            raise GatewayError(504, f"model server {self.base} did not answer within {self.timeout_s}s") from None
        except (UpstreamProtocolError, OSError) as err:
            self.breaker.failure()
            raise GatewayError(502, f"model server {self.base}: {type(err).__name__}: {err}") from None
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
            raise GatewayError(502, f"model server answered outputs {sorted(response.outputs)}: {err}") from None
        if len(probabilities) != count:
            raise GatewayError(502, f"model server answered {len(probabilities)} probabilities for {count} instances")
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
            raise GatewayError(_HTTP_FROM_GRPC.get(code, 500), f"model server: {code}: {err.details()}") from None
        self.breaker.success()
        return response


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)  # NaN and Infinity tokens (TF Serving writes them); raises ValueError otherwise


def _upstream_error_text(raw: bytes) -> str:
    try:
        document = _loads(raw)
        if isinstance(document, dict) and "error" in document:
            return str(document["error"])
    except ValueError:
        pass
    return raw[:300].decode("utf-8", "replace")


# --- metrics ----------------------------------------------------------------------------------------


class ScoreHistogram:
    """A Prometheus histogram of scores per (model, version), filled a request at a time.

    prometheus_client's Histogram takes a lock per observation; a 32-example request made 64 of
    them. This keeps plain bucket counts (only the event loop thread writes them) and exports the
    same `_bucket`/`_count`/`_sum` series.
    """

    def __init__(self, name: str, documentation: str, bounds: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(bounds)
        self._series: dict[tuple[str, str], list] = {}  # labels -> [bucket counts..., +Inf count, sum]

    def observe_many(self, model: str, version: str, values: Sequence[float]) -> None:
        series = self._series.get((model, version))
        if series is None:
            series = self._series[(model, version)] = [0] * (len(self.bounds) + 1) + [0.0]
        bounds = self.bounds
        for value in values:
            series[bisect.bisect_left(bounds, value)] += 1
            series[-1] += value

    def collect(self) -> Any:
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        family = HistogramMetricFamily(self.name, self.documentation, labels=["model", "version"])
        for (model, version), series in sorted(self._series.items()):
            counts = series[:-1]
            cumulative, running = [], 0
            for bound, count in zip((*self.bounds, math.inf), counts):
                running += count
                cumulative.append((floatToGoString(bound), running))
            family.add_metric([model, version], cumulative, series[-1])
        yield family


class GatewayMetrics:
    """The Prometheus metrics the Grafana dashboard reads; one registry per gateway (tests run several)."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        r = self.registry
        self.latency = prometheus_client.Histogram(
            "mlops_gateway_request_latency_seconds", "Gateway-measured latency of served predict requests",
            ["model", "version", "label"], buckets=_LATENCY_BUCKETS, registry=r)
        self.requests = prometheus_client.Counter(
            "mlops_gateway_requests_total", "Predict requests by answer status code", ["model", "label", "code"], registry=r)
        self.null_outputs = prometheus_client.Counter(
            "mlops_gateway_null_outputs_total", "Examples for which the model returned a null or NaN probability",
            ["model", "version"], registry=r)
        self.missing_inputs = prometheus_client.Counter(
            "mlops_gateway_missing_inputs_total", "Examples with a missing (null or sentinel) value, per feature",
            ["model", "feature"], registry=r)
        self.score = ScoreHistogram(
            "mlops_gateway_prediction_score", "Predicted probabilities returned to clients", _SCORE_BUCKETS)
        r.register(self.score)
        self.referrals = prometheus_client.Counter(
            "mlops_gateway_referrals_total", "Examples referred to a human (partial automation)", ["model"], registry=r)
        self.in_flight = prometheus_client.Gauge(
            "mlops_gateway_in_flight_requests", "Predict requests being handled", registry=r)
        self.shadow_dropped = prometheus_client.Counter(
            "mlops_gateway_shadow_dropped_total", "Shadow copies dropped because the shadow queue was full", registry=r)
        self.log_queue_rows = prometheus_client.Gauge(
            "mlops_gateway_log_queue_rows", "Log rows accepted but not yet written", registry=r)
        self.upstream_call_requests = prometheus_client.Histogram(
            "mlops_gateway_upstream_call_requests", "Client requests carried by one model-server call (merged under load)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.upstream_waiting = prometheus_client.Gauge(
            "mlops_gateway_upstream_waiting_requests", "Requests queued behind busy model-server calls, to go out merged",
            registry=r)
        self.log_waits = prometheus_client.Counter(
            "mlops_gateway_log_backpressure_waits_total", "Requests that waited for room in a full log queue", registry=r)
        prometheus_client.ProcessCollector(registry=r)
        self._children: dict[tuple, Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, cached: the lookup is measurable on the hot path."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child


# --- the gateway ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Served:
    """The outcome of one predict call through the gateway."""

    route: ModelRoute
    target: Target
    probabilities: list[float | None]
    classes: list[int | None]
    decisions: list[str]


@dataclass(slots=True)
class ShadowJob:
    route: ModelRoute
    target: Target
    checked: CheckedInstances
    request_id: str
    arrival_us: int


class Gateway:
    """The running gateway's state; `start()`/`stop()` run on its event loop."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.metrics = GatewayMetrics()
        self.routes = routing.RoutingTable(
            state_file=settings.state_file, model_config_file=settings.model_config_file, initial=settings.models)
        self.stats = routing.TrafficStats(max_age_s=settings.stats_max_window_s)
        self.recent: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.rest_port = 0
        self.grpc_port = 0
        self._background: list[asyncio.Task] = []
        self._shadow_queue: asyncio.Queue[ShadowJob] | None = None
        self._in_flight = 0
        self._idle: asyncio.Event | None = None

    # --- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Opens the logs, the upstream connections and both listeners; undoes all of it if any step fails."""
        try:
            await self._start()
        except BaseException:
            if getattr(self, "_runner", None) is not None:
                await self._runner.cleanup()
            await self._close_resources()
            raise

    async def _start(self) -> None:
        s = self.settings
        log_options = {"capacity_rows": s.log_queue_rows, "flush_rows": s.log_flush_rows, "flush_seconds": s.log_flush_seconds}
        self.request_log = prediction_log.open_request_log(s.log_dir, **log_options)
        self.feedback_log = prediction_log.open_feedback_log(s.log_dir, **log_options)
        self.metrics.log_queue_rows.set_function(lambda: self.request_log.pending_rows)
        self.upstream: RestUpstream | GrpcUpstream = RestUpstream(s) if s.upstream_protocol == "rest" else GrpcUpstream(s)
        self.rest_upstream = self.upstream if isinstance(self.upstream, RestUpstream) else RestUpstream(s)
        self._grpc_passthrough: GrpcUpstream | None = self.upstream if isinstance(self.upstream, GrpcUpstream) else None
        self.batcher: UpstreamBatcher | None = None
        if s.upstream_max_in_flight:
            self.batcher = UpstreamBatcher(
                self.upstream.predict, max_in_flight=s.upstream_max_in_flight, max_batch_rows=s.upstream_batch_max_rows,
                is_request_error=lambda err: isinstance(err, GatewayError) and err.status == 400,
                observe=self.metrics.upstream_call_requests.observe)
            self.metrics.upstream_waiting.set_function(lambda: self.batcher.waiting if self.batcher is not None else 0)
        self._idle = asyncio.Event()
        self._idle.set()
        self._shadow_queue = asyncio.Queue(maxsize=s.shadow_queue_size)
        for _ in range(s.shadow_workers):
            self._background.append(asyncio.create_task(self._shadow_worker()))
        self._background.append(asyncio.create_task(self._poll_model_config()))

        app = web.Application(client_max_size=s.max_body_bytes)
        app.router.add_route("*", "/v1/models/{tail:.*}", self.handle_model_path)
        app.router.add_post("/v1/feedback", self.handle_feedback)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_get("/healthz", self.handle_health)
        app.router.add_route("*", "/admin/{tail:.*}", self.handle_admin)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host, s.rest_port, shutdown_timeout=5.0, backlog=1024)
        await site.start()
        self.rest_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._grpc_server = self._build_grpc_server()
        self.grpc_port = self._grpc_server.add_insecure_port(f"{s.host}:{s.grpc_port}")
        await self._grpc_server.start()
        log.info("gateway listening: REST %s:%d, gRPC %s:%d -> model server %s (%s)", s.host, self.rest_port, s.host,
                 self.grpc_port, s.model_server_rest if s.upstream_protocol == "rest" else s.model_server_grpc, s.upstream_protocol)

    async def stop(self) -> None:
        """Stops accepting, lets in-flight requests finish, sends queued shadow copies, then writes every log row."""
        await self._grpc_server.stop(grace=5.0)
        await self._runner.cleanup()  # closes the listener, waits for running handlers
        if self._idle is not None:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=10.0)
            except asyncio.TimeoutError:
                log.warning("%d requests still running at shutdown", self._in_flight)
        if self._shadow_queue is not None:
            try:
                await asyncio.wait_for(self._shadow_queue.join(), timeout=5.0)
            except asyncio.TimeoutError:
                log.warning("%d shadow copies not sent at shutdown", self._shadow_queue.qsize())
        await self._close_resources()

    async def _close_resources(self) -> None:
        """Background tasks, upstream connections, then the logs (last: every row is written)."""
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        batcher = getattr(self, "batcher", None)
        if batcher is not None:
            await batcher.close()  # calls already sent finish before their connections close
        closed: set[int] = set()
        for name in ("upstream", "rest_upstream", "_grpc_passthrough"):
            upstream = getattr(self, name, None)
            if upstream is not None and id(upstream) not in closed:
                closed.add(id(upstream))
                await upstream.close()
        loop = asyncio.get_running_loop()
        for name in ("request_log", "feedback_log"):
            writer = getattr(self, name, None)
            if writer is not None:
                await loop.run_in_executor(None, writer.close)

    async def _poll_model_config(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.config_poll_seconds)
            try:
                await loop.run_in_executor(None, self.routes.refresh_from_model_config)
            except Exception:  # noqa: BLE001 - a bad file must not stop polling; it is logged
                log.exception("re-reading %s failed", self.settings.model_config_file)

    # --- the predict path (shared by REST and gRPC) -------------------------------------------
    def resolve(self, model: str, version: int | None, label: str | None, request_key: str | None) -> tuple[ModelRoute, Target]:
        route = self.routes.route(model)
        if route is None:
            raise GatewayError(404, f"model {model!r} is not served by this gateway (models: {self.routes.models()})")
        if version is not None:
            if route.served_versions and version not in route.served_versions:
                raise GatewayError(404, f"model {model!r} has no version {version} (served versions: {list(route.served_versions)})")
            return route, Target(f"version:{version}", version)
        if label is not None:
            label_version = {routing.STABLE: route.stable_version, routing.CANARY: route.canary_version}.get(label, route.labels.get(label))
            if label_version is None:
                known = sorted({*route.labels, *(["stable"] if route.stable_version is not None else [])})
                raise GatewayError(404, f"model {model!r} has no label {label!r} (labels: {known})")
            return route, Target(label, label_version)
        return route, routing.choose_target(route, request_key)

    async def predict(self, route: ModelRoute, target: Target, checked: CheckedInstances) -> Served:
        call = self.batcher.predict if self.batcher is not None else self.upstream.predict
        probabilities, classes = await call(route.model_name, target.version, checked.forward)
        automation, band = route.automation, route.band
        clean_probabilities: list[float | None] = []
        clean_classes: list[int | None] = []
        decisions: list[str] = []
        for probability, predicted_class in zip(probabilities, classes):
            if type(probability) is not float or probability != probability or probability in _INFINITIES:
                probability = prediction_log.finite_or_none(probability)  # ints, None, NaN, infinities
            if type(predicted_class) is not int:
                predicted_class = int(predicted_class) if isinstance(predicted_class, (int, float)) and not isinstance(predicted_class, bool) else None
            clean_probabilities.append(probability)
            clean_classes.append(predicted_class)
            decisions.append(routing.decide(automation, band, probability, predicted_class))
        return Served(route, target, clean_probabilities, clean_classes, decisions)

    async def serve(
        self, model: str, version: int | None, label: str | None, checked: CheckedInstances,
        request_key: str | None, request_id: str, arrival_us: int, started: float,
    ) -> Served:
        """Routes, calls the model server, logs; GatewayError on failure. Metrics for every outcome."""
        metrics = self.metrics
        route_label = "none"
        metric_model = model if self.routes.route(model) is not None else "unknown"
        try:
            route, target = self.resolve(model, version, label, request_key)
            route_label = target.label
            for feature, count in checked.missing.items():
                metrics.child(metrics.missing_inputs, model, feature).inc(count)
            try:
                served = await self.predict(route, target, checked)
            except GatewayError as err:
                self.stats.record(model, target.label, target.version, err.status, (time.perf_counter() - started) * 1000, 0.0, 0, 0)
                raise
            latency_ms = (time.perf_counter() - started) * 1000.0
            entry = LoggedRequest(
                request_id, arrival_us, model, target.version, target.label, route.policy, route.automation,
                checked.logged, served.probabilities, served.classes, served.decisions, latency_ms, 200, False,
            )
            await self._log(entry)
            self._after_success(served, latency_ms)
            shadow = routing.shadow_target(route) if version is None and label is None else None
            if shadow is not None:
                self._enqueue_shadow(ShadowJob(route, shadow, checked, request_id, arrival_us))
            self._remember(request_id, checked.count)
            metrics.child(metrics.requests, metric_model, route_label, "200").inc()
            return served
        except GatewayError as err:
            metrics.child(metrics.requests, metric_model, route_label, str(err.status)).inc()
            raise

    def _after_success(self, served: Served, latency_ms: float) -> None:
        metrics = self.metrics
        model, version = served.route.model_name, str(served.target.version)
        metrics.child(metrics.latency, model, version, served.target.label).observe(latency_ms / 1000.0)
        scores = [p for p in served.probabilities if p is not None]
        nulls = len(served.probabilities) - len(scores)
        metrics.score.observe_many(model, version, scores)
        total, scored, positives = sum(scores), len(scores), served.classes.count(1)
        square_total = sum(score * score for score in scores)
        if nulls:
            metrics.child(metrics.null_outputs, model, version).inc(nulls)
        referrals = served.decisions.count(routing.REFER_TO_HUMAN)
        if referrals:
            metrics.child(metrics.referrals, model).inc(referrals)
        self.stats.record(model, served.target.label, served.target.version, 200, latency_ms, total, scored, positives,
                          square_total)

    async def _log(self, entry: Any, writer: prediction_log.ParquetLogWriter | None = None) -> None:
        """Queues a log entry, waiting (not blocking the loop) while the queue is full: back-pressure, no drops."""
        writer = writer or self.request_log
        if writer.try_put(entry):
            return
        self.metrics.log_waits.inc()
        deadline = time.monotonic() + self.settings.log_backpressure_timeout_s
        while not writer.try_put(entry):
            if time.monotonic() > deadline:
                raise GatewayError(503, f"the prediction log is not keeping up ({writer.pending_rows} rows waiting); request not served")
            await asyncio.sleep(0.002)

    def _remember(self, request_id: str, instances: int) -> None:
        recent = self.recent
        recent[request_id] = instances
        if len(recent) > self.settings.recent_requests:
            recent.popitem(last=False)

    def _enqueue_shadow(self, job: ShadowJob) -> None:
        assert self._shadow_queue is not None
        try:
            self._shadow_queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.shadow_dropped.inc()

    async def _shadow_worker(self) -> None:
        assert self._shadow_queue is not None
        while True:
            job = await self._shadow_queue.get()
            try:
                await self._send_shadow(job)
            except Exception:  # noqa: BLE001 - a failed shadow copy must never affect serving
                log.exception("shadow copy of request %s failed", job.request_id)
            finally:
                self._shadow_queue.task_done()

    async def _send_shadow(self, job: ShadowJob) -> None:
        started = time.perf_counter()
        count = job.checked.count
        try:
            served = await self.predict(job.route, job.target, job.checked)
            probabilities, classes, decisions, status = served.probabilities, served.classes, served.decisions, 200
        except GatewayError as err:
            probabilities, classes, decisions, status = [None] * count, [None] * count, [routing.NO_DECISION] * count, err.status
        latency_ms = (time.perf_counter() - started) * 1000.0
        await self._log(LoggedRequest(
            job.request_id, job.arrival_us, job.route.model_name, job.target.version, routing.SHADOW, job.route.policy,
            job.route.automation, job.checked.logged, probabilities, classes, decisions, latency_ms, status, True,
        ))
        scored = [p for p in probabilities if p is not None]
        positives = sum(1 for c in classes if c == 1)
        self.stats.record(job.route.model_name, routing.SHADOW, job.target.version, status, latency_ms, sum(scored), len(scored), positives)

    def _enter(self) -> None:
        self._in_flight += 1
        self.metrics.in_flight.inc()
        if self._idle is not None:
            self._idle.clear()

    def _leave(self) -> None:
        self._in_flight -= 1
        self.metrics.in_flight.dec()
        if self._in_flight == 0 and self._idle is not None:
            self._idle.set()

    # --- REST ---------------------------------------------------------------------------------
    async def handle_model_path(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            return await self.handle_predict(request)
        if request.method == "GET":
            return await self.handle_model_get(request)
        return _error_response(405, f"{request.method} is not allowed on {request.path}")

    async def handle_predict(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        arrival_us = time.time_ns() // 1000
        request_id = _request_id(request.headers.get(REQUEST_ID_HEADER))
        headers = {REQUEST_ID_HEADER: request_id}
        self._enter()
        try:
            match = _PREDICT_PATH.match(request.path)
            if match is None:
                raise GatewayError(404, f"no such endpoint {request.path!r}; predict is POST /v1/models/<name>[/versions/<n>|/labels/<l>]:predict")
            model, version_text, label, verb = match.groups()
            if verb.lower() != "predict":
                self.metrics.child(self.metrics.requests, "unknown", "none", "501").inc()
                raise GatewayError(501, f":{verb} is not served by the gateway; use :predict")
            try:
                checked, columnar = self._checked_predict_body(await self._read_body(request))
            except GatewayError as err:
                known = self.routes.route(model) is not None
                self.metrics.child(self.metrics.requests, model if known else "unknown", "none", str(err.status)).inc()
                raise
            served = await self.serve(
                model, int(version_text) if version_text is not None else None, label, checked,
                request.headers.get(REQUEST_KEY_HEADER), request_id, arrival_us, started,
            )
            headers[MODEL_VERSION_HEADER] = str(served.target.version) if served.target.version is not None else ""
            headers[MODEL_LABEL_HEADER] = served.target.label
            return web.Response(body=orjson.dumps(_rest_answer(served, columnar)), content_type=_JSON, headers=headers)
        except GatewayError as err:
            return _gateway_error_response(err, headers)
        except Exception:  # noqa: BLE001 - a bug must cost one request, not the process; it is logged
            log.exception("request %s failed", request_id)
            self.metrics.child(self.metrics.requests, "unknown", "none", "500").inc()
            return _error_response(500, f"internal gateway error (request id {request_id}); see the gateway log", headers)
        finally:
            self._leave()

    async def _read_json(self, request: web.Request) -> Any:
        return _parse_json(await self._read_body(request))

    def _checked_predict_body(self, raw: bytes) -> tuple[CheckedInstances, bool]:
        """The checked examples of a predict body, and whether it was columnar.

        TF Serving clients send a missing float as the NaN token, which orjson refuses; the standard
        library's parser takes it, at 2-3x orjson's cost per value. So each NaN token goes to orjson
        as the string `_NAN_MARK`, which the checks turn back into NaN. A NaN inside a string cannot
        be mistaken for a token: the inserted quotes break that string apart, orjson refuses the
        body, and the exact parser reads it. No client string can equal the mark: it holds a NUL,
        which JSON can only carry as the escape the guard looks for. A body the checks refuse is
        read again by the exact parser, so the error names values as the client wrote them.
        """
        if b"NaN" in raw and b"Infinity" not in raw and b"\\u0000" not in raw:
            try:
                body = orjson.loads(raw.replace(b"NaN", _NAN_MARK_JSON))
            except orjson.JSONDecodeError:
                pass
            else:
                try:
                    return self._checked_body(body, marked_nan=True)
                except GatewayError:
                    pass
        return self._checked_body(_parse_json(raw))

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise GatewayError(413, f"request body is {request.content_length} bytes; the limit is {limit} bytes")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise GatewayError(413, f"request body is larger than the limit of {limit} bytes") from None
        except RequestPayloadError as err:  # e.g. Content-Encoding: gzip on a body that is not gzip
            raise GatewayError(400, f"the request body could not be read: {str(err).splitlines()[-1].strip()}",
                               close_connection=True) from None
        if not raw:
            raise GatewayError(400, "empty request body: expected a JSON object with 'instances' or 'inputs'")
        return raw

    def _checked_body(self, body: Any, marked_nan: bool = False) -> tuple[CheckedInstances, bool]:
        if not isinstance(body, dict):
            raise GatewayError(400, f"the request body must be a JSON object with 'instances' or 'inputs', got {type(body).__name__}")
        unknown = set(body) - _BODY_KEYS
        if unknown:
            raise GatewayError(400, f"unknown keys {sorted(unknown)} in the request body; expected 'instances' or 'inputs' and optional 'signature_name'")
        signature = body.get("signature_name", DEFAULT_SIGNATURE)
        if signature != DEFAULT_SIGNATURE:
            raise GatewayError(400, f"signature_name {signature!r} is not served by the gateway; use {DEFAULT_SIGNATURE!r}")
        if ("instances" in body) == ("inputs" in body):
            raise GatewayError(400, "the request body needs exactly one of 'instances' (rows) or 'inputs' (columns)")
        if "instances" in body:
            return check_instances(body["instances"], self.settings.max_instances, marked_nan=marked_nan), False
        return check_inputs(body["inputs"], self.settings.max_instances, marked_nan=marked_nan), True

    async def handle_model_get(self, request: web.Request) -> web.Response:
        match = _MODEL_PATH.match(request.path)
        if match is None:
            return _error_response(404, f"no such endpoint {request.path!r}")
        model = match.group(1)
        if self.routes.route(model) is None:
            return _error_response(404, f"model {model!r} is not served by this gateway (models: {self.routes.models()})")
        try:
            status, raw = await self.rest_upstream.get(request.path)
        except GatewayError as err:
            return _gateway_error_response(err)
        return web.Response(status=status, body=raw, content_type=_JSON)

    async def handle_feedback(self, request: web.Request) -> web.Response:
        try:
            body = await self._read_json(request)
            items = body if isinstance(body, list) else [body]
            if not items:
                raise GatewayError(400, "no feedback in the request")
            now_us = time.time_ns() // 1000
            entries, unmatched = [], []
            for position, item in enumerate(items):
                entry = self._feedback_entry(item, position, now_us)
                if entry.request_id not in self.recent:
                    unmatched.append(position)
                entries.append(entry)
            for entry in entries:
                await self._log(entry, self.feedback_log)
        except GatewayError as err:
            return _gateway_error_response(err)
        return web.Response(body=orjson.dumps({"accepted": len(entries), "unmatched": unmatched}), content_type=_JSON)

    def _feedback_entry(self, item: Any, position: int, now_us: int) -> Feedback:
        where = f"feedback {position}"
        if not isinstance(item, dict):
            raise GatewayError(400, f"{where}: expected an object, got {type(item).__name__}")
        unknown = set(item) - {"request_id", "instance_index", "ground_truth", "human_decision", "source"}
        if unknown:
            raise GatewayError(400, f"{where}: unknown keys {sorted(unknown)}")
        request_id = item.get("request_id")
        if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
            raise GatewayError(400, f"{where}: request_id must be the X-Request-Id of a prediction, got {request_id!r:.80}")
        index = item.get("instance_index", 0)
        if type(index) is not int or index < 0:
            raise GatewayError(400, f"{where}: instance_index must be a non-negative integer, got {index!r:.40}")
        known_count = self.recent.get(request_id)
        if known_count is not None and index >= known_count:
            raise GatewayError(400, f"{where}: request {request_id} had {known_count} instances; instance_index {index} does not exist")
        truth = item.get("ground_truth")
        if truth is not None and (type(truth) is not int or truth not in (0, 1)):
            raise GatewayError(400, f"{where}: ground_truth must be 0 or 1, got {truth!r:.40}")
        decision = item.get("human_decision")
        if decision is not None and decision not in prediction_log.HUMAN_DECISIONS:
            raise GatewayError(400, f"{where}: human_decision must be one of {list(prediction_log.HUMAN_DECISIONS)}, got {decision!r:.40}")
        if truth is None and decision is None:
            raise GatewayError(400, f"{where}: give ground_truth (0|1) and/or human_decision")
        source = item.get("source", "api")
        if not isinstance(source, str) or not 0 < len(source) <= 64:
            raise GatewayError(400, f"{where}: source must be a short string, got {source!r:.40}")
        return Feedback(request_id, index, now_us, truth, decision, source)

    async def handle_metrics(self, request: web.Request) -> web.Response:
        payload = prometheus_client.generate_latest(self.metrics.registry)
        return web.Response(body=payload, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    async def handle_health(self, request: web.Request) -> web.Response:
        breaker = self.upstream.breaker
        body = {"status": "ok", "model_server": "down" if breaker.failures >= breaker.threshold else "up",
                "models": self.routes.models(), "log_queue_rows": self.request_log.pending_rows}
        return web.Response(body=orjson.dumps(body), content_type=_JSON)

    # --- admin --------------------------------------------------------------------------------
    def _authorize(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise GatewayError(401, "the admin API needs 'Authorization: Bearer <token>'")
        if not self.settings.admin_enabled:
            raise GatewayError(403, "the admin API is disabled: no admin token is configured (MLOPS_GATEWAY_ADMIN_TOKEN)")
        if not hmac.compare_digest(token.encode(), self.settings.admin_token.encode()):
            raise GatewayError(403, "wrong admin token")

    async def handle_admin(self, request: web.Request) -> web.Response:
        try:
            self._authorize(request)
            parts = [part for part in request.path.split("/") if part][1:]  # after "admin"
            method = request.method
            if parts == ["models"] and method == "GET":
                return _json({name: self.routes.require(name).to_json() for name in self.routes.models()})
            if parts == ["flush"] and method == "POST":
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, self.request_log.flush)
                await loop.run_in_executor(None, self.feedback_log.flush)
                return _json({"flushed": True, "rows_written": self.request_log.rows_written})
            if len(parts) != 3 or parts[0] != "models":
                raise GatewayError(404, f"no admin endpoint {request.path!r}")
            model, action = parts[1], parts[2]
            body = await self._read_json(request) if method in ("PUT", "POST") and request.can_read_body else {}
            if not isinstance(body, dict):
                raise GatewayError(400, "the admin request body must be a JSON object")
            return _json(await self._admin_action(model, action, method, body, request))
        except GatewayError as err:
            headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
            return _gateway_error_response(err, headers)
        except UnknownModel as err:
            return _error_response(404, str(err))
        except (RoutingError, MlopsError) as err:
            return _error_response(400, str(err))
        except OSError as err:
            log.exception("admin change failed")
            return _error_response(500, f"cannot write the routing state: {err}")

    async def _admin_action(self, model: str, action: str, method: str, body: dict[str, Any], request: web.Request) -> Any:
        table = self.routes
        loop = asyncio.get_running_loop()

        async def run(fn: Any, *args: Any) -> Any:
            # File writes and the models.config lock: off the event loop.
            return await loop.run_in_executor(None, fn, *args)

        if action == "policy" and method == "GET":
            return table.require(model).to_json()
        if action == "stats" and method == "GET":
            table.require(model)
            since = request.query.get("since_seconds", "300")
            try:
                seconds = float(since)
            except ValueError:
                raise GatewayError(400, f"since_seconds must be a number, got {since!r}") from None
            return self.stats.summary(model, seconds)
        if action == "policy" and method == "PUT":
            return (await run(table.set_policy, model, _field(body, "policy", str))).to_json()
        if action == "canary" and method == "PUT":
            version = _field(body, "version", int)
            await self._require_loaded(table.require(model), version, "set_canary")
            return (await run(table.set_canary, model, version, _field(body, "share", float))).to_json()
        if action == "share" and method == "PUT":
            return (await run(table.set_share, model, _field(body, "share", float))).to_json()
        if action == "promote" and method == "POST":
            version = _field(body, "version", int, optional=True)
            route = table.require(model)
            target = route.canary_version if version is None else version
            if target is not None:
                await self._require_loaded(route, target, "promote")
            return (await run(table.promote, model, version)).to_json()
        if action == "rollback" and method == "POST":
            route, rolled_back_from = await run(table.rollback, model)
            return {**route.to_json(), "rolled_back_from": rolled_back_from}
        if action == "shadow" and method == "PUT":
            version = _field(body, "version", int, optional=True)
            if version is not None:
                await self._require_loaded(table.require(model), version, "set_shadow")
            return (await run(table.set_shadow, model, version)).to_json()
        if action == "automation" and method == "PUT":
            band = body.get("band")
            if band is not None and (not isinstance(band, list) or len(band) != 2):
                raise GatewayError(400, f"band must be [low, high], got {band!r:.60}")
            return (await run(table.set_automation, model, _field(body, "mode", str), tuple(band) if band else None)).to_json()
        raise GatewayError(404 if action not in _ADMIN_ACTIONS else 405, f"no admin endpoint {method} {request.path!r}")

    async def _require_loaded(self, route: ModelRoute, version: int, what: str) -> None:
        """Refuses (503, retry later) to route traffic to a version the model server has not loaded.

        A pushed version appears in models.config before the model server has loaded it; traffic
        sent to it meanwhile would be answered 404. TF Serving refuses labels on such versions too.
        Only versions the routing table knows are asked about; the table reports unknown ones.
        """
        if version < 0 or (route.served_versions and version not in route.served_versions):
            return
        path = f"/v1/models/{route.model_name}/versions/{version}"
        try:
            status, raw = await self.rest_upstream.get(path)
        except GatewayError as err:
            raise GatewayError(503, f"{what}: cannot ask the model server whether {route.model_name} version {version} "
                                    f"is loaded: {err.message}") from None
        try:
            document = _loads(raw) if status == 200 else None
        except ValueError:
            document = None
        entries = document.get("model_version_status") if isinstance(document, dict) else None
        states = [str(entry.get("state")) for entry in entries or [] if isinstance(entry, dict)]
        if "AVAILABLE" not in states:
            found = states[0] if states else f"HTTP {status}: {_upstream_error_text(raw)}"
            raise GatewayError(503, f"{what}: {route.model_name} version {version} is not AVAILABLE on the model server yet "
                                    f"({found}); retry once it has loaded")

    # --- gRPC -----------------------------------------------------------------------------------
    def _build_grpc_server(self) -> Any:
        import grpc

        apis = serving_apis()
        gateway = self

        class PredictionService(apis.prediction_service_pb2_grpc.PredictionServiceServicer):
            async def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
                return await gateway.grpc_predict(request, context)

            async def GetModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
                return await gateway.grpc_passthrough("GetModelMetadata", request, context)

        class ModelService(apis.model_service_pb2_grpc.ModelServiceServicer):
            async def GetModelStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
                return await gateway.grpc_passthrough("GetModelStatus", request, context)

        limit = self.settings.max_body_bytes
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", 64 << 20)])
        apis.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(), server)
        apis.model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)
        return server

    async def grpc_predict(self, request: Any, context: Any) -> Any:
        import grpc

        started = time.perf_counter()
        arrival_us = time.time_ns() // 1000
        metadata = {key: value for key, value in (context.invocation_metadata() or ())}
        request_id = _request_id(metadata.get(REQUEST_ID_METADATA))
        trailing = [(REQUEST_ID_METADATA, request_id)]
        self._enter()
        try:
            spec = request.model_spec
            choice = spec.WhichOneof("version_choice")
            version = spec.version.value if choice == "version" else None
            label = spec.version_label if choice == "version_label" else None
            try:
                if spec.signature_name not in ("", DEFAULT_SIGNATURE):
                    raise GatewayError(400, f"signature_name {spec.signature_name!r} is not served by the gateway; use {DEFAULT_SIGNATURE!r}")
                unknown_outputs = set(request.output_filter) - _GRPC_OUTPUTS
                if unknown_outputs:
                    raise GatewayError(400, f"output_filter names {sorted(unknown_outputs)}; the gateway's outputs are {sorted(_GRPC_OUTPUTS)}")
                checked = check_inputs(_grpc_columns(request.inputs, self.settings.max_instances), self.settings.max_instances)
            except GatewayError as err:
                known = self.routes.route(spec.name) is not None
                self.metrics.child(self.metrics.requests, spec.name if known else "unknown", "none", str(err.status)).inc()
                raise
            served = await self.serve(spec.name, version, label, checked, metadata.get(REQUEST_KEY_METADATA), request_id, arrival_us, started)
            trailing += [("x-model-label", served.target.label), ("x-automation", served.route.automation)]
            context.set_trailing_metadata(tuple(trailing))
            return self._grpc_answer(served, spec, set(request.output_filter))
        except GatewayError as err:
            context.set_trailing_metadata(tuple(trailing))
            await context.abort(getattr(grpc.StatusCode, _GRPC_CODES.get(err.status, "INTERNAL")), err.message)
        finally:
            self._leave()

    def _grpc_answer(self, served: Served, spec: Any, wanted: set[str]) -> Any:
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

    async def grpc_passthrough(self, method: str, request: Any, context: Any) -> Any:
        import grpc

        try:
            name = request.model_spec.name
            if self.routes.route(name) is None:
                raise GatewayError(404, f"model {name!r} is not served by this gateway (models: {self.routes.models()})")
            if self._grpc_passthrough is None:
                self._grpc_passthrough = GrpcUpstream(self.settings)
            upstream = self._grpc_passthrough
            stub = upstream.models if method == "GetModelStatus" else upstream.predictions
            return await upstream.call(getattr(stub, method), request)
        except GatewayError as err:
            await context.abort(getattr(grpc.StatusCode, _GRPC_CODES.get(err.status, "INTERNAL")), err.message)


_GRPC_OUTPUTS = frozenset({PROBABILITY_OUTPUT, CLASS_OUTPUT, DECISION_OUTPUT})
_ADMIN_ACTIONS = frozenset({"policy", "stats", "canary", "share", "promote", "rollback", "shadow", "automation"})


def _grpc_columns(inputs: Any, max_instances: int) -> dict[str, list[Any]]:
    """gRPC input tensors as columns (strings decoded), for the same checks as REST."""
    columns: dict[str, list[Any]] = {}
    for name, tensor in inputs.items():
        try:
            values = values_from_tensor(tensor, name, max_instances)
        except ValueError as err:
            raise GatewayError(400, str(err)) from None
        if values and isinstance(values[0], bytes):
            try:
                values = [value.decode("utf-8") for value in values]
            except UnicodeDecodeError:
                raise GatewayError(400, f"input {name!r} holds bytes that are not UTF-8 text") from None
        columns[name] = values
    if not columns:
        raise GatewayError(400, "the request has no inputs; send one 1-D tensor per feature")
    return columns


def _rest_answer(served: Served, columnar: bool) -> dict[str, Any]:
    automation = served.route.automation
    if columnar:
        outputs: dict[str, Any] = {DECISION_OUTPUT: served.decisions}
        if automation != "shadow":
            outputs[PROBABILITY_OUTPUT] = served.probabilities
            outputs[CLASS_OUTPUT] = served.classes
        return {"outputs": outputs, "automation": automation}
    if automation == "shadow":
        predictions = [{DECISION_OUTPUT: decision} for decision in served.decisions]
    else:
        predictions = [
            {PROBABILITY_OUTPUT: probability, CLASS_OUTPUT: predicted_class, DECISION_OUTPUT: decision}
            for probability, predicted_class, decision in zip(served.probabilities, served.classes, served.decisions)
        ]
    return {"predictions": predictions, "automation": automation}


# Fresh request ids: a random per-process prefix and a counter. Unique across gateway processes
# and restarts, and much cheaper than uuid4 (os.urandom per request was measurable here).
_ID_PREFIX = uuid.uuid4().hex[:12]
_id_counter = itertools.count(1)


def _request_id(given: str | None) -> str:
    """The caller's request id when it is a sane token, else a fresh one (returned in X-Request-Id)."""
    if given and _REQUEST_ID.match(given):
        return given
    return f"{_ID_PREFIX}{next(_id_counter):012x}"


def _json(document: Any) -> web.Response:
    return web.Response(body=orjson.dumps(document), content_type=_JSON)


def _field(body: dict[str, Any], name: str, kind: type, *, optional: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if optional:
            return None
        raise GatewayError(400, f"the request body needs {name!r}")
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind:
        raise GatewayError(400, f"{name!r} must be {'a number' if kind is float else kind.__name__}, got {value!r:.60}")
    return value


# --- running it ----------------------------------------------------------------------------------


class GatewayHandle:
    """A gateway running on its own event loop thread: `.rest_port`, `.grpc_port`, `.url`, `.stop()`."""

    def __init__(self, gateway: Gateway, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        self.rest_port = gateway.rest_port
        self.grpc_port = gateway.grpc_port
        self._loop = loop
        self._thread = thread
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.settings.host}:{self.grpc_port}"

    def call(self, coroutine: Any, timeout: float = 60.0) -> Any:
        """Runs a coroutine on the gateway's loop from another thread (admin helpers, tests)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def flush_logs(self, timeout: float = 30.0) -> None:
        """Waits until every row logged so far is on disk."""
        self.gateway.request_log.flush(timeout)
        self.gateway.feedback_log.flush(timeout)

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful stop: in-flight requests finish, queued shadow copies are sent, every log row is written."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.call(self.gateway.stop(), timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def __enter__(self) -> "GatewayHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed; using the default asyncio loop")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def start_gateway(settings: GatewaySettings | None = None, **overrides: Any) -> GatewayHandle:
    """Starts a gateway on a background thread and returns once it listens (port 0 = a free port).

    `overrides` are GatewaySettings fields applied on top of `settings` (or of the defaults plus
    `MLOPS_GATEWAY_*` variables when `settings` is None).
    """
    if settings is None:
        settings = load_gateway_settings(overrides=overrides)
    elif overrides:
        import dataclasses

        settings = dataclasses.replace(settings, **overrides)
    serving_apis()  # load the protos before the loop thread needs them
    loop = _new_loop(settings.use_uvloop)
    started: Future = Future()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            gateway = Gateway(settings)
            loop.run_until_complete(gateway.start())
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            started.set_exception(err)
            loop.close()
            return
        started.set_result(gateway)
        loop.run_forever()
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=run, name="gateway-loop", daemon=True)
    thread.start()
    try:
        gateway = started.result(timeout=120)
    except BaseException:
        thread.join(30)
        raise
    return GatewayHandle(gateway, loop, thread)


def run_gateway(settings: GatewaySettings) -> None:
    """Runs the gateway in this thread until SIGTERM or SIGINT, then stops it gracefully."""
    serving_apis()
    loop = _new_loop(settings.use_uvloop)
    asyncio.set_event_loop(loop)

    async def main() -> None:
        gateway = Gateway(settings)
        await gateway.start()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        print(f"gateway: REST http://{settings.host}:{gateway.rest_port}  gRPC {settings.host}:{gateway.grpc_port}", flush=True)
        await stop.wait()
        log.info("stopping: draining requests and writing the prediction log")
        await gateway.stop()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.gateway", description="The serving gateway (TF Serving protocol).")
    parser.add_argument("--config", help="gateway TOML file ([gateway] and [models.<name>] tables)")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_gateway_settings(args.config, overrides=settings_overrides(args))
        run_gateway(settings)
    except MlopsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
