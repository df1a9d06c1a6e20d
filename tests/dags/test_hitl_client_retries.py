"""HITLClient.respond when the API server cannot record an answer for a moment: Airflow answers 500
"Database error" when SQLite's write lock stays busy past its wait (seen with the scheduler starting
dozens of mapped review tasks on 2 cores). Airflow cannot be made to do that on demand without
stalling its scheduler, so an HTTP server on loopback answers as it does, call by call."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from mlops.airflow import hitl_client
from mlops.airflow.hitl_client import HITLClient
from mlops.airflow.rest_client import AirflowApiError

DATABASE_ERROR = {"reason": "Database error", "statement": "hidden", "orig_error": "hidden"}


class Scripted:
    """The answers to the PATCH calls, in turn, and the recorded answer a GET returns."""

    def __init__(self, patches: list[tuple[int, dict]], recorded: dict | None = None) -> None:
        self.patches, self.recorded, self.calls = list(patches), recorded or {}, []


@pytest.fixture
def server() -> Iterator[tuple[str, Scripted]]:
    script = Scripted([])

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, document: dict) -> None:
            payload = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:  # /auth/token
            self._answer(201, {"access_token": "jwt"})

        def do_PATCH(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            script.calls.append(("PATCH", body))
            status, document = script.patches.pop(0)
            self._answer(status, {"detail": document} if status >= 400 else document)

        def do_GET(self) -> None:
            script.calls.append(("GET", None))
            self._answer(200, script.recorded)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    finally:
        httpd.shutdown()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(hitl_client.time, "sleep", lambda seconds: None)


def respond(url: str) -> dict:
    return HITLClient(url, "admin", "pw").respond("taxi_review", "run", "review_case.ask", ["big_tipper"], map_index=3)


def test_an_answer_the_server_could_not_record_is_sent_again(server):
    url, script = server
    script.patches = [(500, DATABASE_ERROR), (500, DATABASE_ERROR), (200, {"chosen_options": ["big_tipper"]})]
    assert respond(url) == {"chosen_options": ["big_tipper"]}
    assert [call[0] for call in script.calls] == ["PATCH"] * 3
    assert all(body == {"chosen_options": ["big_tipper"], "params_input": {}} for _, body in script.calls)


def test_a_conflict_after_a_retry_is_this_answer_when_the_recorded_one_is_it(server):
    url, script = server
    script.patches = [(500, DATABASE_ERROR), (409, {"detail": "already answered"})]
    script.recorded = {"chosen_options": ["big_tipper"], "responded_by_user": {"name": "admin"}}
    assert respond(url) == script.recorded
    assert [call[0] for call in script.calls] == ["PATCH", "PATCH", "GET"]


def test_a_conflict_with_another_answer_and_other_errors_are_raised(server):
    url, script = server
    script.patches = [(500, DATABASE_ERROR), (409, {"detail": "already answered"})]
    script.recorded = {"chosen_options": ["not_big_tipper"]}  # somebody else answered first
    with pytest.raises(AirflowApiError) as conflict:
        respond(url)
    assert conflict.value.status == 409
    script.patches, script.calls = [(409, {"detail": "already answered"})], []
    with pytest.raises(AirflowApiError):  # a first try's conflict is not looked into
        respond(url)
    assert [call[0] for call in script.calls] == ["PATCH"]
    script.patches = [(400, {"detail": "unknown option"})]
    with pytest.raises(AirflowApiError) as bad:
        respond(url)
    assert bad.value.status == 400


def test_the_server_busy_for_longer_than_the_tries_is_raised(server):
    url, script = server
    script.patches = [(500, DATABASE_ERROR)] * hitl_client.RESPOND_ATTEMPTS
    with pytest.raises(AirflowApiError) as busy:
        respond(url)
    assert busy.value.status == 500 and len(script.calls) == hitl_client.RESPOND_ATTEMPTS
