"""TF Serving's REST API (`/v1/models/...`), served by aiohttp, answered by `RestApiHandler`.

`RestApiHandler.process(method, path, body)` is TF Serving's `HttpRestApiHandler::ProcessRequest`
as a plain synchronous function: the same path regexes (case-insensitive), the same order of
checks (the body is parsed before the model is looked up), the same JSON documents and the same
error messages and HTTP codes. `RestServer` puts it on an event loop (uvloop when installed) and
runs each request in a thread pool, so the loop keeps accepting connections while TensorFlow works.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import re
import socket
import threading
import time
import urllib.parse
from typing import Callable, Mapping

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf import json_format
from tensorflow_serving.apis import model_pb2

from serving.model_server.json_requests import parse_examples_request, parse_predict_request
from serving.model_server.json_responses import (
    encode_classification_results,
    encode_predict_response,
    encode_regression_results,
    error_body,
)
from serving.model_server.manager import ModelManager, VersionStatus, status_response
from serving.model_server.metrics import ServingMetrics
from serving.model_server.servable import Servable
from serving.model_server.tensors import TensorSpec
from serving.status import HTTP_STATUS, Code, ServingError, invalid

log = logging.getLogger(__name__)

# http_rest_api_util.cc
_V1_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE
)
_INT64_MAX = 2**63 - 1
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
_API_NAMES = {"predict": "Predict", "classify": "Classify", "regress": "Regress"}


@dataclasses.dataclass(frozen=True)
class RestResponse:
    status: int
    body: bytes
    content_type: str = "application/json"


def _json_response(code: Code, body: bytes) -> RestResponse:
    return RestResponse(HTTP_STATUS[code], body)


def _error_response(err: ServingError) -> RestResponse:
    return RestResponse(HTTP_STATUS[err.code], error_body(err.message))


def _version_number(text: str | None) -> int | None:
    if not text:
        return None
    version = int(text)
    if version > _INT64_MAX:
        raise invalid(f"Failed to convert version: {text} to numeric.")
    return version


def status_json(statuses: list[VersionStatus]) -> bytes:
    """GetModelStatusResponse as TF Serving prints it (every field, including an OK status)."""
    document = json_format.MessageToDict(status_response(statuses), including_default_value_fields=True)
    return orjson.dumps(document, option=orjson.OPT_INDENT_2)


def metadata_json(servable: Servable) -> bytes:
    """GetModelMetadataResponse the way http_rest_api_util.cc's ToJsonString concatenates it."""
    spec = model_pb2.ModelSpec(name=servable.name)
    spec.version.value = servable.version
    model_spec = json_format.MessageToDict(spec, preserving_proto_field_name=True, including_default_value_fields=True)
    signature_defs = json_format.MessageToDict(
        servable.signature_def_map(), preserving_proto_field_name=True, including_default_value_fields=True
    )
    document = {"model_spec": model_spec, "metadata": {"signature_def": signature_defs}}
    return orjson.dumps(document, option=orjson.OPT_INDENT_2)


class RestApiHandler:
    """One REST request in, one response out; never raises for anything a client sends."""

    def __init__(self, manager: ModelManager, metrics: ServingMetrics | None = None) -> None:
        self._manager = manager
        self._metrics = metrics

    def process(self, method: str, path: str, body: bytes) -> RestResponse:
        try:
            return self._dispatch(method, path, body)
        except ServingError as err:
            return _error_response(err)
        except Exception as err:  # noqa: BLE001 - a bug must cost one request, not the server
            log.exception("REST %s %s failed", method, path)
            return _error_response(ServingError(Code.INTERNAL, f"{type(err).__name__}: {err}"))

    def _dispatch(self, method: str, path: str, body: bytes) -> RestResponse:
        malformed = invalid(f"Malformed request: {method} {path}")
        if method == "POST":
            match = _PREDICTION_PATH.fullmatch(path)
            if match is None:
                raise malformed
            name, version_text, label, verb = match.groups()
            name = urllib.parse.unquote(name)
            label = urllib.parse.unquote(label) if label else None
            version = _version_number(version_text)
            if verb not in _API_NAMES:
                raise malformed  # TF Serving compares the verb case-sensitively
            return self._timed_inference(verb, name, version, label, body)
        if method == "GET":
            match = _STATUS_PATH.fullmatch(path)
            if match is None:
                raise malformed
            name, version_text, label, subresource = match.groups()
            name = urllib.parse.unquote(name) if name else ""
            label = urllib.parse.unquote(label) if label else None
            version = _version_number(version_text)
            if not name:
                raise invalid("Missing model name in request.")
            if subresource == "metadata":
                return _json_response(Code.OK, metadata_json(self._manager.get_servable(name, version, label)))
            # TF Serving's GetModelStatus looks only at the version: a label path lists every version.
            return _json_response(Code.OK, status_json(self._manager.model_status(name, version)))
        raise malformed

    def _timed_inference(self, verb: str, name: str, version: int | None, label: str | None, body: bytes) -> RestResponse:
        start = time.perf_counter_ns()
        code = Code.OK
        try:
            if verb == "predict":
                payload = self._predict(name, version, label, body)
            elif verb == "classify":
                payload = self._classify(name, version, label, body)
            else:
                payload = self._regress(name, version, label, body)
            return _json_response(Code.OK, payload)
        except ServingError as err:
            code = err.code
            raise
        finally:
            if self._metrics is not None:
                micros = (time.perf_counter_ns() - start) // 1000
                self._metrics.record_request(name, _API_NAMES[verb], "REST", code, micros)

    def _predict(self, name: str, version: int | None, label: str | None, body: bytes) -> bytes:
        resolved: list[Servable] = []

        def input_specs(signature_name: str) -> Mapping[str, TensorSpec]:
            servable = self._manager.get_servable(name, version, label)
            resolved.append(servable)
            return servable.rest_input_specs(signature_name)

        request = parse_predict_request(body, input_specs)
        _, outputs = resolved[0].predict(request.signature_name, request.inputs)
        return encode_predict_response(outputs, request.format)

    def _classify(self, name: str, version: int | None, label: str | None, body: bytes) -> bytes:
        signature_name, examples = parse_examples_request(body, "classify")
        _, classes = self._manager.get_servable(name, version, label).classify(signature_name, examples)
        return encode_classification_results([[(lbl.decode("utf-8", "replace"), s) for lbl, s in ex] for ex in classes])

    def _regress(self, name: str, version: int | None, label: str | None, body: bytes) -> bytes:
        signature_name, examples = parse_examples_request(body, "regress")
        _, values = self._manager.get_servable(name, version, label).regress(signature_name, examples)
        return encode_regression_results(values)


class BodyTooLarge(Exception):
    pass


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(request.content_length)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # optional speed-up; the standard loop serves the same API
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class RestServer:
    """aiohttp on its own event-loop thread; `start()` binds and returns the port (0 = any free one)."""

    def __init__(
        self,
        handler: RestApiHandler,
        *,
        host: str,
        port: int,
        executor: concurrent.futures.Executor,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        metrics_path: str | None = None,
        metrics_page: Callable[[], bytes] | None = None,
        timeout_in_ms: int = 0,
    ) -> None:
        self._handler = handler
        # --rest_api_timeout_in_ms (TF Serving: the RunOptions timeout of each REST call; <= 0: none)
        self._timeout = timeout_in_ms / 1000 if timeout_in_ms > 0 else None
        self._host, self._requested_port = host, port
        self._executor = executor
        self._max_body_bytes = max_body_bytes
        self._metrics_path = metrics_path
        self._metrics_page = metrics_page
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        if self._metrics_path is not None and path == self._metrics_path and self._metrics_page is not None:
            return web.Response(body=self._metrics_page(), content_type="text/plain")
        if not _V1_PATH.fullmatch(path):
            return web.Response(status=404, text=f"Not Found: {path}\n")
        try:
            body = await _read_body(request, self._max_body_bytes)
        except BodyTooLarge as err:
            message = (
                f"Request body of {err.args[0]} bytes is larger than the server's limit of "
                f"{self._max_body_bytes} bytes (--rest_api_max_body_bytes); send fewer instances per request"
            )
            return web.Response(status=400, body=error_body(message), content_type="application/json")
        except RequestPayloadError as err:  # e.g. Content-Encoding: gzip on a body that is not gzip
            message = f"Failed to read the request body: {str(err).splitlines()[-1].strip()}"
            response = web.Response(status=400, body=error_body(message), content_type="application/json")
            response.force_close()  # the connection's body was not read to the end: it cannot carry another request
            return response
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(self._executor, self._handler.process, request.method, path, body)
        try:
            response = await asyncio.wait_for(call, self._timeout)
        except TimeoutError:
            # TF Serving's session gives up with DEADLINE_EXCEEDED; here the model call cannot be
            # interrupted, so it finishes on its worker thread and its answer is dropped.
            message = f"Timed out waiting for the model (--rest_api_timeout_in_ms={round(self._timeout * 1000)})"
            return web.Response(status=HTTP_STATUS[Code.DEADLINE_EXCEEDED], body=error_body(message), content_type="application/json")
        return web.Response(status=response.status, body=response.body, content_type=response.content_type)

    async def _setup(self, sock: socket.socket) -> None:
        app = web.Application(client_max_size=self._max_body_bytes + 1)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, backlog=1024).start()

    def start(self) -> int:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._requested_port))
        self.port = sock.getsockname()[1]
        self._loop = _new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._setup(sock))
            except BaseException as err:  # noqa: BLE001 - reported to start() below
                failure.append(err)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="rest-api", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self.port

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._runner is not None:
            future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            try:
                future.result(timeout)
            except (concurrent.futures.TimeoutError, RuntimeError) as err:
                log.warning("REST server did not shut down cleanly: %s", err)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._loop = self._thread = None
