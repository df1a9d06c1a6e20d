"""The whole training pipeline from one command: ingest -> clean -> validate -> transform -> train
-> evaluate -> push, with a progress line per step. Airflow's `taxi_training` DAG runs the same
step functions one task each.

From `transform_beside_validation_from_rows` cleaned rows on, on a machine with two cores or more,
transform's Beam job starts in a process of its own while validation runs (the second core's
work); the Transform step adopts its output once validation passed, and it is thrown away when
validation fails.

Small inputs run every step in this process (a process per step adds its start-up, ~2.7 s a step
at 150k rows, for memory that does not matter at these sizes). From
`steps_in_own_process_from_rows` rows on, each step after ingest runs in a process of its own, as
Airflow's tasks do: what one step leaves resident after it ends (freed memory the allocators keep,
what TensorFlow keeps per function call) is not carried into the next.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable

from core.config import Config
from core.errors import MlopsError
from metadata.recorder import Trigger, new_run_id
from mlops import steps
from mlops.step_context import rows_of

Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class PipelineResult:
    run_id: str
    outcomes: dict[str, steps.StepOutcome]
    seconds: float

    @property
    def pushed(self) -> steps.StepOutcome | None:
        return self.outcomes.get("push")


class StepProgress:
    """Prints `[n/7] step ...` when a step starts and its summary when it ends."""

    def __init__(self, progress: Progress, total: int = len(steps.STEP_NAMES)) -> None:
        self.progress = progress
        self.total = total
        self.index = 0

    def start(self, name: str) -> float:
        self.index += 1
        self.progress(f"[{self.index}/{self.total}] {name:<9} running ...")
        return time.time()

    def done(self, outcome: steps.StepOutcome, started: float) -> None:
        """The time the run waited for the step, and the step's own when they differ by more than a
        second (a process of its own starting; transform waiting for its job beside validation)."""
        mark = "reused" if outcome.cached else "done"
        waited = time.time() - started
        own = f" ({outcome.seconds:.1f}s in the step)" if waited - outcome.seconds > 1.0 else ""
        self.progress(f"[{self.index}/{self.total}] {outcome.step:<9} {mark} in {waited:.1f}s{own}: {outcome.summary}")

    def failed(self, name: str, started: float, error: BaseException) -> None:
        self.progress(f"[{self.index}/{self.total}] {name:<9} FAILED after {time.time() - started:.1f}s: {error}")


class StepProcessError(MlopsError):
    """A step run in a process of its own ended without a result (killed, or out of memory)."""


StepCall = Callable[..., steps.StepOutcome]


def steps_here(ctx: steps.StepContext) -> StepCall:
    return lambda name, *args, **kwargs: getattr(steps, name)(ctx, *args, **kwargs)


def steps_in_own_processes(config: Config, run_id: str, trigger: Trigger) -> StepCall:
    """Each call runs the step in a new process, which re-opens the run in ML Metadata (as an
    Airflow task does) and ends with the step."""
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing inherited from this one's heap
    log_level = logging.getLogger().level

    def call(name: str, *args: Any, **kwargs: Any) -> steps.StepOutcome:
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            try:
                return pool.submit(_run_step, config, run_id, trigger, log_level, name, args, kwargs).result()
            except BrokenProcessPool as err:
                raise StepProcessError(f"{name}: its process ended without a result (killed, or out of memory?); "
                                       f"run the pipeline again to redo it (finished steps are reused)") from err
    return call


def _log_like_the_command(log_level: int) -> None:
    """A spawned step's logging: the command's level and format (mlops/cli.py)."""
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")


def _run_step(config: Config, run_id: str, trigger: Trigger, log_level: int, name: str, args: tuple,
              kwargs: dict) -> steps.StepOutcome:
    _log_like_the_command(log_level)
    return steps_here(steps.open_run(config, run_id, trigger))(name, *args, **kwargs)


class TransformBesideValidation:
    """Transform's Beam job (steps.prepare_transform) in a spawned process of its own, started while
    validation runs, into a hidden folder of the run: `prepared()` waits for it and gives the folder
    to pass to the Transform step (None if the job did not finish: the step then runs it itself and
    reports its error); `discard()` ends the process if it still runs and removes the folder."""

    def __init__(self, config: Config, cleaned: Any, run_dir: Path) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=".transform-beside-validation-", dir=run_dir))
        spawn = multiprocessing.get_context("spawn")
        self._process = spawn.Process(target=_prepare_transform, args=(config, cleaned, self.folder, logging.getLogger().level),
                                      name="transform-beside-validation", daemon=True)
        self._process.start()

    def prepared(self) -> Path | None:
        self._process.join()
        return self.folder if self._process.exitcode == 0 else None

    def discard(self) -> None:
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        shutil.rmtree(self.folder, ignore_errors=True)


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class BesideValidation:
    """Whether transform's Beam job starts beside validation, and the line that says why (or why not).

    `rows_reached`: clean ran (not reused) and its rows reached the threshold; the CLI prints `reason`
    only then (below it, running in turn is the normal case), Airflow's `prepare_transform` always.
    """

    start: bool
    reason: str
    rows_reached: bool


def transform_beside_validation(config: Config, cleaned: steps.StepOutcome) -> BesideValidation:
    """The rule the CLI pipeline and Airflow's `prepare_transform` task share: from
    `transform_beside_validation_from_rows` cleaned rows on, when clean ran (a reused clean makes a
    reused transform most likely: a job beside validation would be thrown away), on two cores or more."""
    kept = rows_of(cleaned.outputs["cleaned"])
    limit = config.transform_beside_validation_from_rows
    if cleaned.cached:
        return BesideValidation(False, "clean reused an earlier run's output, so transform most likely reuses its own: "
                                       "no Beam job beside validation", False)
    if kept is None:
        return BesideValidation(False, "clean recorded no row count: transform runs its own job after validation", False)
    if kept < limit:
        return BesideValidation(False, f"{kept:,} cleaned rows < transform_beside_validation_from_rows {limit:,}: "
                                       f"transform runs its own job after validation", False)
    reached = f"{kept:,} cleaned rows >= transform_beside_validation_from_rows {limit:,}"
    if usable_cores() < 2:
        return BesideValidation(False, f"{reached}, but this process may use one core: validation and transform run in turn", True)
    return BesideValidation(True, f"{reached}: transform's Beam job starts beside validation", True)


def _prepare_transform(config: Config, cleaned: Any, folder: Path, log_level: int) -> None:
    _log_like_the_command(log_level)
    steps.prepare_transform(config, cleaned, folder)


def run_pipeline(
    config: Config,
    *,
    start: dt.date | str,
    end: dt.date | str,
    csv_path: Path | None = None,
    run_id: str | None = None,
    trigger: Trigger = Trigger("cli"),
    progress: Progress = print,
    production_logs: Path | None = None,
    production_data: bool = True,
) -> PipelineResult:
    """Runs steps 1-7. A failing step raises (nothing after it runs, so nothing is pushed).

    Ingest also reads the labelled production requests of `production_logs` (default: the config's
    data.production_logs_dir) unless `production_data` is False or the config switches it off.
    """
    began = time.time()
    run_id = run_id or new_run_id()
    ctx = steps.open_run(config, run_id, trigger)
    progress(f"pipeline run {run_id} (metadata: {ctx.run.store.description})")
    tracker = StepProgress(progress)
    outcomes: dict[str, steps.StepOutcome] = {}

    def step(name: str, fn: Callable[[], steps.StepOutcome]) -> steps.StepOutcome:
        started = tracker.start(name)
        try:
            outcome = fn()
        except BaseException as err:
            tracker.failed(name, started, err)
            raise
        tracker.done(outcome, started)
        outcomes[name] = outcome
        return outcome

    ingested = step("ingest", lambda: steps.ingest(ctx, Path(csv_path or config.data.csv_path), start, end,
                                                   production_logs=production_logs, production_data=production_data))
    rows = rows_of(ingested.outputs["examples"])
    call = steps_here(ctx)
    if rows is not None and rows >= config.steps_in_own_process_from_rows:
        progress(f"{rows:,} rows >= steps_in_own_process_from_rows {config.steps_in_own_process_from_rows:,}: "
                 f"each step from here on runs in a process of its own")
        call = steps_in_own_processes(config, run_id, trigger)
    cleaned = step("clean", lambda: call("clean", ingested.outputs["examples"]))
    beside: TransformBesideValidation | None = None
    decision = transform_beside_validation(config, cleaned)
    if decision.rows_reached:
        progress(decision.reason)
    if decision.start:
        beside = TransformBesideValidation(config, cleaned.outputs["cleaned"], ctx.run_dir)
    try:
        validated = step("validate", lambda: call(
            "validate", ingested.outputs["examples"], cleaned.outputs["cleaned"], cleaned.outputs["rejected"]))
        transformed = step("transform", lambda: call("transform", cleaned.outputs["cleaned"], validated.outputs["anomalies"],
                                                     prepared=beside.prepared() if beside else None))
    finally:
        if beside is not None:
            beside.discard()
    trained = step("train", lambda: call("train", transformed.outputs["transformed"], transformed.outputs["transform_graph"]))
    evaluated = step("evaluate", lambda: call("evaluate", trained.outputs["model"], cleaned.outputs["cleaned"],
                                              recent=ingested.outputs["examples"]))
    step("push", lambda: call("push", trained.outputs["model"], evaluated.outputs["blessing"]))
    return PipelineResult(run_id, outcomes, round(time.time() - began, 1))
