"""Shared plumbing for the Beam programs: command-line flags, staged (atomic) outputs, run summaries.

Flags: Beam builds ONE argparse parser from every imported `PipelineOptions` subclass
(`PipelineOptions.get_all_options`), so two jobs that both declare `--input` make every pipeline
in that process fail with "conflicting option string" as soon as both modules are imported (the
Airflow task or a test imports several jobs). `add_job_argument` registers a flag once and lets the
next job reuse it, as long as both agree on its type.

Summaries: a job's counts come out of the pipeline as data (one small JSON file), not as runner
metrics, because metrics support differs between runners while a file reads the same everywhere.

Outputs: a job writes everything into a hidden staging folder inside its output directory and only
renames finished folders into place, so a crashed or rejected run never leaves half a split behind
where the next step would read it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems


def add_job_argument(parser: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
    """Adds `flag` to Beam's shared parser unless another job already declared it with the same type."""
    try:
        parser.add_argument(flag, **kwargs)
    except argparse.ArgumentError:
        # argparse keeps no public lookup of declared flags; this mapping has been stable since 3.2.
        existing = parser._option_string_actions.get(flag)  # noqa: SLF001
        wanted_type = kwargs.get("type")
        if existing is None or getattr(existing.type, "__name__", existing.type) != getattr(
            wanted_type, "__name__", wanted_type
        ):
            raise TypeError(
                f"{flag} is declared by two Beam jobs with different types "
                f"({getattr(existing, 'type', None)!r} and {wanted_type!r}); they share one parser"
            ) from None


def configure_cli_logging() -> None:
    """INFO for the job, WARNING for Beam: its runners forward every worker log line at INFO."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)


def iso_date(text: str) -> str:
    """argparse `type=` for YYYY-MM-DD flags: validates early, keeps a string so options stay serializable."""
    try:
        return datetime.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def utc_midnight(day: str) -> datetime.datetime:
    """The start of a YYYY-MM-DD day in UTC, the form the window arguments take."""
    return datetime.datetime.combine(datetime.date.fromisoformat(day), datetime.time(), tzinfo=datetime.timezone.utc)


def require_flags(job: str, values: dict[str, Any]) -> None:
    """Flags cannot be argparse-`required`: Beam parses every job's flags for every pipeline."""
    missing = [flag for flag, value in values.items() if value in (None, "")]
    if missing:
        raise SystemExit(f"{job}: missing required flag(s) {', '.join(missing)}")


def refuse_existing_outputs(output_dir: Path, names: Iterable[str]) -> None:
    """Beam overwrites shards by name, so stale shards of an older run would mix into a new one: refuse."""
    present = [name for name in names if (output_dir / name).exists()]
    if present:
        raise FileExistsError(
            f"{output_dir} already holds {', '.join(present)} from an earlier run; "
            "use a new output directory (each run writes its own partition)"
        )


def make_staging_dir(output_dir: Path, job: str) -> Path:
    """A hidden folder inside output_dir, so the final renames stay on one filesystem (atomic)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = output_dir / f".staging-{job}-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    return staging


def promote(staging: Path, output_dir: Path, names: Sequence[str]) -> None:
    """Renames finished folders from staging into output_dir (each rename is atomic)."""
    for name in names:
        source = staging / name
        if source.exists():
            os.replace(source, output_dir / name)


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Writes JSON to a temp file beside `path`, then renames it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(payload, out, indent=2, sort_keys=True)
            out.write("\n")
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


class WriteSummaryFn(beam.DoFn):
    """Writes the single element it gets (a run summary) as JSON: temp file, then rename.

    One DoFn instead of WriteToText: a one-line file does not need a sink's four stages, and a
    retried bundle simply rewrites the same content.
    """

    def __init__(self, path: str) -> None:
        self._path = path

    def process(self, summary: Any) -> Iterator[str]:
        temp_path = f"{self._path}.{uuid.uuid4().hex}.tmp"
        with FileSystems.create(temp_path) as out:
            out.write(json.dumps(summary, sort_keys=True).encode("utf-8"))
        FileSystems.rename([temp_path], [self._path])
        yield self._path


def read_summary(path: Path) -> Any:
    if not path.is_file():
        raise RuntimeError(f"{path}: the pipeline finished without writing its summary")
    return json.loads(path.read_text())
