"""Production data as the ingest step's second source: which log files a run reads, and their merge with the CSV.

The ingest step (mlops/steps.py) writes ONE raw examples artifact. With production data on, the
labelled requests that beam_jobs/served_source.py extracts are written beside the CSV rows in the
same `Split-<split>/` folders, as `data-served-*` files (the `data-*` pattern every reader globs),
so clean, validate, transform, train and evaluate read both without knowing there are two.

Lineage: every request-log partition and feedback partition read is registered as an artifact
(`PredictionLog` / `FeedbackLog`, identified by a fingerprint of their part files) and is an input
of the ingest execution, so a new part file is a new input (no cached ingest reuses old data); the
counts, the label policy and who labelled go into the execution's results and the Examples
artifact's properties, where `mlops lineage model` reads them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import shutil
from pathlib import Path
from typing import Any

from core.config import Config
from metadata.recorder import ArtifactRef, PipelineRun
from serving import prediction_log

# Where the served job writes inside the ingest output (then moved into examples/).
SERVED_DIR = "served"
SERVED_FILE_PREFIX = "data-served"


@dataclasses.dataclass(frozen=True)
class ProductionSource:
    """What a run will read from production: resolved before the step, so it is part of the cache key."""

    log_dir: Path
    window_start: dt.datetime
    window_end: dt.datetime
    label_policy: str
    max_share: float
    request_files: tuple[Path, ...]
    feedback_files: tuple[Path, ...]

    def partitions(self) -> list[tuple[str, str, Path, list[Path]]]:
        """(input key, artifact type, partition folder, its part files) for every partition read."""
        return [(key, type_name, partition, part_files)
                for key, type_name, files in (("request_log", "PredictionLog", self.request_files),
                                              ("feedback_log", "FeedbackLog", self.feedback_files))
                for partition, part_files in sorted(_by_partition(files).items())]

    def fingerprints(self) -> dict[str, str]:
        """`requests/date=...` -> fingerprint of its part files: what changes when new traffic or labels arrive."""
        return {f"{partition.parent.name}/{partition.name}": _fingerprint(part_files)
                for _, _, partition, part_files in self.partitions()}

    def parameters(self) -> dict[str, Any]:
        """The ingest step's parameters for this source; `log_fingerprints` is what the retraining
        decision (mlops/retraining.py) compares with the served model's."""
        return {"production_logs": str(self.log_dir), "production_window_start": self.window_start.isoformat(),
                "production_window_end": self.window_end.isoformat(), "label_policy": self.label_policy,
                "max_production_share": self.max_share, "log_fingerprints": self.fingerprints()}


def production_source(config: Config, log_dir: Path | None, now: dt.datetime | None = None) -> ProductionSource | None:
    """The production source of a run, or None: switched off in the config, or no log directory named.

    The window is whole UTC days, `production_window_days` of them up to and including today, so
    runs on the same day over the same files share their inputs.
    """
    data = config.data
    if not data.production_data:
        return None
    if log_dir is None and data.production_logs_dir:
        log_dir = Path(data.production_logs_dir)
        log_dir = log_dir if log_dir.is_absolute() else (config.root / log_dir).resolve()
    if log_dir is None:
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    end = dt.datetime(now.year, now.month, now.day, tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
    start = end - dt.timedelta(days=data.production_window_days)
    if data.production_since:  # e.g. since the served model's training window ended
        start = max(start, dt.datetime.fromisoformat(data.production_since).replace(tzinfo=dt.timezone.utc))
        if start >= end:
            return None  # nothing served since then yet
    log_dir = Path(log_dir).resolve()
    return ProductionSource(
        log_dir, start, end, data.label_policy, data.max_production_share,
        tuple(prediction_log.list_part_files(log_dir / prediction_log.REQUESTS_DIR, start, end)),
        # Feedback for a request arrives after it: every partition from the window's first day on.
        tuple(prediction_log.list_part_files(log_dir / prediction_log.FEEDBACK_DIR, start, None)),
    )


def _by_partition(files: tuple[Path, ...]) -> dict[Path, list[Path]]:
    partitions: dict[Path, list[Path]] = {}
    for path in files:
        partitions.setdefault(path.parent, []).append(path)
    return partitions


def _fingerprint(files: list[Path]) -> str:
    """Part files are written once under unique names: names and sizes identify a partition's content."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path.name}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def register_log_partitions(run: PipelineRun, source: ProductionSource) -> dict[str, list[ArtifactRef]]:
    """One artifact per request-log and feedback partition read: the ingest execution's inputs."""
    inputs: dict[str, list[ArtifactRef]] = {"request_log": [], "feedback_log": []}
    for key, type_name, partition, part_files in source.partitions():
        inputs[key].append(run.register_artifact(type_name, str(partition), {
            "fingerprint": _fingerprint(part_files), "files": len(part_files),
            "partition": partition.name}, identity=("fingerprint",)))
    return inputs


def production_cap(max_share: float, reference_rows: int) -> int:
    """How many production rows the reference rows allow: production / (production + reference) <= max_share."""
    return math.floor(max_share / (1.0 - max_share) * reference_rows)


def add_production_examples(source: ProductionSource, ingest_dir: Path, reference_rows: int, *,
                            hash_buckets: int, eval_buckets: int, beam_args: list[str]) -> dict[str, Any]:
    """Runs the served-source job into `ingest_dir/served/`, moves its examples into `ingest_dir/examples/`
    and returns its summary (what the ingest step records).

    Over the cap, the job runs again keeping the requests whose id hashes below cap/labelled (a
    deterministic thinning, within sampling noise of the cap; one job instead of a global sort).
    """
    from beam_jobs.served_source import extract_served_examples

    def extract(output: Path, keep_fraction: float) -> Any:
        return extract_served_examples(
            source.request_files, source.feedback_files, output, start=source.window_start, end=source.window_end,
            label_policy=source.label_policy, hash_buckets=hash_buckets, eval_buckets=eval_buckets,
            keep_fraction=keep_fraction, beam_args=beam_args)

    cap = production_cap(source.max_share, reference_rows)
    served_dir = ingest_dir / SERVED_DIR
    result = extract(served_dir, 1.0)
    if result.rows_labelled > cap:
        shutil.rmtree(served_dir)
        result = extract(served_dir, max(cap, 1) / result.rows_labelled)
    for split_dir in sorted((served_dir / "examples").glob("Split-*")):
        target = ingest_dir / "examples" / split_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for index, part in enumerate(sorted(split_dir.glob("data-*"))):
            part.rename(target / f"{SERVED_FILE_PREFIX}-{index:05d}{''.join(part.suffixes)}")
    summary = dataclasses.asdict(result)
    summary["cap"] = cap
    summary["log_dir"] = str(source.log_dir)
    return summary


def held_out_pattern(ingest_examples: Path) -> str:
    """The held-out recent labelled traffic of an ingest output: its production rows of the eval split.

    served_source splits by a hash of the request id, and only the train split is analyzed and trained
    on, so these rows are held out of training, deterministically.
    """
    from beam_jobs.example_codec import split_dir

    return str(split_dir(ingest_examples, "eval") / f"{SERVED_FILE_PREFIX}-*")


def summary_line(production: dict[str, Any] | None) -> str:
    """What the ingest step's progress line says about production data (make run shows it)."""
    if not production:
        return "no production data"
    sources = ", ".join(f"{count} by {source}" for source, count in production["by_label_source"].items()) or "none"
    capped = f", {production['rows_capped']} left out by the cap" if production["rows_capped"] else ""
    return (f"{production['rows_labelled']} labelled production rows learned from (policy {production['label_policy']}: "
            f"{sources}) of {production['rows_served']} served, {production['rows_unlabelled']} unlabelled{capped}")
