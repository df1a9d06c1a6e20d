"""The model server's Prometheus metrics, with TF Serving's names and text format, and the
`--monitoring_config_file` (a MonitoringConfig text proto) that turns them on.

Both edges record into one `ServingMetrics`: `rest_api.py` and `grpc_api.py` count requests and
their latency, the servables report the time spent inside TensorFlow (`record_runtime`).
"""

from __future__ import annotations

import bisect
import threading
from pathlib import Path
from typing import Sequence

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from core.errors import DataError

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
# monitoring::Buckets::Exponential(10, 1.8, 33): 10 µs to ~20 minutes, then +Inf.
_LATENCY_BUCKETS = tuple(10.0 * 1.8**i for i in range(33))


class _Histogram:
    __slots__ = ("counts", "total", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(_LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_left(_LATENCY_BUCKETS, value)] += 1
        self.total += value
        self.count += 1


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    return ",".join(f'{n}="{_label_value(v)}"' for n, v in zip(names, values))


class ServingMetrics:
    """`:tensorflow:serving:request_count`, `request_latency` and `runtime_latency`, exported in the
    text format of TF Serving's prometheus_exporter.cc (prometheus_client would rename the counter
    `..._total`, which breaks dashboards written for TF Serving)."""

    REQUEST_COUNT = ":tensorflow:serving:request_count"
    REQUEST_LATENCY = ":tensorflow:serving:request_latency"
    RUNTIME_LATENCY = ":tensorflow:serving:runtime_latency"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._request_count: dict[tuple[str, str], int] = {}
        self._request_latency: dict[tuple[str, str, str], _Histogram] = {}
        self._runtime_latency: dict[tuple[str, str, str], _Histogram] = {}

    def record_request(self, model_name: str, api: str, entrypoint: str, code: object, micros: int) -> None:
        """One finished request; latency counts only successful ones, as TF Serving does."""
        status = getattr(code, "name", str(code))
        with self._lock:
            key = (model_name, status)
            self._request_count[key] = self._request_count.get(key, 0) + 1
            if status == "OK":
                self._request_latency.setdefault((model_name, api, entrypoint), _Histogram()).add(micros)

    def record_runtime(self, model_name: str, api: str, micros: int) -> None:
        """Time spent inside TensorFlow for one call (runtime label "TF1", TF Serving's for SavedModels)."""
        with self._lock:
            self._runtime_latency.setdefault((model_name, api, "TF1"), _Histogram()).add(micros)

    def request_count(self, model_name: str, status: str) -> int:
        with self._lock:
            return self._request_count.get((model_name, status), 0)

    def exposition(self) -> bytes:
        lines: list[str] = []
        with self._lock:
            lines.append(f"# TYPE {self.REQUEST_COUNT} counter")
            for (model, status), value in sorted(self._request_count.items()):
                lines.append(f"{self.REQUEST_COUNT}{{{_labels(('model_name', 'status'), (model, status))}}} {value}")
            for name, label_names, series in (
                (self.REQUEST_LATENCY, ("model_name", "API", "entrypoint"), self._request_latency),
                (self.RUNTIME_LATENCY, ("model_name", "API", "runtime"), self._runtime_latency),
            ):
                lines.append(f"# TYPE {name} histogram")
                for key, histogram in sorted(series.items()):
                    labels = _labels(label_names, key)
                    cumulative = 0
                    for bound, bucket in zip(_LATENCY_BUCKETS + (float("inf"),), histogram.counts):
                        cumulative += bucket
                        le = "+Inf" if bound == float("inf") else f"{bound:.6g}"
                        lines.append(f'{name}_bucket{{{labels},le="{le}"}} {cumulative}')
                    lines.append(f"{name}_sum{{{labels}}} {histogram.total:.6g}")
                    lines.append(f"{name}_count{{{labels}}} {histogram.count}")
        return ("\n".join(lines) + "\n").encode("utf-8")


def monitoring_config_class() -> type:
    """tensorflow.serving.MonitoringConfig (config/monitoring_config.proto), which the
    tensorflow-serving-api wheel does not ship: built from its two-message definition."""
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="mlops_serving/monitoring_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    prometheus = file_proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL, label=1)
    prometheus.field.add(name="path", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING, label=1)
    monitoring = file_proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig",
        label=1,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


def read_monitoring_config(path: Path) -> str | None:
    """The Prometheus path a `--monitoring_config_file` enables, or None when it is disabled."""
    config = monitoring_config_class()()
    try:
        text_format.Parse(Path(path).read_text(encoding="utf-8"), config)
    except FileNotFoundError:
        raise DataError(f"{path}: monitoring config file not found") from None
    except text_format.ParseError as err:
        raise DataError(
            f"{path}: not a MonitoringConfig text proto (expected e.g. "
            f'prometheus_config {{ enable: true path: "{DEFAULT_PROMETHEUS_PATH}" }}): {err}'
        ) from None
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or DEFAULT_PROMETHEUS_PATH
