"""Serving latency and throughput: the SavedModel in-process vs. the embedded server over REST and gRPC.

    .venvs/ml/bin/python benchmarks/serving_benchmark.py                 # tiny model, all targets
    .venvs/ml/bin/python benchmarks/serving_benchmark.py --model-dir var/.../export   # a trained model
    .venvs/ml/bin/python benchmarks/serving_benchmark.py --target rest=http://localhost:8501 \\
        --target grpc=localhost:8500                                     # any TF Serving-compatible server

Every cell (target x examples per request x concurrent clients) runs until `--requests` requests
or `--seconds` seconds, whichever comes first, after a short warm-up. Requests are encoded once
up front, so the numbers are the round trip (client send, server decode + TensorFlow + encode,
client receive), not the client's JSON encoder. The embedded server runs in its own process, on
loopback, so client and server do not share a GIL. Prints numbers; asserts nothing.

A new transport is one function `name(url, model_name, inputs) -> CallerFactory` added to
TRANSPORTS (e.g. `gateway`), then `--target gateway=http://...`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import http.client
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tests.fixtures.servers import free_port  # noqa: E402
from transforms.features import SERVING_FEATURES, Kind, missing_value, parse_value  # noqa: E402

MODEL_NAME = "taxi"
TAXI_CSV = PROJECT_ROOT / "data" / "taxi" / "data.csv"

Call = Callable[[], None]  # one request, raising on failure
CallerFactory = Callable[[], Call]  # one per client thread (each gets its own connection)


# --- inputs -----------------------------------------------------------------------------------


def taxi_inputs(batch: int) -> dict[str, np.ndarray]:
    """`batch` real trips from the shipped CSV as serving inputs (missing values as sentinels)."""
    with TAXI_CSV.open(newline="") as handle:
        rows = [row for _, row in zip(range(batch), csv.DictReader(handle))]
    arrays: dict[str, np.ndarray] = {}
    for feature in SERVING_FEATURES:
        values = [parse_value(feature, row.get(feature.name, "")) for row in rows]
        values = [missing_value(feature.kind) if v is None else v for v in values]
        if feature.kind is Kind.FLOAT:
            arrays[feature.name] = np.asarray(values, dtype=np.float32)
        elif feature.kind is Kind.INT:
            arrays[feature.name] = np.asarray(values, dtype=np.int64)
        else:
            arrays[feature.name] = np.asarray([v.encode() for v in values], dtype=object)
    return arrays


def _json_rows(inputs: dict[str, np.ndarray]) -> bytes:
    batch = len(next(iter(inputs.values())))
    rows = [
        {k: (v[i].decode() if isinstance(v[i], bytes) else v[i].item()) for k, v in inputs.items()} for i in range(batch)
    ]
    return json.dumps({"instances": rows}, allow_nan=True).encode()


# --- transports -------------------------------------------------------------------------------


def inprocess_transport(model_dir: str, model_name: str, inputs: dict[str, np.ndarray]) -> CallerFactory:
    """The SavedModel's serving_default called directly: the floor every server adds to."""
    import tensorflow as tf

    signature = tf.saved_model.load(model_dir).signatures["serving_default"]

    def factory() -> Call:
        def call() -> None:
            outputs = signature(**{k: tf.constant(v) for k, v in inputs.items()})
            for tensor in outputs.values():
                tensor.numpy()

        return call

    return factory


def rest_transport(url: str, model_name: str, inputs: dict[str, np.ndarray]) -> CallerFactory:
    """TF Serving's REST predict (row format) over a persistent HTTP/1.1 connection."""
    parsed = urllib.parse.urlsplit(url)
    body = _json_rows(inputs)
    path = f"{parsed.path.rstrip('/')}/v1/models/{model_name}:predict"
    headers = {"Content-Type": "application/json"}

    def factory() -> Call:
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)

        def call() -> None:
            connection.request("POST", path, body, headers)
            response = connection.getresponse()
            payload = response.read()
            if response.status != 200:
                raise RuntimeError(f"REST {response.status}: {payload[:200]!r}")

        return call

    return factory


def grpc_transport(target: str, model_name: str, inputs: dict[str, np.ndarray]) -> CallerFactory:
    """TF Serving's PredictionService.Predict, one channel per client."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    for alias, array in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(array))

    def factory() -> Call:
        channel = grpc.insecure_channel(target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def call() -> None:
            stub.Predict(request, timeout=60)

        return call

    return factory


TRANSPORTS: dict[str, Callable[[str, str, dict[str, np.ndarray]], CallerFactory]] = {
    "inprocess": inprocess_transport,
    "rest": rest_transport,
    "grpc": grpc_transport,
}


# --- load -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Result:
    latencies_ms: list[float]
    elapsed_s: float
    errors: int

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def run_load(factory: CallerFactory, *, concurrency: int, max_requests: int, max_seconds: float, warmup: int = 20) -> Result:
    """`concurrency` closed-loop clients; stops at `max_requests` in total or after `max_seconds`."""
    callers = [factory() for _ in range(concurrency)]
    for call in callers:
        for _ in range(max(1, warmup // concurrency)):
            call()
    remaining = [max_requests]
    lock = threading.Lock()
    latencies: list[list[float]] = [[] for _ in callers]
    errors = [0]
    deadline = time.perf_counter() + max_seconds

    def client(index: int) -> None:
        call = callers[index]
        mine = latencies[index]
        while time.perf_counter() < deadline:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            start = time.perf_counter()
            try:
                call()
            except Exception:  # noqa: BLE001 - counted and reported, the run goes on
                with lock:
                    errors[0] += 1
                continue
            mine.append((time.perf_counter() - start) * 1000.0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return Result([v for per_client in latencies for v in per_client], elapsed, errors[0])


# --- the embedded server ----------------------------------------------------------------------


def start_embedded_server(model_dir: Path, workdir: Path, threads: int) -> tuple[subprocess.Popen, str, str]:
    """`python -m serving.model_server` in its own process on free loopback ports."""
    base = workdir / MODEL_NAME
    base.mkdir(parents=True, exist_ok=True)
    link = base / "1"
    if not link.exists():
        link.symlink_to(model_dir.resolve(), target_is_directory=True)
    command = [
        sys.executable,
        "-m",
        "serving.model_server",
        "--host=127.0.0.1",
        f"--port={free_port()}",  # tensorflow_model_server's 0 means "do not listen"
        f"--rest_api_port={free_port()}",
        f"--model_name={MODEL_NAME}",
        f"--model_base_path={base}",
        f"--rest_api_num_threads={threads}",
        f"--grpc_max_threads={threads}",
    ]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    grpc_port = rest_port = None
    while grpc_port is None or rest_port is None:
        line = lines.get(timeout=300)
        if line is None:
            raise RuntimeError(f"the embedded server exited with {process.wait()}")
        if match := re.match(r"Running gRPC ModelServer at \S+:(\d+)", line):
            grpc_port = int(match.group(1))
        if match := re.match(r"Exporting HTTP/REST API at:\S+:(\d+)", line):
            rest_port = int(match.group(1))
    return process, f"http://127.0.0.1:{rest_port}", f"127.0.0.1:{grpc_port}"


# --- main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=None, help="a SavedModel with the serving contract (default: the tiny test model)")
    parser.add_argument("--target", action="append", default=[], metavar="KIND=URL", help=f"extra/other targets; KIND in {sorted(TRANSPORTS)}")
    parser.add_argument("--batch", type=int, action="append", default=None, help="examples per request (default: 1 and 32)")
    parser.add_argument("--concurrency", type=int, action="append", default=None, help="concurrent clients (default: 1 and 8)")
    parser.add_argument("--requests", type=int, default=2000, help="at most this many requests per cell")
    parser.add_argument("--seconds", type=float, default=8.0, help="at most this long per cell")
    parser.add_argument("--server-threads", type=int, default=8, help="worker threads of the embedded server")
    args = parser.parse_args(argv)
    batches = args.batch or [1, 32]
    concurrencies = args.concurrency or [1, 8]

    with tempfile.TemporaryDirectory(prefix="serving-bench-") as scratch:
        workdir = Path(scratch)
        model_dir = args.model_dir
        if model_dir is None:
            from tests.fixtures.tiny_model import export_tiny_model

            model_dir = export_tiny_model(workdir / "export", weight=1.0)
        targets: list[tuple[str, str, str]] = []  # (label, transport, url)
        server = None
        if args.target:
            for spec in args.target:
                kind, _, url = spec.partition("=")
                if kind not in TRANSPORTS or not url:
                    parser.error(f"--target {spec!r}: expected KIND=URL with KIND in {sorted(TRANSPORTS)}")
                targets.append((f"{kind} {url}", kind, url))
        else:
            server, rest_url, grpc_target = start_embedded_server(model_dir, workdir / "models", args.server_threads)
            targets = [
                ("in-process SavedModel", "inprocess", str(model_dir)),
                ("embedded server, REST", "rest", rest_url),
                ("embedded server, gRPC", "grpc", grpc_target),
            ]
        try:
            print(f"model: {model_dir}   cpus: {os.cpu_count()}   budget per cell: {args.requests} requests or {args.seconds:.0f} s")
            header = f"{'target':<28}{'batch':>6}{'clients':>8}{'requests':>10}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'ex/s':>10}{'errors':>8}"
            print(header)
            print("-" * len(header))
            for label, kind, url in targets:
                for batch in batches:
                    inputs = taxi_inputs(batch)
                    factory = TRANSPORTS[kind](url, MODEL_NAME, inputs)
                    for concurrency in concurrencies:
                        result = run_load(factory, concurrency=concurrency, max_requests=args.requests, max_seconds=args.seconds)
                        done = len(result.latencies_ms)
                        rate = done / result.elapsed_s if result.elapsed_s else float("nan")
                        print(
                            f"{label:<28}{batch:>6}{concurrency:>8}{done:>10}{result.percentile(50):>9.2f}"
                            f"{result.percentile(99):>9.2f}{rate:>9.0f}{rate * batch:>10.0f}{result.errors:>8}",
                            flush=True,
                        )
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
