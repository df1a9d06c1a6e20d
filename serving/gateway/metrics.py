"""The gateway's Prometheus metrics (the Grafana dashboard reads them): one registry per gateway."""

from __future__ import annotations

import bisect
import math
from typing import Any, Mapping, Sequence

import prometheus_client

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))


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


class LogCollector:
    """The log writers' own counts, read when Prometheus scrapes (the writers' threads keep them)."""

    def __init__(self, writers: Mapping[str, Any]) -> None:
        self.writers = dict(writers)

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        healthy = GaugeMetricFamily("mlops_gateway_log_healthy", "1 while the log's journal can be written, 0 while it fails",
                                    labels=["log"])
        counters = {
            "journal_failures": ("mlops_gateway_log_journal_failures", "Journal writes that failed (full or failing disk)"),
            "journal_commits": ("mlops_gateway_log_journal_commits", "Journal group commits (one fdatasync each)"),
            "journal_entries": ("mlops_gateway_log_journal_entries", "Log entries made durable in the journal"),
            "not_durable_rows": ("mlops_gateway_log_not_durable_rows", "Rows logged in memory only while the journal failed (log_failure = serve)"),
            "replayed_rows": ("mlops_gateway_log_replayed_rows", "Rows recovered from a stopped gateway's journal at start"),
            "write_failures": ("mlops_gateway_log_parquet_write_failures", "Parquet writes that failed (retried)"),
        }
        families = {attribute: CounterMetricFamily(name, text, labels=["log"]) for attribute, (name, text) in counters.items()}
        for kind, writer in self.writers.items():
            healthy.add_metric([kind], 0.0 if writer.failure else 1.0)
            for attribute, family in families.items():
                family.add_metric([kind], getattr(writer, attribute))
        yield healthy
        yield from families.values()


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
        self.log_not_durable = prometheus_client.Counter(
            "mlops_gateway_log_not_durable_requests", "Requests answered while their log entry could not be journaled "
            "(log_failure = serve)", registry=r)
        # A burst here is someone guessing the token (or a rollout still holding a rotated-out one).
        self.admin_auth_failures = prometheus_client.Counter(
            "mlops_gateway_admin_auth_failures_total", "Admin API calls refused: no, wrong or unusable token",
            ["reason"], registry=r)
        prometheus_client.ProcessCollector(registry=r)
        self._children: dict[tuple, Any] = {}

    def watch_logs(self, writers: Mapping[str, Any]) -> None:
        """Exports the log writers' health and counts (`mlops_gateway_log_*`)."""
        self.registry.register(LogCollector(writers))

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, cached: the lookup is measurable on the hot path."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child


