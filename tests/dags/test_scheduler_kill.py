"""The Airflow scheduler killed in the middle of `taxi_training` (issue 16, section 2).

Airflow's parts run as separate processes (api-server, scheduler, dag-processor, triggerer, each in
its own session, as `mlops.airflow.celery_cluster.start_parts` starts them) with the LocalExecutor
and SQLite, as `airflow standalone` runs them. While a step of a triggered `taxi_training` runs,
the scheduler's whole process group gets SIGKILL: the scheduler, its LocalExecutor workers and the
task supervisors. The task runner (Airflow puts it in a process group of its own) and the ML
process it started are not signalled; they are orphaned and lose the supervisor that heartbeats
for them. Then a new scheduler starts, as an operator or a process manager would start it.
What the orphans do next is Airflow's: the runner's logs and requests go over sockets to the dead
supervisor, so the runner ends at its next log line with its ML process (seen: 1.5-2 s after the
kill while clean reports progress), or, when the step is quiet until its end, the ML process
finishes the step.

What holds: the run ends (success, or failed with a reason in the failed task's log); the new
scheduler resets the dead one's running task instance (`orphaned_tasks_check_interval`) and the
interrupted step is tried again under a new try number, while the steps that had finished are not
rerun; a second run with the same params reuses every step (the task logs say "<step>: reused",
and MLMD records CACHED executions); no execution is left RUNNING. An orphaned ML process that
finishes its step beside the retry (seen: two COMPLETE executions of the step) writes its own temp
directory renamed into place, so the outputs are whole either way. The orphans end by themselves;
every process started here (orphans too, found by their session) is ended at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from mlops.airflow.celery_cluster import start_parts
from mlops.airflow.launcher import (ADMIN_USER, AirflowLayout, admin_password, airflow_env, base_url,
                                    wait_until_healthy)
from mlops.airflow.rest_client import AirflowClient
from tests.dags.conftest import PROJECT_ROOT, run_in_ml, write_config, write_trips_sample
from tests.dags.test_airflow_live import free_port
from tests.dags.test_celery_executor import wait_for

pytestmark = pytest.mark.slow

STEPS = ("ingest", "clean", "validate", "transform", "train", "evaluate", "push")
# A small sample over the whole span of the data; train long enough that a kill can land in a step.
CONF = {"start": "2013-01-01", "end": "2017-01-01", "train_steps": 1500}
ROW_FILE_ENV = "MLOPS_FAULT_ROW_FILE"
HEARTBEAT_TIMEOUT = 30  # seconds without a task heartbeat before the scheduler fails the try (default 300)


def session_members(session_id: int) -> list[int]:
    """Every live process of a session: what a process group kill left behind (Airflow moves task
    runners into their own process group, not their own session)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session_id and fields[0] != "Z":
                members.append(int(stat.parent.name))
    return members


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]


def orphans_of_a_kill(session_id: int, killed_group: int) -> list[str]:
    """The command lines of the session's live processes outside the killed group: what a SIGKILL of
    that group does not signal, so orphans (the task runner, in its own group, and its ML process)."""
    orphans = []
    for pid in session_members(session_id):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2]) != killed_group:
                orphans.append(command_line(pid))
    return orphans


def is_task_runner(command_line: str) -> bool:
    """Airflow's task runner names itself after its task instance; its supervisor, in the scheduler's
    group, says the executor too ("airflow worker -- LocalExecutor: ...")."""
    return command_line.startswith("airflow worker -- ") and "LocalExecutor" not in command_line


def group_alive(group: int) -> bool:
    """The group has a live process (its leader, when it is our child, is reaped first: a zombie counts for killpg)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(group, os.WNOHANG)
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@dataclasses.dataclass
class SchedulerKill:
    config: Path
    run_id: str
    rerun_id: str
    victim: str  # the task that was running when the scheduler died
    finished_before: list[str]  # steps already successful at the kill
    orphaned: list[str]  # the killed session's processes outside the killed group at the kill: not signalled
    left_running: list[str]  # of those, what was still alive once the killed group was gone
    state: str
    rerun_state: str
    tries: dict[str, list[tuple[int, str]]]  # task -> [(try number, state)] of the killed run
    failure_lines: list[str]  # the failing task's explain_failure line, if the run failed
    rerun_logs: dict[str, list[str]]
    orphans_after_run: list[int]
    executions: list[dict[str, str]]  # every MLMD execution after the rerun, in order: type, state
    timings: dict[str, float]


    def reused(self) -> list[str]:
        return [step for step, lines in self.rerun_logs.items() if any(f"{step}: reused in" in line for line in lines)]

    def row(self) -> dict[str, object]:
        """The fault table's row (benchmarks/fault_table.py: FaultRow's fields; "sent" = steps, "answered" = succeeded)."""
        victim_tries = ", ".join(f"try {n} {state}" for n, state in self.tries.get(self.victim, []))
        return {"fault": "Airflow scheduler SIGKILL (its process group), LocalExecutor",
                "when": f"during {self.victim} of taxi_training, {self.timings['killed_after']:.0f} s into the run",
                "sent": len(STEPS), "answered": sum(1 for s in STEPS if self.tries.get(s, [(0, "")])[-1][1] == "success"),
                "logged": None, "lost": None, "recover_s": self.timings["run_finished_after_kill"],
                "user_saw": f"run {self.state} ({self.victim}: {victim_tries}); a new scheduler restarted it; "
                            f"rerun {self.rerun_state}, reused {self.reused()}; MLMD: "
                            f"{', '.join(e['type'] + ' ' + e['state'] for e in self.executions)}"}


def airflow_db_rows(home: Path, sql: str, *params) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(home / "airflow.db", timeout=30)) as db:
        return db.execute(sql, params).fetchall()


@pytest.fixture(scope="module")
def scheduler_kill(tmp_path_factory: pytest.TempPathFactory) -> SchedulerKill:
    root = tmp_path_factory.mktemp("scheduler_kill")
    config = write_config(root)
    write_trips_sample(root / "trips.csv", 3000)
    port = free_port()
    layout = AirflowLayout(root=PROJECT_ROOT, home_override=root / "airflow_home")
    base = {**os.environ, "MLOPS_CONFIG": str(config)}
    base.pop("AIRFLOW_HOME", None)  # the conftest's home is not this Airflow's
    env = airflow_env(layout, port, base)
    env.update({
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        # The new scheduler looks for the dead one's task instances every 10 s (default 300).
        "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
        # Only the triggered runs: no rollout after push, no hourly monitoring.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    })
    airflow = layout.airflow_bin / "airflow"
    groups = start_parts(airflow, PROJECT_ROOT, layout.home, env, port, workers=0)
    sessions = set(groups.values())
    try:
        wait_until_healthy(port, 900, lambda: all(group_alive(g) for g in groups.values()), progress=print)
        client = AirflowClient(base_url(port), ADMIN_USER, admin_password(layout))
        client.wait_for_dag("taxi_training", timeout=600)
        client.set_paused("taxi_training", False)
        conf = {**CONF, "csv_path": str(root / "trips.csv")}
        began = time.monotonic()
        run_id = client.trigger("taxi_training", conf)["dag_run_id"]

        def states(of_run: str) -> dict[str, str]:
            return {ti["task_id"]: ti["state"] for ti in client.task_instances("taxi_training", of_run)}

        def a_step_still_running_after_a_success():
            """A step after ingest that is still running a moment after it was seen running, with its
            task runner alive: in the middle of its work. The moment is short: on a 3,000-row file
            clean, validate and train each take only a few seconds, so a fixed wait would often miss
            the step it waited on."""
            now = states(run_id)
            running = [t for t in STEPS if now.get(t) == "running"]
            if not running or now.get("ingest") != "success":
                return None
            time.sleep(1.5)  # the ML process is importing or working
            if states(run_id).get(running[0]) != "running":
                return None
            return running[0] if any(map(is_task_runner, orphans_of_a_kill(groups["scheduler"], groups["scheduler"]))) else None

        victim = wait_for(a_step_still_running_after_a_success, "a step running after ingest succeeded", timeout=1800)
        now = states(run_id)
        assert now.get(victim) == "running", f"{victim} ended before the kill: {now}"
        finished_before = [t for t in STEPS if now.get(t) == "success"]
        scheduler = groups["scheduler"]
        orphaned = orphans_of_a_kill(scheduler, scheduler)
        os.killpg(scheduler, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: not group_alive(scheduler), "the scheduler's process group to die", timeout=60, interval=0.5)
        left_running = [command_line(pid) for pid in session_members(scheduler)]
        time.sleep(10)  # the DB still says "running": nobody is left who would change it
        with (layout.home / "scheduler-restarted.log").open("ab") as log:
            restarted = subprocess.Popen([str(airflow), "scheduler"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=PROJECT_ROOT, start_new_session=True)
        groups["scheduler"] = restarted.pid
        sessions.add(restarted.pid)

        def run_state(of_run: str):
            state = client.get_run("taxi_training", of_run)["state"]
            return state if state in ("success", "failed") else None

        state = wait_for(lambda: run_state(run_id), "the killed run to finish", timeout=2400, interval=3)
        finished_at = time.monotonic()
        tries: dict[str, list[tuple[int, str]]] = {}
        for task, number, ti_state in airflow_db_rows(
                layout.home, "SELECT task_id, try_number, state FROM task_instance_history WHERE run_id = ? "
                "UNION ALL SELECT task_id, try_number, state FROM task_instance WHERE run_id = ?", run_id, run_id):
            tries.setdefault(task, []).append((number, ti_state))
        tries = {task: sorted(set(rows)) for task, rows in tries.items()}
        failure_lines = []
        if state == "failed":
            for ti in client.task_instances("taxi_training", run_id):
                if ti["state"] == "failed":
                    failure_lines += [line for line in client.task_log("taxi_training", run_id, ti["task_id"], ti["try_number"])
                                      if f"Task {ti['task_id']} of run" in line]
        # The orphaned task runner finishes its step (or dies on its broken supervisor pipe) by itself.
        orphans = session_members(scheduler)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not session_members(scheduler), "the orphans of the killed scheduler to end", timeout=300)
        orphans_after_run = session_members(scheduler)

        rerun_id = client.trigger("taxi_training", conf)["dag_run_id"]
        rerun_state = wait_for(lambda: run_state(rerun_id), "the rerun to finish", timeout=1800, interval=3)
        rerun_logs = {ti["task_id"]: client.task_log("taxi_training", rerun_id, ti["task_id"], ti["try_number"])
                      for ti in client.task_instances("taxi_training", rerun_id) if ti["try_number"]}
        executions = run_in_ml(
            """
            import json, sys
            from core.config import load_config
            from metadata.store import connect
            store = connect(load_config(sys.argv[1]).metadata)
            types = {t.id: t.name for t in store.get_execution_types()}
            print(json.dumps([{"type": types[e.type_id], "state": e.State.Name(e.last_known_state)}
                              for e in sorted(store.get_executions(), key=lambda e: e.id)]))
            """, str(config))
        timings = {"killed_after": killed_at - began, "run_finished_after_kill": finished_at - killed_at,
                   "rerun": time.monotonic() - finished_at}
        outcome = SchedulerKill(config, run_id, rerun_id, victim, finished_before, orphaned, left_running, state, rerun_state, tries,
                                failure_lines, rerun_logs, orphans_after_run, executions, timings)
        if os.environ.get(ROW_FILE_ENV):  # benchmarks/fault_table.py reads it
            Path(os.environ[ROW_FILE_ENV]).write_text(json.dumps(outcome.row()))
        print(f"\nscheduler kill: victim {victim}, finished before {finished_before}, run {state}, tries {tries}, "
              f"orphaned by the kill {orphaned}, of those alive once the scheduler's group was gone {left_running}, still alive when the run ended {orphans}, "
              f"timings {json.dumps({k: round(v) for k, v in timings.items()})}")
        return outcome
    finally:
        for group in groups.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not any(group_alive(g) for g in groups.values()), "Airflow to stop", timeout=90, interval=1)
        for session in sessions:  # whatever SIGTERM did not end, orphans included
            for pid in session_members(session):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_the_killed_run_ends_and_says_why_if_it_failed(scheduler_kill):
    assert scheduler_kill.state in ("success", "failed")
    if scheduler_kill.state == "failed":
        assert scheduler_kill.failure_lines, "the run failed without an explain_failure line in the failed task's log"
    # The kill lands while the step's task runner is alive and leaves it unsignalled. Whether it is
    # still alive a moment later is the runner's own affair (see the module's docstring).
    assert any(map(is_task_runner, scheduler_kill.orphaned)), ("the kill was meant to orphan the running task, not end it",
                                                               scheduler_kill.orphaned)


def test_the_interrupted_step_is_tried_again_and_the_finished_ones_are_not(scheduler_kill):
    tries = scheduler_kill.tries
    for step in scheduler_kill.finished_before:
        assert tries[step] == [(1, "success")], (step, tries[step])
    victim_tries = tries[scheduler_kill.victim]
    assert len(victim_tries) >= 2 and victim_tries[0][0] == 1, victim_tries
    if scheduler_kill.state == "success":
        assert {step: tries[step][-1][1] for step in STEPS} == dict.fromkeys(STEPS, "success"), tries


def test_the_orphaned_task_ends_by_itself(scheduler_kill):
    assert scheduler_kill.orphans_after_run == []


def test_a_rerun_reuses_every_finished_step(scheduler_kill):
    assert scheduler_kill.rerun_state == "success"
    finished = [s for s in STEPS if scheduler_kill.state == "success" or s in scheduler_kill.finished_before]
    for step in finished:
        if step == "push":
            continue  # push says "already pushed as" (below)
        assert any(f"{step}: reused in" in line for line in scheduler_kill.rerun_logs[step]), (step, scheduler_kill.rerun_logs[step][-15:])
    cached = {e["type"] for e in scheduler_kill.executions if e["state"] == "CACHED"}
    assert len(cached) >= len([s for s in finished if s != "push"]), scheduler_kill.executions


def test_no_execution_is_left_running_and_the_orphan_recorded_its_step_whole_or_not_at_all(scheduler_kill):
    states = [(e["type"], e["state"]) for e in scheduler_kill.executions]
    assert not [e for e in states if e[1] == "RUNNING"], states
    # The orphaned try's ML process may finish its step beside the retry: both record it, each output
    # directory renamed into place whole (mlops.steps: atomic_directory), never a mix.
    victim_type = scheduler_kill.victim.capitalize()
    assert [state for kind, state in states if kind == victim_type][:2] in (["COMPLETE", "COMPLETE"], ["FAILED", "COMPLETE"],
                                                                          ["COMPLETE", "CACHED"]), states
