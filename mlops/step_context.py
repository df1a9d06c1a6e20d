"""How a pipeline step is run and recorded: its context, its outcome, the code its outputs depend on,
and the Beam options its job runs with (chosen by the size of its input). mlops/steps.py has the steps.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from core.compressed import DigestingReader, decompressing, refusing_damage
from core.config import BeamChoice, Config
from core.errors import DataError
from core.version import modules_hash
from metadata.recorder import ArtifactRef, PipelineRun, StepRecord, Trigger

if TYPE_CHECKING:
    from beam_jobs.progress import JobProgress

STEP_NAMES = ("ingest", "clean", "validate", "transform", "train", "evaluate", "push")


@dataclasses.dataclass(frozen=True)
class StepContext:
    config: Config
    run: PipelineRun

    @property
    def run_dir(self) -> Path:
        return self.config.pipeline_root / "runs" / self.run.run_id

    def beam_args(self, rows: int | None = None) -> list[str]:
        """The Beam options for a job reading `rows` rows (core.config `Config.beam_options`)."""
        return self.config.pipeline_args(self.config.beam_options(rows))


@dataclasses.dataclass(frozen=True)
class StepOutcome:
    """What a step produced, small enough for Airflow's XCom."""

    step: str
    outputs: dict[str, ArtifactRef]
    results: dict[str, Any]
    cached: bool
    execution_id: int
    seconds: float
    summary: str
    cached_from: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "outputs": {k: v.to_json() for k, v in self.outputs.items()},
            "results": self.results,
            "cached": self.cached,
            "cached_from": self.cached_from,
            "execution_id": self.execution_id,
            "seconds": self.seconds,
            "summary": self.summary,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "StepOutcome":
        return cls(
            step=value["step"],
            outputs={k: ArtifactRef.from_json(v) for k, v in value["outputs"].items()},
            results=dict(value["results"]),
            cached=bool(value["cached"]),
            execution_id=int(value["execution_id"]),
            seconds=float(value["seconds"]),
            summary=str(value["summary"]),
            cached_from=value.get("cached_from"),
        )


def open_run(
    config: Config,
    run_id: str,
    trigger: Trigger = Trigger("manual"),
    airflow_dag_id: str = "",
    airflow_run_id: str = "",
) -> StepContext:
    """Connects to ML Metadata and opens (or re-opens) the run's context."""
    from metadata.openlineage import step_events
    from metadata.store import connect

    store = connect(config.metadata)
    run = PipelineRun(store, config.pipeline_name, run_id, trigger, airflow_dag_id, airflow_run_id,
                      events=step_events(config.pipeline_root, config.pipeline_name))
    return StepContext(config, run)


def outcome_of(step: str, record: StepRecord, started: float, summary: str) -> StepOutcome:
    if record.cached:
        run_of = record.cached_run_id
        summary = f"reused the outputs of execution {record.cached_from}{f' ({run_of})' if run_of else ''}: same inputs, parameters and code. {summary}"
    return StepOutcome(
        step=step,
        outputs=dict(record.outputs),
        results=dict(record.results),
        cached=record.cached,
        execution_id=record.execution_id,
        seconds=round(time.time() - started, 2),
        summary=summary,
        cached_from=record.cached_from,
    )


# The modules doing each step's work: with what they import, the code its outputs depend on.
STEP_MODULES: dict[str, tuple[str, ...]] = {
    "ingest": ("beam_jobs.ingest", "beam_jobs.served_source", "mlops.production_source"),
    "clean": ("beam_jobs.clean",),
    "validate": ("beam_jobs.statistics", "validation.validate", "validation.report", "validation.rejected"),
    "transform": ("beam_jobs.transform", "beam_jobs.training_order"),
    "train": ("trainer.train", "beam_jobs.training_order"),
    "evaluate": ("trainer.evaluate",),
}


# The files driving the steps: mlops/steps.py (the steps) and this one (how each is run and recorded).
STEP_DRIVERS = ("mlops.steps", "mlops.step_context")


def step_code(*modules: str) -> str:
    """What a step's outputs depend on besides its inputs and parameters: the modules doing its work
    (with every project module they import) and the files driving them. Code elsewhere (the
    gateway, monitoring, the DAGs) can change without invalidating a cached step."""
    return modules_hash(modules) + modules_hash(STEP_DRIVERS, follow_imports=False)


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def sha256_and_lines(path: Path) -> tuple[str, int]:
    """The stored file's sha256 and the number of lines it holds (decompressed when its name says so;
    a last line without a newline counts), in one read."""
    digest, lines, last = hashlib.sha256(), 0, b"\n"
    with path.open("rb") as stored, refusing_damage(str(path)):
        hashed = io.BufferedReader(DigestingReader(stored, digest), 1 << 20)
        handle = decompressing(hashed, str(path))
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
        for _ in iter(lambda: hashed.read(1 << 20), b""):
            pass  # bytes after the compressed stream's end are the file's too
    return digest.hexdigest(), lines + (last != b"\n")


def rows_of(artifact: ArtifactRef) -> int | None:
    """The row count an upstream step recorded on its output (None when it recorded none)."""
    rows = artifact.properties.get("rows")
    return int(rows) if isinstance(rows, (int, float)) and not isinstance(rows, bool) else None


def job_progress(job: str, *artifacts: ArtifactRef, rows: int | None = None) -> JobProgress | None:
    """What a Beam job reading `artifacts` (or `rows` rows) prints while it runs
    (beam_jobs/progress.py); None when an artifact recorded no row count."""
    from beam_jobs.progress import JobProgress

    split_rows: dict[str, int] = {}
    if rows is None:
        counts = [rows_of(artifact) for artifact in artifacts]
        if not counts or None in counts:
            return None
        rows = sum(counts)  # type: ignore[arg-type]
        for artifact in artifacts:
            for name, value in artifact.properties.items():
                split = name.removeprefix("rows_")
                if split != name and isinstance(value, int) and not isinstance(value, bool):
                    split_rows[split] = split_rows.get(split, 0) + value
    return JobProgress(job, rows, split_rows=split_rows)


def beam_options(ctx: StepContext, rows: int | None) -> tuple[BeamChoice, list[str]]:
    """The Beam options for a job reading `rows` rows, and the args to run it with. The choice is
    recorded as a result, not a parameter: options change how a job runs, never what it writes, so
    outputs made with other options are reused."""
    choice = ctx.config.beam_options(rows)
    return choice, ctx.config.pipeline_args(choice)


def beam_note(record: StepRecord) -> str:
    chosen = json_value(record.results.get("beam_options"))
    return f" [Beam: {chosen['why']}]" if isinstance(chosen, Mapping) and chosen.get("why") else ""


def utc(day: dt.date | dt.datetime | str) -> dt.datetime:
    if isinstance(day, str):
        try:
            day = dt.datetime.fromisoformat(day)
        except ValueError as err:
            raise DataError(f"dates must be YYYY-MM-DD (or ISO 8601), got {day!r}") from err
    if not isinstance(day, dt.datetime):
        day = dt.datetime(day.year, day.month, day.day)
    return day if day.tzinfo else day.replace(tzinfo=dt.timezone.utc)


def json_value(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
