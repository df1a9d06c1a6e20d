"""The REST edge: TF Serving's REST paths, feedback, metrics and health over aiohttp.

Handlers read the request, call the core (`core.py`) and turn its typed errors into statuses
(`GatewayError.http_status`) and `{"error": message}` bodies. `error_response`, `json_response`
and `read_json` are shared with the admin edge (`admin.py`).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import orjson
import prometheus_client
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from serving.gateway.core import GatewayCore, Served, assign_request_id
from serving.gateway.errors import GatewayError, InvalidRequest, RequestTooLarge
from serving.gateway.inputs import check_predict_body, parse_json
from serving.protocol import (
    CLASS_OUTPUT,
    DECISION_OUTPUT,
    MODEL_LABEL_HEADER,
    MODEL_VERSION_HEADER,
    PROBABILITY_OUTPUT,
    REQUEST_ID_HEADER,
    REQUEST_KEY_HEADER,
)
from serving.status import Code

log = logging.getLogger(__name__)

_PREDICT_PATH = re.compile(r"(?i)^/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)$")
_MODEL_PATH = re.compile(r"(?i)^/v1/models/([^/:]+)(/versions/\d+|/labels/[^/:]+)?(/metadata)?$")
_JSON = "application/json"


class UnreadableBody(InvalidRequest):
    """The body could not be read to its end: the connection cannot carry another request."""


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": message}), content_type=_JSON, headers=headers)


def gateway_error_response(err: GatewayError, headers: dict[str, str] | None = None) -> web.Response:
    response = error_response(err.http_status, err.message, headers)
    if isinstance(err, UnreadableBody):
        response.force_close()  # answers with Connection: close, so the client does not reuse it
    return response


def json_response(document: Any) -> web.Response:
    return web.Response(body=orjson.dumps(document), content_type=_JSON)


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLarge(f"request body is {request.content_length} bytes; the limit is {limit} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestTooLarge(f"request body is larger than the limit of {limit} bytes") from None
    except RequestPayloadError as err:  # e.g. Content-Encoding: gzip on a body that is not gzip
        raise UnreadableBody(f"the request body could not be read: {str(err).splitlines()[-1].strip()}") from None
    if not raw:
        raise InvalidRequest("empty request body: expected a JSON object with 'instances' or 'inputs'")
    return raw


async def read_json(request: web.Request, limit: int) -> Any:
    return parse_json(await read_body(request, limit))


class RestApi:
    """The REST handlers of one gateway (`add_routes` puts them on an aiohttp application)."""

    def __init__(self, core: GatewayCore) -> None:
        self.core = core
        self.settings = core.settings
        self.metrics = core.metrics

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/v1/models/{tail:.*}", self.handle_model_path)
        app.router.add_post("/v1/feedback", self.handle_feedback)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_get("/healthz", self.handle_health)

    async def handle_model_path(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            return await self.handle_predict(request)
        if request.method == "GET":
            return await self.handle_model_get(request)
        return error_response(405, f"{request.method} is not allowed on {request.path}")

    async def handle_predict(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        arrival_us = time.time_ns() // 1000
        request_id = assign_request_id(request.headers.get(REQUEST_ID_HEADER))
        headers = {REQUEST_ID_HEADER: request_id}
        core = self.core
        core.enter()
        try:
            match = _PREDICT_PATH.match(request.path)
            if match is None:
                raise GatewayError(Code.NOT_FOUND, f"no such endpoint {request.path!r}; predict is POST /v1/models/<name>[/versions/<n>|/labels/<l>]:predict")
            model, version_text, label, verb = match.groups()
            if verb.lower() != "predict":
                self.metrics.child(self.metrics.requests, "unknown", "none", "501").inc()
                raise GatewayError(Code.UNIMPLEMENTED, f":{verb} is not served by the gateway; use :predict")
            try:
                checked, columnar = check_predict_body(await read_body(request, self.settings.max_body_bytes),
                                                       self.settings.max_instances)
            except GatewayError as err:
                core.count_refusal(model, err)
                raise
            served = await core.serve(
                model, int(version_text) if version_text is not None else None, label, checked,
                request.headers.get(REQUEST_KEY_HEADER), request_id, arrival_us, started,
            )
            headers[MODEL_VERSION_HEADER] = str(served.target.version) if served.target.version is not None else ""
            headers[MODEL_LABEL_HEADER] = served.target.label
            return web.Response(body=orjson.dumps(_rest_answer(served, columnar)), content_type=_JSON, headers=headers)
        except GatewayError as err:
            return gateway_error_response(err, headers)
        except Exception:  # noqa: BLE001 - a bug must cost one request, not the process; it is logged
            log.exception("request %s failed", request_id)
            self.metrics.child(self.metrics.requests, "unknown", "none", "500").inc()
            return error_response(500, f"internal gateway error (request id {request_id}); see the gateway log", headers)
        finally:
            core.leave()

    async def handle_model_get(self, request: web.Request) -> web.Response:
        match = _MODEL_PATH.match(request.path)
        if match is None:
            return error_response(404, f"no such endpoint {request.path!r}")
        try:
            self.core.require_model(match.group(1))
            status, raw = await self.core.rest_upstream.get(request.path)
        except GatewayError as err:
            return gateway_error_response(err)
        return web.Response(status=status, body=raw, content_type=_JSON)

    async def handle_feedback(self, request: web.Request) -> web.Response:
        try:
            accepted, unmatched = await self.core.record_feedback(await read_json(request, self.settings.max_body_bytes))
        except GatewayError as err:
            return gateway_error_response(err)
        return json_response({"accepted": accepted, "unmatched": unmatched})

    async def handle_metrics(self, request: web.Request) -> web.Response:
        payload = prometheus_client.generate_latest(self.metrics.registry)
        return web.Response(body=payload, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    async def handle_health(self, request: web.Request) -> web.Response:
        """200 while the gateway can serve; 503 while its log fails under `log_failure = "refuse"`
        (it refuses predictions then), with `log_problem` saying what is wrong."""
        core = self.core
        breaker = core.upstream.breaker
        problem = core.request_log.failure or core.feedback_log.failure
        refusing = problem is not None and self.settings.log_failure == "refuse"
        body = {"status": "log_failing" if problem else "ok", "model_server": "down" if breaker.failures >= breaker.threshold else "up",
                "models": core.routes.models(), "log_queue_rows": core.request_log.pending_rows,
                "log": "failing" if problem else ("durable" if core.request_log.journaled else "memory"),
                "log_problem": problem, "log_failure": self.settings.log_failure}
        return web.Response(status=503 if refusing else 200, body=orjson.dumps(body), content_type=_JSON)


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
