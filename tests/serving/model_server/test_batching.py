"""`--enable_batching` on the embedded server: concurrent Predict calls share TensorFlow runs, each caller gets its own rows."""

from __future__ import annotations

import concurrent.futures
import json
import re
from pathlib import Path

import pytest
import requests

from serving.model_server.batching import BatchingOptions, read_batching_parameters
from serving.model_server.server import StartupError, main, start_model_server
from tests.serving.gateway.helpers import MODEL, STABLE_VERSION, real_trips, write_model_config
from tests.fixtures.servers import free_port


def tf_runs(handle) -> int:
    """How many times TensorFlow ran a Predict (TF Serving's runtime_latency count)."""
    text = handle.metrics.exposition().decode()
    match = re.search(r'^:tensorflow:serving:runtime_latency_count\{[^}]*API="Predict"[^}]*\} (\d+)', text, re.M)
    return int(match.group(1)) if match else 0


@pytest.fixture
def batching_server(model_root, tmp_path):
    servers = []

    def start(parameters: str):
        (tmp_path / "batching.config").write_text(parameters)
        config = write_model_config(tmp_path / "models.config", model_root, served=[STABLE_VERSION], stable=STABLE_VERSION, canary=None)
        handle = start_model_server(port=0, rest_api_port=0, model_config_file=config, enable_batching=True,
                                    batching_parameters_file=tmp_path / "batching.config")
        servers.append(handle)
        return handle

    yield start
    for handle in servers:
        handle.stop()


def predict(handle, trips) -> requests.Response:
    body = {"instances": [trip.to_instance() for trip in trips]}
    return requests.post(f"{handle.rest_url}/v1/models/{MODEL}:predict", data=json.dumps(body), timeout=30)


def test_concurrent_calls_share_tensorflow_runs_and_each_caller_gets_its_own_rows(batching_server, reference):
    server = batching_server("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 20000 }\nnum_batch_threads { value: 1 }\n")
    trips = real_trips(40)
    expected = reference(STABLE_VERSION, trips)
    jobs = [(i % 37, 1 + i % 3) for i in range(120)]  # 1-3 trips from different offsets

    def send(job):
        start, size = job
        response = predict(server, trips[start:start + size])
        assert response.status_code == 200, response.text
        return start, [item["probability"] for item in response.json()["predictions"]]

    before = tf_runs(server)
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, jobs))
    for start, probabilities in answers:
        assert probabilities == pytest.approx(expected[start:start + len(probabilities)], abs=1e-6)
    assert tf_runs(server) - before < len(jobs)  # calls were merged


def test_a_call_larger_than_max_batch_size_is_refused_with_tf_servings_message(batching_server):
    server = batching_server("max_batch_size { value: 4 }\n")
    response = predict(server, real_trips(5))
    assert response.status_code == 400
    assert "Task size 5 is larger than maximum input batch size 4" in response.json()["error"]
    assert predict(server, real_trips(4)).status_code == 200


def test_large_batch_splitting_runs_a_large_call_in_pieces(batching_server, reference):
    server = batching_server("max_batch_size { value: 64 }\nenable_large_batch_splitting { value: true }\n"
                             "max_execution_batch_size { value: 4 }\n")
    trips = real_trips(11)
    before = tf_runs(server)
    response = predict(server, trips)
    assert response.status_code == 200, response.text
    assert [p["probability"] for p in response.json()["predictions"]] == pytest.approx(reference(STABLE_VERSION, trips), abs=1e-6)
    assert tf_runs(server) - before == 3  # 4 + 4 + 3 rows


def test_a_run_that_fails_for_one_caller_is_retried_call_by_call_so_only_that_caller_fails():
    import threading

    import numpy as np

    from serving.model_server.batching import BatchScheduler
    from serving.status import ServingError

    scheduler = BatchScheduler(BatchingOptions(max_batch_size=16, batch_timeout_micros=200_000, num_batch_threads=1))
    runs: list[list[int]] = []

    def run(arrays):
        values = arrays["x"].tolist()
        runs.append(values)
        if 13 in values:
            raise ServingError(3, "row 13 is bad")
        return {"y": arrays["x"] * 2}

    results: dict[int, object] = {}

    def call(value: int) -> None:
        try:
            results[value] = scheduler.run("key", {"x": np.array([value, value + 100])}, run)["y"].tolist()
        except ServingError as err:
            results[value] = err.message

    threads = [threading.Thread(target=call, args=(value,)) for value in (11, 12, 13, 14)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        scheduler.stop()
    assert results == {11: [22, 222], 12: [24, 224], 13: "row 13 is bad", 14: [28, 228]}
    assert len(runs[0]) == 8  # the four calls went as one run first
    assert sorted(len(r) for r in runs[1:]) == [2, 2, 2, 2]  # then one by one


def test_a_full_queue_answers_unavailable_at_once():
    import numpy as np

    from serving.model_server.batching import BatchScheduler, _Task
    from serving.status import Code, ServingError

    scheduler = BatchScheduler(BatchingOptions(max_batch_size=2, max_enqueued_batches=1, num_batch_threads=1))
    scheduler.stop()  # no worker takes anything: the queue only fills
    scheduler._submit(_Task("key", {"x": np.zeros(2)}, 2, lambda arrays: arrays))
    with pytest.raises(ServingError) as caught:
        scheduler._submit(_Task("key", {"x": np.zeros(1)}, 1, lambda arrays: arrays))
    assert caught.value.code == Code.UNAVAILABLE and "queue to which this task was submitted is full" in caught.value.message


@pytest.mark.parametrize(
    "text, words",
    [
        ("max_batch_sizes { value: 8 }", ["not a BatchingParameters text proto", "max_batch_sizes"]),
        ("max_batch_size { value: 0 }", ["max_batch_size must be >= 1"]),
        ("max_batch_size { value: 8 }\nenable_large_batch_splitting { value: true }\nmax_execution_batch_size { value: 9 }",
         ["max_execution_batch_size must be in 1..max_batch_size (8)"]),
    ],
)
def test_bad_batching_parameters_stop_the_start_with_the_field_named(tmp_path, model_root, text, words):
    (tmp_path / "batching.config").write_text(text)
    with pytest.raises(StartupError) as caught:
        start_model_server(port=0, rest_api_port=0, model_base_path=model_root, model_name=MODEL,
                           enable_batching=True, batching_parameters_file=tmp_path / "batching.config")
    for word in words:
        assert word in str(caught.value)


def test_defaults_are_tf_servings_and_the_compose_file_parses():
    assert read_batching_parameters(None) == BatchingOptions()
    compose = read_batching_parameters(Path(__file__).resolve().parents[3] / "deploy/tfserving/batching.config")
    assert compose.max_batch_size == 1024 and compose.enable_large_batch_splitting and compose.execution_batch_size == 64


def test_the_flags_are_tensorflow_model_servers(tmp_path, capsys):
    (tmp_path / "batching.config").write_text("max_batch_size { value: 0 }")
    code = main([f"--port={free_port()}", f"--model_base_path={tmp_path}", "--enable_batching=true",
                 f"--batching_parameters_file={tmp_path / 'batching.config'}"])
    assert code == 255  # tensorflow_model_server: main() returns -1
    assert "max_batch_size must be >= 1" in capsys.readouterr().err
