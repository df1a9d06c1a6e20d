"""Serving latency and throughput, side by side in one run: the SavedModel in-process (the floor), the
embedded model server over REST and gRPC, and the gateway in front of it over REST and gRPC.

    .venvs/ml/bin/python benchmarks/gateway_benchmark.py [--requests 2000] [--seconds 10] [--saved-model DIR]

Each scenario (target x examples per request x concurrent clients) stops after `--requests`
requests or `--seconds` seconds, whichever comes first, after a short warm-up. The model server
and the gateway run as their own processes (`python -m serving.model_server`,
`python -m serving.gateway`) on 127.0.0.1, as in production; the load comes from this process
(asyncio: serving.gateway.http_pool for REST, grpc.aio for gRPC), so on a small machine the client's own CPU is part
of every number. The gateway logs every request as it does in production: durably, through its
write-ahead journal (one fdatasync per group of concurrent requests, before the answer). A second
gateway with `log_journal = false` (the log in memory until its Parquet file, as before the
journal) runs beside it, so the table shows the durable log's cost side by side.

Prints a table and the two numbers the issue aims at: what the gateway adds at p50 over the
server it fronts (aim: < 1 ms) and its best throughput (aim: >= 1,000 requests/s), and what the
durable log adds over the memory-only log at p50 (aim: < 0.2 ms). The added
latency comes from paired rounds (model server, then gateway, back to back, `--paired-rounds`
times), because on a shared machine two runs minutes apart can differ by more than 1 ms. The gateway
takes its settings from MLOPS_GATEWAY_* variables as in production, so the same run can be
repeated with, e.g., `MLOPS_GATEWAY_UPSTREAM_MAX_IN_FLIGHT=0` (no merging of concurrent requests)
or `MLOPS_GATEWAY_LOG_FSYNC=false` (the journal written but not fdatasynced before the answer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from tests.fixtures.servers import free_port  # noqa: E402

MODEL = "taxi"
# The gateway with `log_journal = false`: its log is in memory until a Parquet file (lost on kill -9).
MEMORY_LOG = "gateway, memory log"


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values))) - 1))
    return sorted_values[index]


def prepare_models(workdir: Path, saved_model: Path | None) -> Path:
    """A model base path with version 1 (the given SavedModel, or the tiny test model) and its models.config."""
    import shutil

    from serving import model_config as mc

    root = workdir / "models" / MODEL
    if saved_model is not None:
        shutil.copytree(saved_model, root / "1")
    else:
        from tests.fixtures.tiny_model import export_tiny_model

        export_tiny_model(root / "1", weight=1.0)

    def edit(config):
        mc.ensure_model(config, MODEL, root)
        mc.set_served_versions(config, MODEL, [1])
        mc.set_label(config, MODEL, mc.STABLE_LABEL, 1)

    config_file = workdir / "models.config"
    mc.update_model_config(config_file, edit)
    return config_file


def bench_in_process(model_dir: Path, trips: list, count: int) -> dict[int, list[float]]:
    """Latencies (s) of the serving signature called in this process: no network, no JSON."""
    import numpy as np
    import tensorflow as tf

    from transforms.features import SERVING_FEATURES, Kind

    signature = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    dtypes = {Kind.FLOAT: np.float32, Kind.INT: np.int64, Kind.STRING: object}
    results = {}
    for batch in (1, 32):
        rows = [trip.to_instance() for trip in trips[:batch]]
        inputs = {f.name: tf.constant(np.array([row[f.name] for row in rows], dtype=dtypes[f.kind])) for f in SERVING_FEATURES}
        for _ in range(20):
            signature(**inputs)
        latencies = []
        for _ in range(count):
            started = time.perf_counter()
            signature(**inputs)
            latencies.append(time.perf_counter() - started)
        results[batch] = latencies
    return results


def start_process(args: list[str], env: dict[str, str], ready_prefixes: tuple[str, ...]) -> tuple[subprocess.Popen, list[str]]:
    """Starts a server process and returns it with the start-up lines that start with `ready_prefixes`."""
    process = subprocess.Popen([sys.executable, *args], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    lines = []
    for prefix in ready_prefixes:
        while True:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"{args[1]} exited before it was ready (code {process.wait()})")
            if line.startswith(prefix):
                lines.append(line.strip())
                break
    return process, lines


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), to price each request in CPU."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def merged_calls(gateway_rest: str) -> tuple[float, float]:
    """(requests, model-server calls) the gateway's upstream merging has carried so far, from its /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{gateway_rest}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples
              if sample.name.startswith("mlops_gateway_upstream_call_requests_")}
    return values.get("mlops_gateway_upstream_call_requests_sum", 0.0), values.get("mlops_gateway_upstream_call_requests_count", 0.0)


def stop_process(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def run_rest(url: str, body: bytes, clients: int, limit: int, seconds: float) -> tuple[list[float], float]:
    # serving.gateway.http_pool, the gateway's own lean keep-alive client: a heavier client (aiohttp's costs
    # ~2x the CPU per request) would take its share of the 2 cores from the servers it measures.
    from serving.gateway.http_pool import HttpPool

    base, path = url.split("/v1/", 1)
    pool = HttpPool(base, max_idle=clients, connect_timeout_s=5.0)
    latencies: list[float] = []
    try:
        async def one() -> None:
            status, _ = await pool.request("POST", "/v1/" + path, body, 30.0)
            if status != 200:
                raise RuntimeError(f"{url}: HTTP {status}")

        return await _drive(one, clients, limit, seconds, latencies)
    finally:
        await pool.close()


async def run_grpc(target: str, request, clients: int, limit: int, seconds: float) -> tuple[list[float], float]:
    import grpc

    from serving.tensor_protos import serving_apis

    latencies: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = serving_apis().prediction_service_pb2_grpc.PredictionServiceStub(channel)

        async def one() -> None:
            await stub.Predict(request, timeout=30)

        return await _drive(one, clients, limit, seconds, latencies)


def run_target(protocol: str, address: str, body: bytes, request, clients: int, limit: int,
               seconds: float) -> tuple[list[float], float]:
    """Latencies (s) and wall time of one load run against a REST base URL or a gRPC target."""
    if protocol == "REST":
        return asyncio.run(run_rest(f"{address}/v1/models/{MODEL}:predict", body, clients, limit, seconds))
    return asyncio.run(run_grpc(address, request, clients, limit, seconds))


async def _drive(one, clients: int, limit: int, seconds: float, latencies: list[float]) -> tuple[list[float], float]:
    """`clients` loops sending one request after another until `limit` requests or `seconds` are done."""
    for _ in range(max(20, clients * 5)):  # warm-up: connections, caches
        await one()
    sent = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal sent
        while sent < limit and time.perf_counter() < deadline:
            sent += 1
            started = time.perf_counter()
            await one()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, time.perf_counter() - started


def paired_added_latency(targets: list[tuple[str, str, str]], trips: list, rounds: int, seconds: float,
                         base: str = "model server", other: str = "gateway") -> dict[tuple[str, int], list[float]]:
    """Per (protocol, examples): the p50 of `other` minus that of `base`, one difference per round.

    Each round runs `base`, then `other`, back to back, so both see the same
    machine: on a shared 2-core machine, load from elsewhere comes and goes over seconds, and one
    long run per target compares two different moments.
    """
    from serving.client import build_predict_request

    address = {(name, protocol): where for name, protocol, where in targets}
    deltas: dict[tuple[str, int], list[float]] = {}
    for batch in (1, 32):
        body = json.dumps({"instances": [trip.to_instance() for trip in trips[:batch]]}).encode()
        request = build_predict_request(trips[:batch], MODEL)
        for protocol in ("REST", "gRPC"):
            for _ in range(rounds):
                p50 = {}
                for name in (base, other):
                    latencies, _wall = run_target(protocol, address[(name, protocol)], body, request, 1, 10**9, seconds)
                    p50[name] = percentile(sorted(latencies), 0.5)
                deltas.setdefault((protocol, batch), []).append(p50[other] - p50[base])
            print(f"  done: paired rounds {other} vs {base}, {protocol} batch={batch}", file=sys.stderr, flush=True)
    return deltas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per scenario (upper bound)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per scenario (upper bound)")
    parser.add_argument("--saved-model", type=Path, default=None, help="a SavedModel with the project's signatures (default: the tiny test model)")
    parser.add_argument("--paired-rounds", type=int, default=5,
                        help="rounds of server-then-gateway runs (1 client) behind the 'gateway adds' numbers")
    parser.add_argument("--paired-seconds", type=float, default=2.0, help="seconds per run in each paired round")
    args = parser.parse_args(argv)

    from serving.client import build_predict_request
    from tests.serving.gateway.helpers import real_trips

    trips = real_trips(32)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as temp:
        workdir = Path(temp)
        config_file = prepare_models(workdir, args.saved_model)
        floor = bench_in_process(workdir / "models" / MODEL / "1", trips, min(args.requests, 2000))
        for batch, latencies in floor.items():
            latencies.sort()
            rows.append(("SavedModel in-process", "-", batch, 1, percentile(latencies, 0.5), percentile(latencies, 0.99),
                         len(latencies) / sum(latencies), None, None, None))

        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        server, lines = start_process(
            ["-m", "serving.model_server", f"--port={free_port()}", f"--rest_api_port={free_port()}", "--host=127.0.0.1",
             f"--model_config_file={config_file}", "--model_config_file_poll_wait_seconds=5"],
            env, ("Running gRPC ModelServer at", "Exporting HTTP/REST API at"))
        server_grpc = lines[0].split(" at ")[1].split()[0]
        server_rest = "http://" + lines[1].split("at:")[1].split()[0]
        gateways: dict[str, subprocess.Popen] = {}
        try:
            gateway_env = {**env, "MLOPS_GATEWAY_MODEL_SERVER_REST": server_rest, "MLOPS_GATEWAY_MODEL_SERVER_GRPC": server_grpc,
                           "MLOPS_GATEWAY_MODEL_CONFIG_FILE": str(config_file), "MLOPS_GATEWAY_REST_PORT": "0",
                           "MLOPS_GATEWAY_GRPC_PORT": "0"}
            targets = [("model server", "REST", server_rest), ("model server", "gRPC", server_grpc)]
            rest_of = {}
            for name, journal in ((MEMORY_LOG, "false"), ("gateway", "true")):
                folder = workdir / name.replace(" ", "-").replace(",", "")
                gateways[name], lines = start_process(["-m", "serving.gateway"], {
                    **gateway_env, "MLOPS_GATEWAY_LOG_DIR": str(folder / "logs"), "MLOPS_GATEWAY_STATE_FILE": str(folder / "state.json"),
                    "MLOPS_GATEWAY_LOG_JOURNAL": journal}, ("gateway: REST",))
                words = lines[0].split()
                rest_of[name] = words[2]
                targets += [(name, "REST", words[2]), (name, "gRPC", words[4])]
            for batch in (1, 32):
                body = json.dumps({"instances": [trip.to_instance() for trip in trips[:batch]]}).encode()
                request = build_predict_request(trips[:batch], MODEL)
                for clients in (1, 8):
                    for name, protocol, address in targets:
                        gateway = gateways.get(name)
                        processes = (server, gateway) if gateway is not None else (server,)
                        cpu_before = {p.pid: cpu_seconds(p.pid) for p in processes}
                        merged_before = merged_calls(rest_of[name]) if gateway is not None else None
                        latencies, wall = run_target(protocol, address, body, request, clients, args.requests, args.seconds)
                        latencies.sort()
                        # CPU per request (warm-up included in both counts): what each process pays, whatever the load.
                        total = len(latencies) + max(20, clients * 5)
                        cpu = {p.pid: (cpu_seconds(p.pid) - cpu_before[p.pid]) / total for p in processes}
                        per_call = None
                        if gateway is not None:
                            carried, calls = (after - before for after, before in zip(merged_calls(rest_of[name]), merged_before))
                            per_call = carried / calls if calls else 1.0
                        rows.append((name, protocol, batch, clients, percentile(latencies, 0.5), percentile(latencies, 0.99),
                                     len(latencies) / wall, cpu[server.pid], cpu[gateway.pid] if gateway is not None else None,
                                     per_call))
                        print(f"  done: {name} {protocol} batch={batch} clients={clients}", file=sys.stderr, flush=True)
            paired = paired_added_latency(targets, trips, args.paired_rounds, args.paired_seconds)
            durable = paired_added_latency(targets, trips, args.paired_rounds, args.paired_seconds, base=MEMORY_LOG)
        finally:
            for gateway in gateways.values():
                stop_process(gateway)
            stop_process(server)

    print()
    print(f"{'target':<22} {'proto':<5} {'examples':>8} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9} "
          f"{'server CPU ms/req':>18} {'gateway CPU ms/req':>19} {'req/upstream call':>18}")
    for name, protocol, batch, clients, p50, p99, throughput, server_cpu, gateway_cpu, per_call in rows:
        server_text = f"{server_cpu * 1e3:.2f}" if server_cpu is not None else "-"
        gateway_text = f"{gateway_cpu * 1e3:.2f}" if gateway_cpu is not None else "-"
        per_call_text = f"{per_call:.1f}" if per_call is not None else "-"
        print(f"{name:<22} {protocol:<5} {batch:>8} {clients:>7} {p50 * 1e3:>8.2f} {p99 * 1e3:>8.2f} {throughput:>9.0f} "
              f"{server_text:>18} {gateway_text:>19} {per_call_text:>18}")
    print("(req/upstream call: client requests per model-server call; above 1 the gateway merged concurrent requests,"
          " see serving/gateway/upstream_batching.py; MLOPS_GATEWAY_UPSTREAM_MAX_IN_FLIGHT=0 turns merging off)")
    print()
    by_key = {(r[0], r[1], r[2], r[3]): r for r in rows}
    for (protocol, batch), deltas in paired.items():
        deltas = sorted(deltas)
        print(f"gateway adds at p50 ({protocol}, {batch} example(s), 1 client): {statistics.median(deltas) * 1e3:+.2f} ms "
              f"(aim: < 1 ms; median of {len(deltas)} paired rounds, range {deltas[0] * 1e3:+.2f} to {deltas[-1] * 1e3:+.2f})")
    for (protocol, batch), deltas in durable.items():
        deltas = sorted(deltas)
        print(f"durable log adds at p50 ({protocol}, {batch} example(s), 1 client): {statistics.median(deltas) * 1e3:+.2f} ms "
              f"(aim: < 0.2 ms; median of {len(deltas)} paired rounds, range {deltas[0] * 1e3:+.2f} to {deltas[-1] * 1e3:+.2f})")
    print("durable log vs memory log, side by side (p50 / p99 ms):")
    for (name, protocol, batch, clients), row in by_key.items():
        if name == "gateway":
            memory = by_key[(MEMORY_LOG, protocol, batch, clients)]
            print(f"  {protocol:<5} {batch:>2} example(s) {clients} client(s): durable {row[4] * 1e3:.2f} / {row[5] * 1e3:.2f}"
                  f"   memory {memory[4] * 1e3:.2f} / {memory[5] * 1e3:.2f}")
    best = max((r for r in rows if r[0] == "gateway"), key=lambda r: r[6])
    print(f"gateway best throughput: {best[6]:.0f} requests/s ({best[1]}, {best[2]} example(s), {best[3]} clients) "
          f"(aim: >= 1,000 requests/s; {os.cpu_count()} CPUs shared by client, gateway and model server)")
    for protocol in ("REST", "gRPC"):
        row = by_key[("gateway", protocol, 1, 8)]
        print(f"gateway's own CPU per request ({protocol}, 1 example, 8 clients): {row[8] * 1e3:.2f} ms "
              f"-> about {1 / row[8]:.0f} requests/s per core for the gateway alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
