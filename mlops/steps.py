"""The pipeline steps, each a plain function that runs one package's job and records it in MLMD.

Every step here:
- takes a `StepContext` (config + the pipeline run it belongs to) and its input artifacts,
- writes below `<pipeline_root>/runs/<run_id>/<step>/` through a temp directory renamed into
  place (a reader never sees half an output),
- records an execution with its parameters, code version, results, input and output events,
- reuses an earlier execution's outputs when inputs, parameters and code are the same, and says so.

Airflow tasks call these functions one per task; `mlops.pipeline` calls them in one process.
Heavy libraries are imported inside the functions so importing this module stays cheap.

The Beam steps (ingest, clean, validate, transform) each run with the Beam options chosen by the
size of their own input and record which and why (`beam_options` in mlops/step_context.py, which
also holds the context, outcome and code digests every step shares; importable from here too).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

from core.atomic import atomic_directory, write_json
from core.config import Config, shipped_file
from core.errors import DataError, ModelNotBlessedError, RejectedRowsError, SchemaAnomaliesError
from core.input_files import csv_files
from metadata.recorder import ArtifactRef, StepRecord
# Re-exported: callers import these from here (mlops.steps.open_run, StepOutcome, step_code, ...).
from mlops.step_context import (  # noqa: F401
    STEP_MODULES, STEP_NAMES, StepContext, StepOutcome, beam_note, beam_options, file_sha256, job_progress, json_value,
    open_run, outcome_of, rows_of, sha256_and_lines, step_code, utc,
)

# `from mlops.steps import _utc` (mlops/cli.py) from before the split.
_utc = utc


def register_csv(ctx: StepContext, csv_path: Path) -> tuple[ArtifactRef, int]:
    """Records the CSV, or the folder of CSVs `csv_path` names, as a RawData artifact, after
    checking the shipped file's checksum; and its data rows (its lines but the headers), counted
    while the checksum reads the files: no second read. A quoted newline inside a field counts as a
    row here, which is close enough for choosing Beam options and showing progress.

    A folder of several files is one artifact: the folder, with the sha256 of its files' `sha256sum`
    listing (name order) and their names: the same files are the same data, and a re-run's cache
    hit, wherever the folder is."""
    files = [path.resolve() for path in csv_files(csv_path)]
    digests = [sha256_and_lines(path) for path in files]  # the compressed bytes' checksums, the lines inside them
    rows = sum(max(0, lines - 1) for _, lines in digests)
    if len(files) > 1:
        listing = "".join(f"{sha256}  {path.name}\n" for path, (sha256, _) in zip(files, digests))
        properties = {"sha256": hashlib.sha256(listing.encode("utf-8")).hexdigest(),
                      "files": json.dumps([path.name for path in files])}
        return ctx.run.register_artifact("RawData", str(Path(csv_path).resolve()), properties, identity=("sha256",)), rows
    csv_path, (sha256, _) = files[0], digests[0]  # a folder holding one CSV is read as that CSV
    # The checksum is the shipped file's: a user's own CSV (in the config or on the command line) is not checked against it.
    shipped = shipped_file("csv_path")
    expected = ctx.config.data.expected_sha256
    if csv_path == shipped and expected and sha256 != expected:
        raise DataError(
            f"{csv_path}: sha256 {sha256} does not match the shipped data's {expected} (data.expected_sha256); "
            "the file was modified or truncated: restore it with git checkout, or, to train on your own "
            "trips, put them in another file and set data.csv_path to it"
        )
    return ctx.run.register_artifact("RawData", str(csv_path), {"sha256": sha256}, identity=("sha256",)), rows


def ingest(
    ctx: StepContext,
    csv_path: Path,
    start: dt.date | dt.datetime | str,
    end: dt.date | dt.datetime | str,
    production_logs: Path | None = None,
    production_data: bool = True,
) -> StepOutcome:
    """CSV -> tf.Example splits for the window [start, end), plus the labelled production requests
    (mlops/production_source.py) unless switched off here or in the config."""
    from mlops.production_source import add_production_examples, production_source, register_log_partitions, summary_line

    started = time.time()
    start_utc, end_utc = utc(start), utc(end)
    if end_utc <= start_utc:
        raise DataError(f"the window is empty: --end {end_utc:%Y-%m-%d} is not after --start {start_utc:%Y-%m-%d}")
    raw, csv_rows = register_csv(ctx, csv_path)
    data = ctx.config.data
    production = production_source(ctx.config, production_logs) if production_data else None
    logs = register_log_partitions(ctx.run, production) if production else {}
    parameters = {
        "window_start": start_utc.isoformat(),
        "window_end": end_utc.isoformat(),
        "hash_buckets": data.hash_buckets,
        "eval_buckets": data.eval_buckets,
        "max_unparseable_fraction": data.max_unparseable_fraction,
        **(production.parameters() if production else {}),
    }
    with ctx.run.step("Ingest", {"raw_data": raw, **logs}, parameters, code_digest=step_code(*STEP_MODULES["ingest"])) as record:
        if not record.cached:
            from beam_jobs.ingest import ingest_csv

            final = ctx.run_dir / "ingest"
            # By the CSV's rows: every row is read and parsed, in the window or not. The production
            # rows (a window of served requests, far fewer) run with the same options.
            beam, beam_args = beam_options(ctx, csv_rows)
            with atomic_directory(final) as out:
                result = ingest_csv(
                    Path(raw.uri),
                    out,
                    start=start_utc,
                    end=end_utc,
                    hash_buckets=data.hash_buckets,
                    eval_buckets=data.eval_buckets,
                    max_unparseable_fraction=data.max_unparseable_fraction,
                    beam_args=beam_args,
                    progress=job_progress("ingest", rows=csv_rows),
                )
                served = add_production_examples(
                    production, out, result.rows_in_window, hash_buckets=data.hash_buckets,
                    eval_buckets=data.eval_buckets, beam_args=beam_args) if production else None
            splits = {k: v + (served["split_counts"][k] if served else 0) for k, v in result.split_counts.items()}
            record.output("examples", "Examples", str(final / "examples"), {
                "split_names": json.dumps(sorted(splits)), "rows": sum(splits.values()),
                "csv_rows": result.rows_in_window, "production_rows": served["rows_labelled"] if served else 0,
                "label_policy": served["label_policy"] if served else None,
                "window_start": parameters["window_start"], "window_end": parameters["window_end"],
                **{f"rows_{k}": v for k, v in splits.items()},
            })
            record.output("rejected", "IngestRejectedRows", str(final / "rejected"), {"rows": result.rows_unparseable})
            record.record(
                rows_read=result.rows_read,
                rows_in_window=result.rows_in_window,
                rows_outside_window=result.rows_outside_window,
                rows_unparseable=result.rows_unparseable,
                split_counts=splits,
                unparseable_by_column=result.unparseable_by_column,
                beam_options=beam.to_json(),
                **({"production": served} if served else {}),
            )
    r = record.results
    return outcome_of("ingest", record, started, (
        f"{r['rows_read']} rows read: {r['rows_in_window']} in the window "
        f"(splits {r['split_counts']}), {r['rows_outside_window']} outside, {r['rows_unparseable']} unparseable; "
        f"{summary_line(r.get('production'))}{beam_note(record)}"
    ))


def clean(ctx: StepContext, examples: ArtifactRef) -> StepOutcome:
    """The Beam cleaning job: duplicates, missing values, impossible values -> rejected with reasons.

    Row-level problems are this step's: it runs before validation, which then judges the rows that
    will train the model and how many were rejected (see `validate`).
    """
    started = time.time()
    with ctx.run.step("Clean", {"examples": examples}, {"policy": "transforms.features"},
                     code_digest=step_code(*STEP_MODULES["clean"])) as record:
        if not record.cached:
            from beam_jobs.clean import clean_examples

            final = ctx.run_dir / "clean"
            beam, beam_args = beam_options(ctx, rows_of(examples))
            with atomic_directory(final) as out:
                result = clean_examples(Path(examples.uri), out, beam_args=beam_args,
                                        progress=job_progress("clean", examples))
            rows_in, kept, rejected = (sum(d.values()) for d in (result.rows_in, result.rows_kept, result.rows_rejected))
            if rows_in != kept + rejected:
                raise DataError(f"clean: rows in {rows_in} != kept {kept} + rejected {rejected}")
            record.output("cleaned", "CleanedExamples", str(final / "cleaned"), {
                "split_names": json.dumps(sorted(result.rows_kept)), "rows": kept,
                **{f"rows_{k}": v for k, v in result.rows_kept.items()},
            })
            record.output("rejected", "RejectedRows", str(final / "rejected"), {"rows": rejected})
            record.record(
                rows_in=rows_in, rows_kept=kept, rows_rejected=rejected,
                rejected_by_reason=result.rejected_by_reason,
                values_clipped=result.values_clipped, values_nulled=result.values_nulled,
                rows_kept_by_split=result.rows_kept, beam_options=beam.to_json(),
            )
    r = record.results
    reasons = r["rejected_by_reason"] if isinstance(r["rejected_by_reason"], dict) else json.loads(r["rejected_by_reason"])
    return outcome_of("clean", record, started, (
        f"rows in {r['rows_in']} = kept {r['rows_kept']} + rejected {r['rows_rejected']} {reasons}{beam_note(record)}"
    ))


def register_schema(ctx: StepContext, schema_path: Path | None = None) -> ArtifactRef:
    """Records the curated schema file (by content) as a Schema artifact."""
    schema_path = Path(schema_path or ctx.config.data.schema_path).resolve()
    if not schema_path.is_file():
        raise DataError(f"{schema_path}: schema file not found (bootstrap one with `mlops schema infer`)")
    return ctx.run.register_artifact("Schema", str(schema_path), {"sha256": file_sha256(schema_path)}, identity=("sha256",))


def validate(ctx: StepContext, examples: ArtifactRef, cleaned: ArtifactRef, rejected: ArtifactRef,
             schema_path: Path | None = None) -> StepOutcome:
    """Judges the data that will train the model: the cleaned rows' TFDV statistics against the
    curated schema, and the share of rows ingest and clean rejected against the config's limits.

    The raw examples' statistics are computed too (in the same Beam pipeline) and recorded as the
    `statistics` output: serving traffic is raw, so they are the drift checks' baseline. Results are
    recorded even when the data fails; the step then raises (SchemaAnomaliesError, RejectedRowsError)
    so the pipeline stops before anything is trained.
    """
    started = time.time()
    schema = register_schema(ctx, schema_path)
    schema_path = Path(schema.uri)
    data = ctx.config.data
    parameters = {"environment": "TRAINING", "max_rejected_share": data.max_rejected_share,
                  "max_rejected_share_by_reason": dict(sorted(data.max_rejected_share_by_reason.items())),
                  "previous_data_check": data.previous_data_check}
    _check_reasons(data.max_rejected_share_by_reason)
    inputs = {"examples": examples, "cleaned": cleaned, "rejected": rejected, "schema": schema}
    previous = _served_model_statistics(ctx, cleaned) if data.previous_data_check != "off" else None
    if previous is not None:
        inputs["previous_statistics"] = previous
    with ctx.run.step("Validate", inputs, parameters, code_digest=step_code(*STEP_MODULES["validate"])) as record:
        if not record.cached:
            from beam_jobs.statistics import generate_statistics_of
            from validation.validate import validate_statistics

            final = ctx.run_dir / "validate"
            # By the raw examples' rows: the cleaned ones, read in the same pipeline, are a subset.
            beam, beam_args = beam_options(ctx, rows_of(examples))
            with atomic_directory(final) as out:
                generate_statistics_of({"raw": (Path(examples.uri), out / "statistics"),
                                        "cleaned": (Path(cleaned.uri), out / "cleaned_statistics")},
                                       beam_args=beam_args, progress=job_progress("validate", examples, cleaned))
                result = validate_statistics(out / "cleaned_statistics", schema_path, out / "anomalies",
                                             previous_statistics_dir=Path(previous.uri) if previous else None)
                shares = _rejected_shares(ctx, examples, cleaned)
                rejected_report = shares.format()
                (out / "rejected_share.txt").write_text(rejected_report, encoding="utf-8")
                _render_statistics(out, schema_path, rejected_report)
            count = sum(len(v) for v in result.anomalies_by_split.values())
            splits = json.dumps(sorted(result.anomalies_by_split))
            record.output("statistics", "ExampleStatistics", str(final / "statistics"), {
                "split_names": splits, "report": str(final / "raw_statistics.html"),
            })
            record.output("cleaned_statistics", "ExampleStatistics", str(final / "cleaned_statistics"), {
                "split_names": splits, "report": str(final / "statistics.html"),
            })
            record.output("anomalies", "ExampleAnomalies", str(final / "anomalies"), {"num_anomalies": count})
            record.record(num_anomalies=count, anomalies=result.anomalies_by_split, rejected=shares.to_json(),
                          rejected_report=rejected_report, previous_data_drift=result.drift_by_split,
                          compared_with=previous.uri if previous else "", beam_options=beam.to_json())
    _raise_for_failures(record, schema_path, data.previous_data_check, [Path(examples.uri).parent / "rejected", Path(cleaned.uri).parent / "rejected"])
    shares_json = json_value(record.results.get("rejected")) or {}
    drift = json_value(record.results.get("previous_data_drift")) or {}
    moved = sorted({feature for found in drift.values() for feature in found})
    compared = (f"; moved since the served model's data: {', '.join(moved)}" if moved
                else "; no drift against the served model's data" if record.results.get("compared_with") else "")
    outcome = outcome_of("validate", record, started, (
        f"no anomalies against {schema_path.name}; {shares_json.get('rows_rejected', 0)} of "
        f"{shares_json.get('rows_judged', 0)} rows rejected ({shares_json.get('share', 0):.2%}, limit "
        f"{shares_json.get('limit', data.max_rejected_share):.2%}) {_reason_counts(shares_json)}{compared}{beam_note(record)}"
    ))
    outcome.outputs["schema"] = schema  # recorded as this execution's input; passed on for callers
    return outcome


def _served_model_statistics(ctx: StepContext, cleaned: ArtifactRef) -> ArtifactRef | None:
    """The cleaned statistics of the data the served model trained on, if it was recorded with them
    and that data is not `cleaned` itself (a re-run: comparing data with itself adds nothing, and
    leaving it out keeps the step's inputs the same, so it is reused)."""
    from metadata.lineage import LineageNotFoundError, find_pushed_model
    from metadata.queries import training_chain
    from metadata.recorder import properties_of

    served = current_model(ctx)
    if served is None:
        return None
    try:
        pushed = find_pushed_model(ctx.run.store, ctx.config.serving.model_name, served[0])
    except LineageNotFoundError:  # a model pushed outside the pipeline
        return None
    chain = training_chain(ctx.run.store, pushed)
    statistics = chain.artifact("cleaned_statistics")
    trained_on = chain.artifact("cleaned")
    if trained_on is not None and trained_on.id == cleaned.id:
        return None
    if statistics is None or not Path(statistics.uri).is_dir():
        return None
    return ArtifactRef(statistics.id, "ExampleStatistics", statistics.uri, properties_of(statistics))


def _check_reasons(limits: Mapping[str, float]) -> None:
    from beam_jobs.clean import REJECTION_REASONS
    from beam_jobs.ingest import INGEST_REJECTION_REASONS

    known = (*INGEST_REJECTION_REASONS, *REJECTION_REASONS)
    unknown = sorted(set(limits) - set(known))
    if unknown:
        raise DataError(f"[data] max_rejected_share_by_reason names unknown reason(s) {', '.join(unknown)}; "
                        f"the reasons are: {', '.join(known)}")


def _rejected_shares(ctx: StepContext, examples: ArtifactRef, cleaned: ArtifactRef) -> Any:
    """What ingest and clean rejected (from their result files), against the config's limits."""
    from beam_jobs.clean import RESULT_FILE as CLEAN_RESULT
    from beam_jobs.ingest import RESULT_FILE as INGEST_RESULT
    from validation.rejected import judge_rejected_shares, with_examples

    ingest_dir, clean_dir = Path(examples.uri).parent, Path(cleaned.uri).parent
    ingested = json.loads((ingest_dir / INGEST_RESULT).read_text(encoding="utf-8"))
    cleaning = json.loads((clean_dir / CLEAN_RESULT).read_text(encoding="utf-8"))
    by_reason = dict(ingested["rejected_by_reason"])
    for reason, count in cleaning["rejected_by_reason"].items():
        by_reason[reason] = by_reason.get(reason, 0) + count
    rows_judged = ingested["rows_in_window"] + ingested["rows_unparseable"]
    shares = judge_rejected_shares(rows_judged, by_reason, max_share=ctx.config.data.max_rejected_share,
                                   max_share_by_reason=ctx.config.data.max_rejected_share_by_reason)
    return with_examples(shares, [ingest_dir / "rejected", clean_dir / "rejected"])


def _reason_counts(shares: Mapping[str, Any]) -> dict[str, int]:
    return {reason: found["rows"] for reason, found in (shares.get("by_reason") or {}).items()}


def _raise_for_failures(record: StepRecord, schema_path: Path, previous_data_check: str, rejected_dirs: list[Path]) -> None:
    """Stops the run when validation failed: anomalies first (they concern the rows kept), then the
    rejected share. A cached failed validation fails again, with the same words."""
    anomalies = json_value(record.results.get("anomalies")) or {}
    problems = [f"{split}: {feature}: {text}" for split, found in sorted(anomalies.items()) for feature, text in sorted(found.items())]
    if previous_data_check == "fail":
        drift = json_value(record.results.get("previous_data_drift")) or {}
        problems += [f"{split}: {feature}: {text} (against {record.results.get('compared_with')})"
                     for split, found in sorted(drift.items()) for feature, text in sorted(found.items())]
    if problems:
        report = str(Path(record.outputs["anomalies"].uri))
        raise SchemaAnomaliesError(
            f"validate: the cleaned data breaks the schema {schema_path.name} ({len(problems)} anomalies):\n  "
            + "\n  ".join(problems)
            + f"\nThe anomalies are in {report}. If the data is right and the schema is not (your own data, a "
            f"new value), edit {schema_path} (data.schema_path), or infer one from the data with `mlops schema "
            "infer --csv FILE --start ... --end ... --output FILE` and set data.schema_path to it.",
            report=report,
        )
    shares = json_value(record.results.get("rejected")) or {}
    if shares and not shares.get("ok", True):
        report = record.results.get("rejected_report") or ""
        raise RejectedRowsError(
            "validate: too many rows were rejected for this to be a few bad rows (limits: [data] max_rejected_share "
            f"and max_rejected_share_by_reason):\n{report}"
            f"Every rejected row, with its line and reason, is in {' and '.join(map(str, rejected_dirs))}",
            report=report,
        )


def _render_statistics(out: Path, schema_path: Path, rejected_report: str) -> None:
    """The statistics as pages people read: the cleaned training split judged against the schema
    (anomalous features highlighted, the rejected rows summarized on top), and the raw one."""
    from validation.report import render_statistics_html
    from validation.validate import load_anomalies

    anomalies_file = out / "anomalies" / "Split-train" / "SchemaDiff.pb"
    anomalies = load_anomalies(anomalies_file) if anomalies_file.exists() else None
    render_statistics_html(out / "cleaned_statistics" / "Split-train" / "FeatureStats.pb", out / "statistics.html",
                           schema_path=schema_path, anomalies=anomalies, preface=rejected_report,
                           title="Cleaned data statistics (what the model trains on)")
    render_statistics_html(out / "statistics" / "Split-train" / "FeatureStats.pb", out / "raw_statistics.html",
                           schema_path=schema_path, title="Raw data statistics (before cleaning; the drift baseline)")


# Written beside a transform made before validation judged its input (prepare_transform).
PREPARED_TRANSFORM_FILE = "prepared_transform.json"


def transform(ctx: StepContext, cleaned: ArtifactRef, anomalies: ArtifactRef, prepared: Path | None = None) -> StepOutcome:
    """TF Transform analyze-and-transform on Beam: the transform graph that ships inside the model.

    It takes the validation result as an input: only validated data is transformed, and the model's
    lineage reaches the schema and the checks through this step. `prepared`: a folder where
    `prepare_transform` ran the same job on the same cleaned examples while validation ran; its
    output is adopted instead of running the job again (when it is of this `cleaned` and this code).
    """
    started = time.time()
    if anomalies.properties.get("num_anomalies"):
        raise SchemaAnomaliesError(f"transform: the cleaned examples have {anomalies.properties['num_anomalies']} "
                                   f"schema anomalies (see {anomalies.uri})")
    code_digest = step_code(*STEP_MODULES["transform"])
    # Not a parameter of the step: a transform made with other heads is reused (the trainer reads a
    # split whole when its head is shorter than its budget), so a change of training budget does
    # not transform the data again.
    head_rows = ctx.config.training.budget_rows
    with ctx.run.step("Transform", {"cleaned": cleaned, "anomalies": anomalies},
                     {"preprocessing_fn": "transforms.preprocessing.preprocessing_fn"},
                     code_digest=code_digest) as record:
        if not record.cached:
            from beam_jobs.transform import TRANSFORM_GRAPH_DIR, TRANSFORMED_DIR, transform_examples

            final = ctx.run_dir / "transform"
            beam, beam_args = beam_options(ctx, rows_of(cleaned))
            with atomic_directory(final) as out:
                rows = _adopt_prepared_transform(prepared, cleaned, code_digest, head_rows, out) if prepared else None
                adopted = rows is not None
                if rows is None:
                    rows = transform_examples(Path(cleaned.uri), out, beam_args=beam_args, head_rows=head_rows,
                                              progress=job_progress("transform", cleaned)).rows
            record.output("transform_graph", "TransformGraph", str(final / TRANSFORM_GRAPH_DIR))
            record.output("transformed", "TransformedExamples", str(final / TRANSFORMED_DIR), {
                "split_names": json.dumps(sorted(rows)), "rows": sum(rows.values()), "head_rows": head_rows,
            })
            record.record(rows=rows, head_rows=head_rows, beam_options=beam.to_json(), beside_validation=adopted)
    beside = " (its Beam job ran beside validation)" if record.results.get("beside_validation") else ""
    return outcome_of("transform", record, started,
                      f"transformed rows {record.results.get('rows')}{beside}{beam_note(record)}")


def prepare_transform(config: Config, cleaned: ArtifactRef, out: Path) -> None:
    """Transform's Beam job on `cleaned` into the empty folder `out`, before validation has judged
    that data: nothing is recorded, and nothing reads it until `transform(..., prepared=out)` adopts
    it, which only a pipeline whose validation passed calls (mlops/pipeline.py; Airflow's
    taxi_training: its `prepare_transform` task, mlops/airflow/tasks.py)."""
    from beam_jobs.transform import transform_examples

    choice = config.beam_options(rows_of(cleaned))
    head_rows = config.training.budget_rows
    result = transform_examples(Path(cleaned.uri), out, beam_args=config.pipeline_args(choice), head_rows=head_rows,
                                progress=job_progress("transform beside validation", cleaned))
    write_json(out / PREPARED_TRANSFORM_FILE, {"cleaned": cleaned.uri, "code_digest": step_code(*STEP_MODULES["transform"]),
                                               "head_rows": head_rows, "rows": result.rows})


def _adopt_prepared_transform(prepared: Path, cleaned: ArtifactRef, code_digest: str, head_rows: int,
                              out: Path) -> dict[str, int] | None:
    """Moves a prepared transform's output into `out` and returns its rows, if it was made from
    `cleaned` by this code with heads of `head_rows`; else None (the step runs the job itself)."""
    from beam_jobs.transform import TRANSFORM_GRAPH_DIR, TRANSFORMED_DIR

    try:
        made = json.loads((prepared / PREPARED_TRANSFORM_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if made.get("cleaned") != cleaned.uri or made.get("code_digest") != code_digest or made.get("head_rows") != head_rows:
        return None
    if not all((prepared / name).is_dir() for name in (TRANSFORM_GRAPH_DIR, TRANSFORMED_DIR)):
        return None  # moved out by an earlier try of the step (an Airflow retry): run the job
    for name in (TRANSFORM_GRAPH_DIR, TRANSFORMED_DIR):
        os.replace(prepared / name, out / name)
    return {split: int(count) for split, count in made["rows"].items()}


def train(ctx: StepContext, transformed: ArtifactRef, transform_graph: ArtifactRef) -> StepOutcome:
    """Trains the wide-and-deep model and exports a SavedModel with the TFT graph inside."""
    started = time.time()
    hyperparameters = dataclasses.asdict(ctx.config.training)
    with ctx.run.step("Train", {"transformed": transformed, "transform_graph": transform_graph}, hyperparameters,
                     code_digest=step_code(*STEP_MODULES["train"])) as record:
        if not record.cached:
            from trainer.train import train_model

            final = ctx.run_dir / "train"
            with atomic_directory(final) as out:
                result = train_model(Path(transformed.uri), Path(transform_graph.uri), out, ctx.config.training)
            record.output("model", "Model", str(final / "model"), {
                "fingerprint": result.fingerprint, "hyperparameters": hyperparameters,
                **{f"eval_{k}": float(v) for k, v in result.eval_metrics.items()},
            })
            record.record(train_metrics=result.train_metrics, eval_metrics=result.eval_metrics)
    metrics = record.results.get("eval_metrics")
    metrics = json.loads(metrics) if isinstance(metrics, str) else metrics
    return outcome_of("train", record, started, f"trained {ctx.config.training.train_steps} steps; eval {_fmt(metrics)}")


def _fmt(metrics: Mapping[str, Any] | None) -> str:
    if not metrics:
        return "{}"
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def current_model(ctx: StepContext) -> tuple[int, Path] | None:
    """The version TF Serving serves as `stable` (or the newest pushed one), if any."""
    from serving.model_config import labels, read_model_config

    serving = ctx.config.serving
    model_dir = serving.model_base_dir / serving.model_name
    version: int | None = None
    if serving.model_config_file.exists():
        version = labels(read_model_config(serving.model_config_file), serving.model_name).get("stable")
    if version is None and model_dir.is_dir():
        versions = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
        version = max(versions) if versions else None
    if version is None or not (model_dir / str(version)).is_dir():
        return None
    return version, model_dir / str(version)


def pushed_model_artifact(ctx: StepContext, version: int) -> ArtifactRef | None:
    """The run's model's pushed `version` (metadata.lineage.pushed_model_ref), None when never pushed."""
    from metadata.lineage import pushed_model_ref

    return pushed_model_ref(ctx.run.store, ctx.config.serving.model_name, version)


def evaluate(ctx: StepContext, model: ArtifactRef, examples: ArtifactRef, require_blessing: bool = True,
             recent: ArtifactRef | None = None) -> StepOutcome:
    """Metrics overall and per slice on the eval split, against the currently served model; with `recent`
    (the ingest step's examples), also on their held-out production rows (trainer.evaluate.recent_traffic_rule)."""
    from mlops.production_source import held_out_pattern

    started = time.time()
    baseline = current_model(ctx)
    inputs: dict[str, ArtifactRef] = {"model": model, "examples": examples}
    recent_pattern = held_out_pattern(Path(recent.uri)) if recent is not None and recent.properties.get("production_rows") else None
    if recent_pattern is not None:
        inputs["recent_examples"] = recent
    baseline_ref = pushed_model_artifact(ctx, baseline[0]) if baseline else None
    if baseline_ref is not None and baseline_ref.properties.get("fingerprint") == model.properties.get("fingerprint"):
        # The candidate is the model already served (a re-run): comparing it with itself adds
        # nothing, and leaving it out keeps the step's inputs the same, so it is reused.
        baseline, baseline_ref = None, None
    if baseline_ref is not None:
        inputs["baseline_model"] = baseline_ref
    parameters = {**dataclasses.asdict(ctx.config.evaluation), "baseline_version": baseline[0] if baseline else None}
    with ctx.run.step("Evaluate", inputs, parameters, code_digest=step_code(*STEP_MODULES["evaluate"])) as record:
        if not record.cached:
            from trainer.evaluate import evaluate_model

            final = ctx.run_dir / "evaluate"
            with atomic_directory(final) as out:
                result = evaluate_model(
                    Path(model.uri), Path(examples.uri), out, config=ctx.config.evaluation,
                    baseline_model_dir=baseline[1] if baseline else None,
                    baseline_label=f"v{baseline[0]} (serving)" if baseline else "current",
                    recent_traffic=recent_pattern,
                )
            record.output("evaluation", "ModelEvaluation", str(final), {
                "auc": float(result.metrics["auc"]), "metrics": result.metrics,
                "report": str(final / "report.html"),
                **({"recent_traffic": result.recent_traffic} if result.recent_traffic else {}),
            })
            record.output("blessing", "ModelBlessing", str(final / "evaluation.json"), {
                "blessed": int(result.blessed), "reasons": result.reasons,
            })
            record.record(metrics=result.metrics, baseline_metrics=result.baseline_metrics, blessed=int(result.blessed),
                          reasons=result.reasons, recent_traffic=result.recent_traffic)
    r = record.results
    metrics = json.loads(r["metrics"]) if isinstance(r["metrics"], str) else r["metrics"]
    reasons = json.loads(r["reasons"]) if isinstance(r["reasons"], str) else r["reasons"]
    outcome = outcome_of("evaluate", record, started, (
        f"{'BLESSED' if r['blessed'] else 'NOT BLESSED'}: {_fmt({k: metrics[k] for k in ('auc', 'accuracy', 'log_loss') if k in metrics})}; "
        + "; ".join(reasons)
    ))
    if require_blessing and not r["blessed"]:
        raise ModelNotBlessedError(f"evaluate: the model is not blessed, so it is not pushed: {'; '.join(reasons)} "
                                   f"(report: {record.outputs['evaluation'].uri}/report.html)")
    return outcome


def push(ctx: StepContext, model: ArtifactRef, blessing: ArtifactRef) -> StepOutcome:
    """Copies a blessed model into TF Serving's model base path, atomically."""
    started = time.time()
    if not blessing.properties.get("blessed"):
        raise ModelNotBlessedError(f"push: blessing {blessing.id} says the model is not blessed; nothing pushed")
    serving = ctx.config.serving
    parameters = {"model_name": serving.model_name, "model_base_dir": str(serving.model_base_dir)}
    with ctx.run.step("Push", {"model": model, "blessing": blessing}, parameters, use_cache=False) as record:
        from serving.push import push_model

        result = push_model(
            Path(model.uri), serving.model_base_dir, serving.model_name,
            fingerprint=model.properties.get("fingerprint"), config_file=serving.model_config_file,
        )
        existing = pushed_model_artifact(ctx, result.version) if result.reused else None
        if existing is not None:
            record.link_output("pushed_model", existing)
            record.record(version=result.version, reused=1, path=str(result.path))
        else:
            record.output("pushed_model", "PushedModel", str(result.path), {
                "model_name": serving.model_name, "version": result.version, "fingerprint": model.properties.get("fingerprint"),
                "pushed_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            })
            record.record(version=result.version, reused=int(result.reused), path=str(result.path))
    r = record.results
    what = "already pushed as" if r["reused"] else "pushed as"
    return outcome_of("push", record, started, f"{what} {serving.model_name}:{r['version']} at {r['path']}")
