"""The gateway's core: one predict request from routing to the log, with no HTTP or gRPC in it.

`GatewayCore.serve` resolves the route (`routing.py`: the model's policy, or an explicit version
or label), forwards the checked examples (`inputs.py`) to the model server (`upstream.py`, merged
with concurrent calls by `upstream_batching.py` under load), adds each example's decision from
the model's automation, logs the request, queues a shadow copy when the policy asks for one (policy
shadow: the shadow version; policy canary with `pair_canary`: stable, for a request the canary
answered, so the two are compared on the canary's own requests), and keeps the metrics. Feedback is checked and logged here too. Failures are typed errors
(`errors.py`); the edges (`rest.py`, `grpc_service.py`, `admin.py`) turn them into answers.

Every example served is one row in the request log; a shadow copy that was sent is one row with
`is_shadow=true`. A request is answered only once its log entry is durable in the journal
(`serving/log_writer.py`; one fdatasync per group of concurrent requests). A request waits for
room in a full log queue; if none comes in `log_backpressure_timeout_s` it fails UNAVAILABLE (so
it was neither served nor logged). When the journal cannot be written, `log_failure` decides:
"refuse" fails the request with `LogUnavailable` (503), "serve" answers it, logged in memory only.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from serving import log_writer, prediction_log
from serving.gateway import routing
from serving.gateway.config import GatewaySettings
from serving.gateway.errors import SERVED_STATUS, GatewayError, InvalidRequest, LogUnavailable, is_invalid_request
from serving.gateway.inputs import CheckedInstances
from serving.gateway.metrics import GatewayMetrics
from serving.gateway.routing import ModelRoute, Target
from serving.gateway.upstream import GrpcUpstream, RestUpstream
from serving.gateway.upstream_batching import UpstreamBatcher
from serving.prediction_log import Feedback, LoggedRequest
from serving.status import Code
from transforms.features import DECISION_NONE, DECISION_REFER_TO_HUMAN, HUMAN_DECISIONS

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_FEEDBACK_KEYS = frozenset({"request_id", "instance_index", "ground_truth", "human_decision", "source"})
_INFINITIES = (math.inf, -math.inf)
_SERVED = str(SERVED_STATUS)


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


class GatewayCore:
    """The gateway's state and its request path; `open()`, `drain()` and `close()` run on its event loop."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.metrics = GatewayMetrics()
        self.routes = routing.RoutingTable(
            state_file=settings.state_file, model_config_file=settings.model_config_file, initial=settings.models)
        self.stats = routing.TrafficStats(max_age_s=settings.stats_max_window_s)
        self.recent: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._background: list[asyncio.Task] = []
        self._shadow_queue: asyncio.Queue[ShadowJob] | None = None
        self._in_flight = 0
        self._idle: asyncio.Event | None = None

    # --- life cycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Opens the logs and the upstream connections, starts the shadow workers and the config poll."""
        s = self.settings
        log_options = {"capacity_rows": s.log_queue_rows, "flush_rows": s.log_flush_rows, "flush_seconds": s.log_flush_seconds,
                       "journal": s.log_journal, "fsync": s.log_fsync, "on_failure": s.log_failure,
                       "writer_id": s.replica_name}
        loop = asyncio.get_running_loop()
        # Replay of a dead gateway's journal reads files: off the event loop.
        self.request_log = await loop.run_in_executor(None, lambda: log_writer.open_request_log(s.log_dir, **log_options))
        self.feedback_log = await loop.run_in_executor(None, lambda: log_writer.open_feedback_log(s.log_dir, **log_options))
        self.metrics.log_queue_rows.set_function(lambda: self.request_log.pending_rows)
        self.metrics.watch_logs({"requests": self.request_log, "feedback": self.feedback_log})
        self.upstream: RestUpstream | GrpcUpstream = RestUpstream(s) if s.upstream_protocol == "rest" else GrpcUpstream(s)
        self.rest_upstream = self.upstream if isinstance(self.upstream, RestUpstream) else RestUpstream(s)
        self._grpc_passthrough: GrpcUpstream | None = self.upstream if isinstance(self.upstream, GrpcUpstream) else None
        self.batcher: UpstreamBatcher | None = None
        if s.upstream_max_in_flight:
            self.batcher = UpstreamBatcher(
                self.upstream.predict, max_in_flight=s.upstream_max_in_flight, max_batch_rows=s.upstream_batch_max_rows,
                is_request_error=is_invalid_request, observe=self.metrics.upstream_call_requests.observe)
            self.metrics.upstream_waiting.set_function(lambda: self.batcher.waiting if self.batcher is not None else 0)
        self._idle = asyncio.Event()
        self._idle.set()
        self._shadow_queue = asyncio.Queue(maxsize=s.shadow_queue_size)
        for _ in range(s.shadow_workers):
            self._background.append(asyncio.create_task(self._shadow_worker()))
        self._background.append(asyncio.create_task(
            self._poll(s.config_poll_seconds, self.routes.refresh_from_model_config, s.model_config_file)))
        # Replicas share the state file: another's admin change routes here within policy_poll_seconds.
        self._background.append(asyncio.create_task(
            self._poll(s.policy_poll_seconds, self.routes.refresh_from_state, s.state_file)))

    async def drain(self) -> None:
        """Lets in-flight requests finish and sends the queued shadow copies (the listeners are closed)."""
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

    async def close(self) -> None:
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

    async def _poll(self, seconds: float, refresh: Any, path: Any) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(seconds)
            try:
                await loop.run_in_executor(None, refresh)
            except Exception:  # noqa: BLE001 - a bad file must not stop polling; it is logged
                log.exception("re-reading %s failed", path)

    # --- the predict path (shared by REST and gRPC) -------------------------------------------
    def resolve(self, model: str, version: int | None, label: str | None, request_key: str | None) -> tuple[ModelRoute, Target]:
        route = self.routes.route(model)
        if route is None:
            raise self._unknown_model(model)
        if version is not None:
            if route.served_versions and version not in route.served_versions:
                raise GatewayError(Code.NOT_FOUND, f"model {model!r} has no version {version} (served versions: {list(route.served_versions)})")
            return route, Target(f"version:{version}", version)
        if label is not None:
            label_version = {routing.STABLE: route.stable_version, routing.CANARY: route.canary_version}.get(label, route.labels.get(label))
            if label_version is None:
                known = sorted({*route.labels, *(["stable"] if route.stable_version is not None else [])})
                raise GatewayError(Code.NOT_FOUND, f"model {model!r} has no label {label!r} (labels: {known})")
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
                self.stats.record(model, target.label, target.version, err.http_status, (time.perf_counter() - started) * 1000, 0.0, 0, 0)
                raise
            latency_ms = (time.perf_counter() - started) * 1000.0
            entry = LoggedRequest(
                request_id, arrival_us, model, target.version, target.label, route.policy, route.automation,
                checked.logged, served.probabilities, served.classes, served.decisions, latency_ms, SERVED_STATUS, False,
            )
            await self.log(entry)
            self._after_success(served, latency_ms)
            shadow = routing.shadow_target(route, target, self.settings.pair_canary) if version is None and label is None else None
            if shadow is not None:
                self._enqueue_shadow(ShadowJob(route, shadow, checked, request_id, arrival_us))
            self._remember(request_id, checked.count)
            metrics.child(metrics.requests, metric_model, route_label, _SERVED).inc()
            return served
        except GatewayError as err:
            metrics.child(metrics.requests, metric_model, route_label, str(err.http_status)).inc()
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
        referrals = served.decisions.count(DECISION_REFER_TO_HUMAN)
        if referrals:
            metrics.child(metrics.referrals, model).inc(referrals)
        self.stats.record(model, served.target.label, served.target.version, SERVED_STATUS, latency_ms, total, scored, positives,
                          square_total)

    async def log(self, entry: Any, writer: log_writer.ParquetLogWriter | None = None) -> None:
        """Logs an entry and returns once it is durable (journaled); waits, without blocking the loop,
        while the queue is full (back-pressure, no drops). LogUnavailable when the journal cannot be
        written and `log_failure` is "refuse"."""
        writer = writer or self.request_log
        timeout = self.settings.log_backpressure_timeout_s
        durable: asyncio.Future | None = None
        waiter = None
        if writer.journaled:
            loop = asyncio.get_running_loop()
            durable = loop.create_future()
            waiter = functools.partial(_settle_from_thread, loop, durable)
        if not writer.try_put(entry, waiter):
            self.metrics.log_waits.inc()
            deadline = time.monotonic() + timeout
            while not writer.try_put(entry, waiter):
                if time.monotonic() > deadline:
                    raise GatewayError(Code.UNAVAILABLE, f"the prediction log is not keeping up ({writer.pending_rows} rows waiting); request not served")
                await asyncio.sleep(0.002)
        if durable is None:
            return
        try:
            async with asyncio.timeout(timeout):
                problem = await durable
        except TimeoutError:
            problem = f"the log journal under {writer.journal_dir} did not confirm a write in {timeout:g}s (a stalled disk?)"
            if self.settings.log_failure == "refuse":
                raise LogUnavailable(problem) from None
        if problem is not None:
            if self.settings.log_failure == "refuse":
                raise LogUnavailable(problem)
            self.metrics.log_not_durable.inc()

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
            probabilities, classes, decisions, status = served.probabilities, served.classes, served.decisions, SERVED_STATUS
        except GatewayError as err:
            probabilities, classes, decisions, status = [None] * count, [None] * count, [DECISION_NONE] * count, err.http_status
        latency_ms = (time.perf_counter() - started) * 1000.0
        await self.log(LoggedRequest(
            job.request_id, job.arrival_us, job.route.model_name, job.target.version, routing.SHADOW, job.route.policy,
            job.route.automation, job.checked.logged, probabilities, classes, decisions, latency_ms, status, True,
        ))
        scored = [p for p in probabilities if p is not None]
        positives = sum(1 for c in classes if c == 1)
        self.stats.record(job.route.model_name, routing.SHADOW, job.target.version, status, latency_ms, sum(scored), len(scored), positives)

    def enter(self) -> None:
        """A request starts (the edges call it first; `drain` waits for the matching `leave`)."""
        self._in_flight += 1
        self.metrics.in_flight.inc()
        if self._idle is not None:
            self._idle.clear()

    def leave(self) -> None:
        self._in_flight -= 1
        self.metrics.in_flight.dec()
        if self._in_flight == 0 and self._idle is not None:
            self._idle.set()

    def grpc_passthrough(self) -> GrpcUpstream:
        """The model server's gRPC API for calls passed through (opened on first use with a REST upstream)."""
        if self._grpc_passthrough is None:
            self._grpc_passthrough = GrpcUpstream(self.settings)
        return self._grpc_passthrough

    def require_model(self, model: str) -> None:
        """NOT_FOUND unless the gateway serves `model`."""
        if self.routes.route(model) is None:
            raise self._unknown_model(model)

    def _unknown_model(self, model: str) -> GatewayError:
        return GatewayError(Code.NOT_FOUND, f"model {model!r} is not served by this gateway (models: {self.routes.models()})")

    def count_refusal(self, model: str, err: GatewayError) -> None:
        """Counts a request refused before it was routed (its body, its inputs)."""
        known = self.routes.route(model) is not None
        self.metrics.child(self.metrics.requests, model if known else "unknown", "none", str(err.http_status)).inc()

    # --- feedback -----------------------------------------------------------------------------
    async def record_feedback(self, body: Any) -> tuple[int, list[int]]:
        """Checks and logs feedback (an object or a list of them): (how many, positions of unknown request ids).

        Feedback for a request id still in memory is checked (the instance must exist); older ids
        (ground truth often arrives days later, after restarts) are accepted and reported back as
        unmatched: the join with the request log happens in monitoring.
        """
        items = body if isinstance(body, list) else [body]
        if not items:
            raise InvalidRequest("no feedback in the request")
        now_us = time.time_ns() // 1000
        entries, unmatched = [], []
        for position, item in enumerate(items):
            entry = self._feedback_entry(item, position, now_us)
            if entry.request_id not in self.recent:
                unmatched.append(position)
            entries.append(entry)
        for entry in entries:
            await self.log(entry, self.feedback_log)
        return len(entries), unmatched

    def _feedback_entry(self, item: Any, position: int, now_us: int) -> Feedback:
        where = f"feedback {position}"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where}: expected an object, got {type(item).__name__}")
        unknown = set(item) - _FEEDBACK_KEYS
        if unknown:
            raise InvalidRequest(f"{where}: unknown keys {sorted(unknown)}")
        request_id = item.get("request_id")
        if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
            raise InvalidRequest(f"{where}: request_id must be the X-Request-Id of a prediction, got {request_id!r:.80}")
        index = item.get("instance_index", 0)
        if type(index) is not int or index < 0:
            raise InvalidRequest(f"{where}: instance_index must be a non-negative integer, got {index!r:.40}")
        known_count = self.recent.get(request_id)
        if known_count is not None and index >= known_count:
            raise InvalidRequest(f"{where}: request {request_id} had {known_count} instances; instance_index {index} does not exist")
        truth = item.get("ground_truth")
        if truth is not None and (type(truth) is not int or truth not in (0, 1)):
            raise InvalidRequest(f"{where}: ground_truth must be 0 or 1, got {truth!r:.40}")
        decision = item.get("human_decision")
        if decision is not None and decision not in HUMAN_DECISIONS:
            raise InvalidRequest(f"{where}: human_decision must be one of {list(HUMAN_DECISIONS)}, got {decision!r:.40}")
        if truth is None and decision is None:
            raise InvalidRequest(f"{where}: give ground_truth (0|1) and/or human_decision")
        source = item.get("source", "api")
        if not isinstance(source, str) or not 0 < len(source) <= 64:
            raise InvalidRequest(f"{where}: source must be a short string, got {source!r:.40}")
        return Feedback(request_id, index, now_us, truth, decision, source)


def _settle_from_thread(loop: asyncio.AbstractEventLoop, future: asyncio.Future, problem: str | None) -> None:
    """The journal thread's answer to a waiting request, handed to the request's event loop."""
    loop.call_soon_threadsafe(_settle, future, problem)


def _settle(future: asyncio.Future, problem: str | None) -> None:
    if not future.done():  # the request may have timed out or its client gone
        future.set_result(problem)


# Fresh request ids: a random per-process prefix and a counter. Unique across gateway processes
# and restarts, and much cheaper than uuid4 (os.urandom per request was measurable here).
_ID_PREFIX = uuid.uuid4().hex[:12]
_id_counter = itertools.count(1)


def assign_request_id(given: str | None) -> str:
    """The caller's request id when it is a sane token, else a fresh one (returned in X-Request-Id)."""
    if given and _REQUEST_ID.match(given):
        return given
    return f"{_ID_PREFIX}{next(_id_counter):012x}"
