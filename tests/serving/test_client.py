"""The TF Serving client: typed rows from features.py, REST and gRPC against real servers, retries and
timeouts against servers that stall or fail, and `mlops predict`."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import math
import threading
from pathlib import Path

import aiohttp
import grpc
import pytest
from aiohttp import web

from core.errors import DataError
from serving.client import (
    BadPredictionRequest,
    GrpcPredictionClient,
    RestPredictionClient,
    ServerUnavailable,
    TaxiTrip,
    read_trips_csv,
)
from serving.tensor_protos import serving_apis
from tests.serving.gateway.helpers import CANARY_VERSION, STABLE_VERSION, TAXI_CSV, real_trips
from transforms import features
from transforms.features import SERVING_FEATURES, Kind

# --- the typed row --------------------------------------------------------------------------------


def test_taxi_trip_fields_come_from_the_features_module():
    fields = dataclasses.fields(TaxiTrip)
    assert tuple(f.name for f in fields) == features.SERVING_COLUMNS
    kinds = {Kind.FLOAT: float, Kind.INT: int, Kind.STRING: str}
    for field, feature in zip(fields, SERVING_FEATURES):
        assert field.type == (kinds[feature.kind] | None) and field.default is None


def test_taxi_trip_checks_types_and_turns_missing_into_sentinels_or_null():
    trip = TaxiTrip(fare=12, trip_start_month=5, trip_start_hour=19, trip_start_day=6, trip_start_timestamp=1400269500,
                    payment_type="Cash", dropoff_latitude=math.nan)
    assert trip.fare == 12.0 and isinstance(trip.fare, float)  # an int is a valid float
    assert trip.dropoff_latitude is None  # NaN is the float sentinel for missing
    instance = trip.to_instance()
    for feature in SERVING_FEATURES:
        if getattr(trip, feature.name) is None:
            expected = features.missing_value(feature.kind)
            value = instance[feature.name]
            assert (math.isnan(value) if feature.kind is Kind.FLOAT else value == expected), feature.name
    assert trip.to_instance(missing="null")["company"] is None
    with pytest.raises(DataError, match="TaxiTrip.trip_start_hour must be int"):
        TaxiTrip(trip_start_hour="19")
    with pytest.raises(DataError, match="TaxiTrip.fare must be a finite number"):
        TaxiTrip(fare=math.inf)
    with pytest.raises(DataError, match=r"unknown features \['tips'\]"):
        TaxiTrip.from_mapping({"fare": 1.0, "tips": 2.0})


def test_a_compressed_csv_gives_the_plain_ones_trips_and_a_cut_one_is_refused(tmp_path):
    import bz2
    import gzip

    with TAXI_CSV.open("rb") as handle:
        data = b"".join(handle.readline() for _ in range(301))
    (tmp_path / "day.csv").write_bytes(data)
    (tmp_path / "day.csv.gz").write_bytes(gzip.compress(data))
    (tmp_path / "day.csv.bz2").write_bytes(bz2.compress(data))
    plain = list(read_trips_csv(tmp_path / "day.csv"))
    assert len(plain) == 300
    assert list(read_trips_csv(tmp_path / "day.csv.gz")) == plain == list(read_trips_csv(tmp_path / "day.csv.bz2"))
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(data)[:5000])
    with pytest.raises(DataError, match=r"cut\.csv\.gz: not a whole gzip file"):
        list(read_trips_csv(tmp_path / "cut.csv.gz"))


def test_csv_rows_parse_with_line_and_column_in_errors(tmp_path):
    rows = list(read_trips_csv(TAXI_CSV, limit=50))
    assert len(rows) == 50 and all(key is None for _, key in rows)
    assert rows[0][0].payment_type == "Credit Card" and rows[0][0].pickup_latitude is None  # '' is missing

    with TAXI_CSV.open(newline="") as handle:
        header = next(csv.reader(handle))
        lines = [next(handle) for _ in range(3)]
    bad = tmp_path / "bad.csv"
    broken = lines[1].replace(lines[1].split(",")[1], "twelve", 1)  # the fare column
    bad.write_text(",".join(header) + "\n" + lines[0] + broken + lines[2])
    with pytest.raises(DataError, match=r"bad.csv:3: column 'fare'"):
        list(read_trips_csv(bad))
    short = tmp_path / "short.csv"
    short.write_text("fare,payment_type\n1.0,Cash\n")
    with pytest.raises(DataError, match=r"missing columns \['pickup_community_area'"):
        list(read_trips_csv(short))
    with pytest.raises(DataError, match="request key column 'rider'"):
        list(read_trips_csv(TAXI_CSV, key_column="rider"))
    keyed = list(read_trips_csv(TAXI_CSV, limit=2, key_column="trip_start_timestamp"))
    assert [key for _, key in keyed] == [str(trip.trip_start_timestamp) for trip, _ in keyed]


# --- against real servers ---------------------------------------------------------------------------


def test_rest_and_grpc_clients_agree_with_the_model_directly_and_through_the_gateway(model_server, start_gw, reference):
    trips = real_trips(8)
    expected = reference(STABLE_VERSION, trips)
    gateway = start_gw()
    with RestPredictionClient(gateway.url) as rest, GrpcPredictionClient(gateway.grpc_target) as rpc:
        for client in (rest, rpc):
            result = client.predict(trips, request_key="rider-1")
            assert [p.probability for p in result.predictions] == pytest.approx(expected, abs=1e-6)
            assert result.model_version == STABLE_VERSION and result.label == "stable" and result.automation == "full"
            assert {p.decision for p in result.predictions} <= {"big_tipper", "not_big_tipper"}
            assert result.request_id and result.attempts == 1
    # Straight to the model server (no gateway): the sentinels are what TF Serving expects.
    with RestPredictionClient(model_server.rest_url) as rest, GrpcPredictionClient(model_server.grpc_target) as rpc:
        for client in (rest, rpc):
            result = client.predict(trips, version=CANARY_VERSION)
            assert [p.probability for p in result.predictions] == pytest.approx(reference(CANARY_VERSION, trips), abs=1e-6)
            assert all(p.decision is None for p in result.predictions)


def test_a_rejected_request_is_not_retried(start_gw):
    gateway = start_gw()
    with RestPredictionClient(gateway.url, "rocket") as client:
        with pytest.raises(BadPredictionRequest, match="rocket") as caught:
            client.predict(real_trips(1))
    assert caught.value.status == 404
    with GrpcPredictionClient(gateway.grpc_target, "rocket", attempts=3) as client:
        with pytest.raises(BadPredictionRequest, match="NOT_FOUND"):
            client.predict(real_trips(1))


class FlakyServer:
    """A real HTTP server that stalls, fails or rejects its first requests as scripted, then forwards to `upstream`."""

    def __init__(self, upstream: str, script: list[str]) -> None:
        self.upstream = upstream
        self.script = list(script)
        self.seen = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, request: web.Request) -> web.Response:
        self.seen += 1
        action = self.script.pop(0) if self.script else "forward"
        body = await request.read()
        if action == "stall":
            await asyncio.sleep(5)
        if action == "503":
            return web.json_response({"error": "overloaded"}, status=503)
        async with aiohttp.ClientSession() as session:
            async with session.post(self.upstream + request.path, data=body, headers={"Content-Type": "application/json"}) as answer:
                return web.Response(status=answer.status, body=await answer.read(), content_type="application/json")

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


@pytest.fixture
def flaky(model_server):
    servers: list[FlakyServer] = []

    def make(script: list[str]) -> FlakyServer:
        servers.append(FlakyServer(model_server.rest_url, script))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


def test_rest_client_retries_stalls_and_503s_then_answers(flaky, reference):
    trips = real_trips(2)
    server = flaky(["stall", "503"])
    with RestPredictionClient(server.url, timeout=0.5, attempts=3, backoff_seconds=0.01) as client:
        result = client.predict(trips, version=STABLE_VERSION)
    assert result.attempts == 3 and server.seen == 3
    assert [p.probability for p in result.predictions] == pytest.approx(reference(STABLE_VERSION, trips), abs=1e-6)


def test_rest_client_gives_up_after_its_attempts(flaky):
    server = flaky(["stall"] * 5)
    with RestPredictionClient(server.url, timeout=0.3, attempts=2, backoff_seconds=0.01) as client:
        with pytest.raises(ServerUnavailable, match="2 attempts failed; last: no answer within 0.3s"):
            client.predict(real_trips(1))
    assert server.seen == 2
    with RestPredictionClient("http://127.0.0.1:9", attempts=2, backoff_seconds=0.01) as client:
        with pytest.raises(ServerUnavailable, match="connection failed"):
            client.predict(real_trips(1))


class _StallingPredictionService:
    """A real gRPC PredictionService whose Predict never answers in time; counts the calls."""

    def __init__(self) -> None:
        self.calls = 0
        apis = serving_apis()
        outer = self

        class Servicer(apis.prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):  # noqa: N802 - gRPC method name
                outer.calls += 1
                threading.Event().wait(1.0)
                return apis.predict_pb2.PredictResponse()

        from concurrent import futures

        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        apis.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


def test_grpc_client_retries_deadlines_and_unavailable():
    stalling = _StallingPredictionService()
    try:
        with GrpcPredictionClient(f"127.0.0.1:{stalling.port}", timeout=0.3, attempts=3, backoff_seconds=0.01) as client:
            with pytest.raises(ServerUnavailable, match="3 attempts failed; last: DEADLINE_EXCEEDED"):
                client.predict(real_trips(1))
        assert stalling.calls == 3
    finally:
        stalling.server.stop(0)
    with GrpcPredictionClient("127.0.0.1:9", timeout=1.0, attempts=2, backoff_seconds=0.01) as client:
        with pytest.raises(ServerUnavailable, match="UNAVAILABLE"):
            client.predict(real_trips(1))


# --- mlops predict ----------------------------------------------------------------------------------


def test_mlops_predict_scores_csv_rows_through_the_gateway(start_gw, reference, capsys, tmp_path):
    from mlops.cli import main

    gateway = start_gw()
    code = main(["predict", "--csv", str(TAXI_CSV), "--url", gateway.url, "--limit", "6",
                 "--request-key-column", "trip_start_timestamp"])
    assert code == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["row"] for line in lines] == list(range(6))
    assert [line["probability"] for line in lines] == pytest.approx(reference(STABLE_VERSION, real_trips(6)), abs=1e-6)
    assert all(line["decision"] in ("big_tipper", "not_big_tipper") and line["model_version"] == STABLE_VERSION for line in lines)
    assert "scored 6 rows" in captured.err

    code = main(["predict", "--csv", str(TAXI_CSV), "--grpc", gateway.grpc_target, "--limit", "4", "--batch-size", "3"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["instance_index"] for line in lines] == [0, 1, 2, 0]

    bad = tmp_path / "bad.csv"
    bad.write_text(Path(TAXI_CSV).read_text().splitlines()[0] + "\n" + ",".join(["x"] * 18) + "\n")
    assert main(["predict", "--csv", str(bad), "--url", gateway.url]) == 2
    assert "bad.csv:2: column" in capsys.readouterr().err
