"""The fault scenarios: each breaks one real part under load, watches what users get, and returns
what happened. The tests under tests/faults/ assert on the outcome; benchmarks/fault_table.py
prints one row per scenario from the same outcome (`.row()`), so the table shows what the tests check.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import requests

from serving.gateway.config import GatewaySettings
from serving.prediction_log import read_prediction_logs
from serving.rollout import GatewayAdminClient
from tests.faults.processes import Answer, Gateway, Load, ModelServerProcess
from tests.fixtures.polling import poll_until
from tests.serving.gateway.helpers import ADMIN_TOKEN, CANARY_VERSION, MODEL, STABLE_VERSION, real_trips, write_model_config

# What the routing policy says each label is served by, in every scenario here.
POLICY_VERSIONS = {"stable": STABLE_VERSION, "canary": CANARY_VERSION}


@dataclasses.dataclass(frozen=True)
class FaultRow:
    """One line of the fault table."""

    fault: str
    when: str
    sent: int
    answered: int  # answered 200
    logged: int | None  # answered requests found in the request log (None: no log involved)
    lost: int | None  # answered but not logged
    recover_s: float | None
    user_saw: str


def _statuses(answers: list[Answer]) -> str:
    counts = collections.Counter(a.status for a in answers)
    return ", ".join(f"{'no answer' if status == 0 else status} x{count}" for status, count in sorted(counts.items()))


def logged_requests(log_dir: Path) -> dict[str, list[int]]:
    """request_id -> its logged instance indexes (duplicates kept, so a double write shows)."""
    frame = read_prediction_logs(log_dir, include_shadow=False)
    return {rid: sorted(int(i) for i in group) for rid, group in frame.groupby("request_id")["instance_index"]}


class LoggedAnswers:
    """For outcomes with `answers` (every Answer) and `logged` (logged_requests of the log dir)."""

    answers: list[Answer]
    logged: dict[str, list[int]]

    @property
    def answered(self) -> dict[str, int]:
        return {a.request_id: a.instances for a in self.answers if a.status == 200}

    @property
    def lost(self) -> list[str]:
        """Answered 200 but not in the log with exactly its instances."""
        return [rid for rid, count in self.answered.items() if self.logged.get(rid) != list(range(count))]


@dataclasses.dataclass
class ModelServerKill(LoggedAnswers):
    """The outcome of `model_server_kill`: every answer, and the moments of the kill and the restart."""

    answers: list[Answer]
    killed_at: float
    relaunched_at: float  # the new model server process was started
    restarted_at: float  # the restarted server answers REST (its versions still loading)
    first_ok_after: float  # the first request sent after the restart that got a 200
    logged: dict[str, list[int]]
    upstream_timeout_s: float

    @property
    def during_outage(self) -> list[Answer]:
        return [a for a in self.answers if self.killed_at <= a.sent_at < self.first_ok_after]

    @property
    def wrong_version(self) -> list[Answer]:
        return [a for a in self.answers if a.status == 200 and POLICY_VERSIONS.get(a.label) != a.version]

    def row(self) -> FaultRow:
        outage = self.during_outage
        slowest = max((a.latency_s for a in outage), default=0.0)
        answered = self.answered
        return FaultRow(
            "model server kill -9 under load (4 clients, canary 30 %)",
            f"after {sum(1 for a in self.answers if a.status == 200 and a.sent_at < self.killed_at)} answers; relaunched "
            f"{self.relaunched_at - self.killed_at:.1f} s later, listening after {self.restarted_at - self.killed_at:.1f} s",
            len(self.answers), len(answered), len(answered) - len(self.lost), len(self.lost),
            self.first_ok_after - self.restarted_at,
            f"during the outage {_statuses(outage)} (slowest {slowest * 1000:.0f} ms, upstream timeout "
            f"{self.upstream_timeout_s:.0f} s); {len(self.wrong_version)} answers from a version the policy did not name")


def model_server_kill(model_root: Path, work: Path, *, clients: int = 4, before: int = 300, outage: float = 2.0,
                      after: int = 300) -> ModelServerKill:
    """The model server `kill -9`ed while `clients` send requests through the gateway (stable 1, canary 2
    at 30 %); restarted on the same ports after `outage` seconds; the load runs on until `after` more
    answers. The gateway is never restarted: it must notice both the death and the return by itself."""
    work.mkdir(parents=True, exist_ok=True)
    config = write_model_config(work / "models.config", model_root, served=[STABLE_VERSION, CANARY_VERSION],
                                stable=STABLE_VERSION, canary=CANARY_VERSION)
    server = ModelServerProcess(config, work / "model_server.stderr").start()
    gateway = None
    try:
        server.wait_available([STABLE_VERSION, CANARY_VERSION])
        gateway = Gateway(server, config, work / "logs", work / "state.json", work / "gateway.stderr")
        GatewayAdminClient(gateway.url, ADMIN_TOKEN).set_canary(MODEL, CANARY_VERSION, 0.3)
        with Load(gateway.url, real_trips(3), clients=clients, prefix="msk") as load:
            poll_until(lambda: load.count() >= before, f"{before} answers before the kill", timeout=120, interval=0.01)
            killed_at = time.monotonic()
            server.kill()
            time.sleep(outage)  # what users get meanwhile is the point: the load keeps going
            relaunched_at = time.monotonic()
            server.start()
            restarted_at = time.monotonic()
            first_ok = poll_until(lambda: min((a.sent_at for a in load.snapshot() if a.status == 200 and a.sent_at >= restarted_at),
                                              default=None), "a 200 after the restart", timeout=180, interval=0.01)
            done = load.count()
            poll_until(lambda: load.count() >= done + after, f"{after} answers after the restart", timeout=120, interval=0.01)
        assert gateway.stop() == 0, "the gateway did not stop cleanly"
        return ModelServerKill(load.snapshot(), killed_at, relaunched_at, restarted_at, first_ok, logged_requests(work / "logs"),
                               GatewaySettings().upstream_timeout_s)
    finally:
        if gateway is not None:
            gateway.stop()
        server.stop()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_bytes(path: Path) -> None:
    path.write_bytes(bytes(b ^ 0xFF for b in path.read_bytes()))


def _data_files(version_dir: Path) -> list[Path]:
    return sorted((version_dir / "variables").glob("variables.data-*"))


# Each breaks a copy of a good version directory the way a dying copy or a bad disk would.
CORRUPTIONS = {
    "empty directory (a copy that died before its first file)": lambda d: [p.unlink() for p in d.rglob("*") if p.is_file()],
    "saved_model.pb cut in half": lambda d: _truncate(d / "saved_model.pb"),
    "variables/ not written yet": lambda d: shutil.rmtree(d / "variables"),
    "variables data cut in half": lambda d: [_truncate(p) for p in _data_files(d)],
    "variables data bytes flipped": lambda d: [_flip_bytes(p) for p in _data_files(d)],
}


@dataclasses.dataclass
class CorruptVersion:
    """What one corrupted version directory did to a model server serving a good version."""

    corruption: str
    version: int
    state: str  # what GetModelStatus says of the corrupted version
    error: str
    served_versions: collections.Counter  # requests answered meanwhile, by the version that answered
    failures: int  # requests that got no 200 meanwhile
    seen_after_s: float  # from the directory appearing to its status saying why

    def row(self) -> FaultRow:
        answered = sum(self.served_versions.values())
        return FaultRow(
            f"corrupt version dir appears: {self.corruption}", f"version {self.version} while version 1 serves",
            answered + self.failures, answered, None, None, None,
            f"all answered by version {', '.join(map(str, self.served_versions))}, {self.failures} failed; "
            f"status {self.state} after {self.seen_after_s:.1f} s: {self.error[:80]}")


def corrupt_versions(model_root: Path, work: Path) -> list[CorruptVersion]:
    """A model server with the default `latest` policy serves version 1; one after another, each of
    CORRUPTIONS appears as the newest version directory (through a rename, as a push or a restore
    would put it there) while requests keep arriving. The server must never load any of them, keep
    answering with version 1, and say in the model status why each is not served."""
    from serving.model_server import start_model_server

    base = work / "base" / MODEL
    base.mkdir(parents=True)
    shutil.copytree(model_root / str(STABLE_VERSION), base / str(STABLE_VERSION))
    server = start_model_server(port=0, rest_api_port=0, model_name=MODEL, model_base_path=base,
                                file_system_poll_wait_seconds=0.1)
    trips = real_trips(3)
    body = json.dumps({"instances": [trip.to_instance() for trip in trips]})  # NaN for missing, as TF Serving reads it
    session = requests.Session()

    def predict() -> list[float] | None:
        answer = session.post(f"{server.rest_url}/v1/models/{MODEL}:predict", data=body, timeout=30)
        return [p["probability"] for p in answer.json()["predictions"]] if answer.ok else None

    def status(version: int) -> dict[str, Any] | None:
        answer = session.get(f"{server.rest_url}/v1/models/{MODEL}/versions/{version}", timeout=30)
        return answer.json()["model_version_status"][0] if answer.ok else None

    outcomes = []
    try:
        by_version = {tuple(predict()): STABLE_VERSION}
        for version, (name, corrupt) in enumerate(CORRUPTIONS.items(), start=STABLE_VERSION + 1):
            staged = work / f"staged-{version}"
            shutil.copytree(model_root / str(CANARY_VERSION), staged)
            corrupt(staged)
            appeared = time.monotonic()
            os.rename(staged, base / str(version))
            served: collections.Counter = collections.Counter()
            failures = 0
            while True:  # requests all along, until the server has judged the new directory
                probabilities = predict()
                if probabilities is None:
                    failures += 1
                else:
                    served[by_version.get(tuple(probabilities), "another version")] += 1
                state = status(version)
                if state is not None and state["state"] in ("AVAILABLE", "END"):
                    break
                if time.monotonic() - appeared > 120:
                    raise AssertionError(f"the server never judged version {version} ({name}): {state}")
            seen = time.monotonic() - appeared
            for _ in range(20):  # and after it
                probabilities = predict()
                served[by_version.get(tuple(probabilities), "another version") if probabilities else "failed"] += 1
            error = state["status"].get("error_message", "").replace(str(base / str(version)), f"<base>/{version}")
            outcomes.append(CorruptVersion(name, version, state["state"], error,
                                           served, failures + served.pop("failed", 0), seen))
        # The control: a complete copy is loaded and serves, so the server did look at each one above.
        good = STABLE_VERSION + len(CORRUPTIONS) + 1
        shutil.copytree(model_root / str(CANARY_VERSION), work / "staged-good")
        os.rename(work / "staged-good", base / str(good))
        poll_until(lambda: (status(good) or {}).get("state") == "AVAILABLE", f"the good version {good}", timeout=120)
        poll_until(lambda: tuple(predict()) not in by_version, f"the good version {good} serving", timeout=30)
        return outcomes
    finally:
        server.stop()


_PUSH_PROGRAM = """
import json, os, sys, time
from pathlib import Path
from serving.push import push_model
go = Path(sys.argv[4])
while not go.exists():  # every pusher is imported and waiting: they start together
    time.sleep(0.001)
result = push_model(Path(sys.argv[1]), Path(sys.argv[2]), "taxi", config_file=Path(sys.argv[3]))
print(json.dumps({"version": result.version, "reused": result.reused}))
"""


@dataclasses.dataclass
class ConcurrentPushes:
    """What `pushers` processes pushing different models at the same moment left behind, round by round."""

    rounds: list[dict[str, Any]]  # per round: source model -> version it got; the config's served versions and labels
    config_problems: list[str]

    def row(self) -> FaultRow:
        pushes = sum(len(r["versions"]) for r in self.rounds)
        distinct = sum(len(set(r["versions"].values())) for r in self.rounds)
        return FaultRow(f"{len(self.rounds[0]['versions'])} pushes at the same moment (real processes)",
                        f"{len(self.rounds)} rounds", pushes, distinct, None, None, None,
                        f"{distinct} distinct versions for {pushes} pushes; models.config problems: {self.config_problems or 'none'}")


def concurrent_pushes(model_root: Path, work: Path, *, pushers: int = 2, rounds: int = 3) -> ConcurrentPushes:
    """`pushers` processes run serving.push.push_model at the same moment, each with a different model
    (copies of the tiny model with their own weights), onto one base path and one models.config."""
    import subprocess
    import sys

    from serving import model_config as mc
    from serving.push import FINGERPRINT_FILE, model_fingerprint
    from tests.faults.processes import ENV, PROJECT_ROOT

    base, config = work / "base", work / "models.config"
    sources = []
    for index in range(pushers * rounds):
        source = work / f"model-{index}"
        shutil.copytree(model_root / str(STABLE_VERSION if index % 2 == 0 else CANARY_VERSION), source)
        # A distinct model each time: same graph, its own fingerprint.
        (source / "variables" / f"pusher-{index}.txt").write_text(f"model {index}\n")
        sources.append(source)
    outcome = ConcurrentPushes([], [])
    for round_number in range(rounds):
        go = work / f"go-{round_number}"
        batch = sources[round_number * pushers:(round_number + 1) * pushers]
        processes = [subprocess.Popen([sys.executable, "-c", _PUSH_PROGRAM, str(source), str(base), str(config), str(go)],
                                      cwd=PROJECT_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for source in batch]
        time.sleep(2.0)  # long enough for each to import; a late one only makes the race milder
        go.touch()
        versions = {}
        for source, process in zip(batch, processes):
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, f"push of {source} failed: {err[-2000:]}"
            versions[source.name] = json.loads(out.strip().splitlines()[-1])["version"]
        parsed = mc.read_model_config(config)  # parses and validates
        served, labels = mc.served_versions(parsed, MODEL), mc.labels(parsed, MODEL)
        on_disk = mc.version_directories(base / MODEL)
        for source in batch:
            version = versions[source.name]
            marker = base / MODEL / str(version) / FINGERPRINT_FILE
            if marker.read_text().strip() != model_fingerprint(source):
                outcome.config_problems.append(f"version {version} does not hold {source.name}")
        if set(on_disk) != set(served):
            outcome.config_problems.append(f"round {round_number}: on disk {on_disk}, models.config serves {served}")
        if labels.get(mc.STABLE_LABEL) not in served:
            outcome.config_problems.append(f"round {round_number}: stable label {labels} not on a served version")
        outcome.rounds.append({"versions": versions, "served": served, "labels": labels})
    return outcome


@dataclasses.dataclass
class GatewayKill:
    """What `gateway_kill` saw: requests answered 200 per round, and the log after the last restart."""

    rounds: list[int]  # answered 200 per round
    answered: dict[str, int]  # request id -> instances, answered 200
    sent: int
    logged: dict[str, list[int]]
    seed: int
    recover_s: list[float]  # per round: from the kill to the restarted gateway's first answer

    @property
    def lost(self) -> list[str]:
        return sorted(rid for rid, count in self.answered.items() if self.logged.get(rid) != list(range(count)))

    @property
    def logged_unanswered(self) -> int:
        """Durable, but in flight at the kill: the answer died with the process (the client saw a reset)."""
        return len(set(self.logged) - set(self.answered))

    def row(self) -> FaultRow:
        return FaultRow(
            "gateway kill -9 under load (8 clients), restart on the same log dir",
            f"{len(self.rounds)} rounds, random moments (after {min(self.rounds)}..{max(self.rounds)} answers)",
            self.sent, len(self.answered), len(self.answered) - len(self.lost), len(self.lost),
            max(self.recover_s),
            f"connection reset for the requests in flight; {self.logged_unanswered} of them logged but unanswered")


def gateway_kill(model_server: Any, model_root: Path, work: Path, *, rounds: int, clients: int = 8,
                 seed: int | None = None) -> GatewayKill:
    """The gateway `kill -9`ed at a random moment of the load, `rounds` times, restarted each time on
    the same log directory (the restart replays the dead one's journal); after the last round a
    clean restart and stop, then the log is read."""
    import random

    work.mkdir(parents=True, exist_ok=True)
    config = write_model_config(work / "models.config", model_root, served=[STABLE_VERSION], stable=STABLE_VERSION, canary=None)
    log_dir, state_file, stderr = work / "logs", work / "state.json", work / "gateway.stderr"
    seed = random.randrange(1 << 30) if seed is None else seed
    chance = random.Random(seed)
    trips = real_trips(3)
    answers: list[Answer] = []
    report, recover = [], []
    killed_at = None
    for round_number in range(rounds):
        gateway = Gateway(model_server, config, log_dir, state_file, stderr)
        load = Load(gateway.url, trips, clients=clients, prefix=f"r{round_number}", stop_on_connection_error=True)
        with load:
            poll_until(lambda: load.count() >= 1, "a first answer", timeout=60, interval=0.005)
            if killed_at is not None:
                recover.append(min(a.sent_at + a.latency_s for a in load.snapshot() if a.status == 200) - killed_at)
            kill_after = chance.randint(10, 400)
            try:
                poll_until(lambda: load.count() >= kill_after, f"{kill_after} answers", timeout=60, interval=0.005)
            finally:
                killed_at = time.monotonic()
                gateway.kill()  # at a random moment of the load: requests are in flight in every stage
        answers.extend(load.snapshot())
        report.append(load.count())
    restarted = Gateway(model_server, config, log_dir, state_file, stderr)  # replays the last round's journal
    assert restarted.stop() == 0, "the restarted gateway did not stop cleanly"
    bad = [a for a in answers if a.status not in (0, 200)]
    assert not bad, f"answers other than 200 under a healthy load: {bad[:5]}"
    return GatewayKill(report, {a.request_id: a.instances for a in answers if a.status == 200}, len(answers),
                       logged_requests(log_dir), seed, recover or [0.0])


@dataclasses.dataclass
class CanaryKill:
    """What the real rollout code (`mlops.airflow.rollout_tasks._canary`) decided when the model server died
    in its first observation window, and whether a promote was possible with the server gone."""

    decision: dict[str, Any]
    printed: str  # what the rollout task said (its Airflow log)
    policy_after: dict[str, Any]
    promote_refused: str  # the gateway's answer to a promote while the server was down ("" if it accepted)
    answers: list[Answer]
    traffic: bool

    def row(self) -> FaultRow:
        ok = sum(1 for a in self.answers if a.status == 200)
        return FaultRow(
            f"model server kill -9 in a canary window ({'4 clients' if self.traffic else 'no traffic'})",
            f"canary at {self.decision.get('share')} %, first window",
            len(self.answers), ok, None, None, None,
            f"rollout {self.decision['decision']}: {'; '.join(self.decision.get('reasons', []))[:110]}; "
            f"promote while down: {self.promote_refused[:60] or 'ACCEPTED'}")


def canary_kill(model_root: Path, work: Path, *, traffic: bool = True, observe_seconds: float = 4.0) -> CanaryKill:
    """Runs the rollout task's canary ramp (25 % then 50 %, `observe_seconds` each) against a real
    gateway and model server, and `kill -9`s the model server as soon as the canary takes traffic."""
    import contextlib
    import io
    import os
    import threading

    from mlops.airflow import rollout_tasks
    from serving.rollout import AdminApiError

    work.mkdir(parents=True, exist_ok=True)
    config = write_model_config(work / "models.config", model_root, served=[STABLE_VERSION, CANARY_VERSION],
                                stable=STABLE_VERSION, canary=None)
    server = ModelServerProcess(config, work / "model_server.stderr").start()
    gateway = None
    printed = io.StringIO()
    result: dict[str, Any] = {}
    try:
        server.wait_available([STABLE_VERSION, CANARY_VERSION])
        gateway = Gateway(server, config, work / "logs", work / "state.json", work / "gateway.stderr")
        admin = GatewayAdminClient(gateway.url, ADMIN_TOKEN)
        params = {"gateway_url": gateway.url, "shares": [25, 50], "observe_seconds": observe_seconds, "min_canary_requests": 20}
        os.environ["MLOPS_GATEWAY_ADMIN_TOKEN"] = ADMIN_TOKEN  # where the rollout task reads it from in Airflow

        def rollout() -> None:
            with contextlib.redirect_stdout(printed):
                result.update(rollout_tasks._canary(params, MODEL, CANARY_VERSION, STABLE_VERSION))

        load = Load(gateway.url, real_trips(3), clients=4, prefix="canary") if traffic else None
        with load if load is not None else contextlib.nullcontext():
            runner = threading.Thread(target=rollout)
            runner.start()
            poll_until(lambda: admin.get_policy(MODEL).get("canary_share", 0) > 0, "the canary taking traffic", timeout=120)
            server.kill()
            runner.join(300)
        refused = ""
        try:
            admin.promote(MODEL, CANARY_VERSION)
        except AdminApiError as err:
            refused = str(err).split(": ", 1)[-1]  # "HTTP <status>: <the gateway's reason>", without the URL
        return CanaryKill(result, printed.getvalue(), admin.get_policy(MODEL), refused,
                          load.snapshot() if load is not None else [], traffic)
    finally:
        os.environ.pop("MLOPS_GATEWAY_ADMIN_TOKEN", None)
        if gateway is not None:
            gateway.stop()
        server.stop()
