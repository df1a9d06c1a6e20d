"""The whole training pipeline in one process: ingest -> clean -> validate -> transform -> train
-> evaluate -> push, with a progress line per step. Airflow's `taxi_training` DAG runs the same
step functions one task each."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path
from typing import Callable

from core.config import Config
from metadata.recorder import Trigger, new_run_id
from mlops import steps

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

    def done(self, outcome: steps.StepOutcome) -> None:
        mark = "reused" if outcome.cached else "done"
        self.progress(f"[{self.index}/{self.total}] {outcome.step:<9} {mark} in {outcome.seconds:.1f}s: {outcome.summary}")

    def failed(self, name: str, started: float, error: BaseException) -> None:
        self.progress(f"[{self.index}/{self.total}] {name:<9} FAILED after {time.time() - started:.1f}s: {error}")


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
        tracker.done(outcome)
        outcomes[name] = outcome
        return outcome

    ingested = step("ingest", lambda: steps.ingest(ctx, Path(csv_path or config.data.csv_path), start, end,
                                                   production_logs=production_logs, production_data=production_data))
    cleaned = step("clean", lambda: steps.clean(ctx, ingested.outputs["examples"]))
    validated = step("validate", lambda: steps.validate(
        ctx, ingested.outputs["examples"], cleaned.outputs["cleaned"], cleaned.outputs["rejected"]))
    transformed = step("transform", lambda: steps.transform(ctx, cleaned.outputs["cleaned"], validated.outputs["anomalies"]))
    trained = step("train", lambda: steps.train(
        ctx, transformed.outputs["transformed"], transformed.outputs["transform_graph"]))
    evaluated = step("evaluate", lambda: steps.evaluate(ctx, trained.outputs["model"], cleaned.outputs["cleaned"],
                                                        recent=ingested.outputs["examples"]))
    step("push", lambda: steps.push(ctx, trained.outputs["model"], evaluated.outputs["blessing"]))
    return PipelineResult(run_id, outcomes, round(time.time() - began, 1))
