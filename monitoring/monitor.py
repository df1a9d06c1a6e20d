"""One monitoring run: read the window, find the baselines through ML Metadata, run the checks, record.

`run_monitoring` is the entry point (the monitoring DAG and `mlops monitor check` call it). It reads
the window, finds the served model's training baseline by following its lineage in ML Metadata,
runs every check of monitoring/checks.py, writes `result.json` and `report.html`, and records a
`DriftCheck` execution whose `DriftCheckResult` output is what a drift-triggered retraining points
back to (docs/ARCHITECTURE.md, "Monitoring"). `Monitor` holds the steps so that each one (finding
the baseline, the previous window, the labels) reads on its own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from core.atomic import atomic_directory, atomic_file, write_json
from core.config import Config
from core.errors import DataError
from metadata.lineage import LineageNotFoundError, find_pushed_model
from metadata.queries import DEFAULT_LOG_DIR, training_chain
from metadata.recorder import ArtifactRef, PipelineRun, Trigger, new_run_id, properties_of
from metadata.review import ledger_path
from monitoring import checks
from monitoring.agreement import AgreementResult, read_agreement
from monitoring.performance_estimate import performance_estimate
from monitoring.results import (
    CONCEPT_DRIFT,
    REPORT_FILE,
    RESULT_FILE,
    STATISTICS_FILE,
    Baseline,
    CalibrationMap,
    CheckOutcome,
    ConceptBaseline,
    MonitoringResult,
    PERFORMANCE_ESTIMATE,
    PredictionBaseline,
    as_strict_json,
    skipped_outcome,
)
from monitoring.readiness import ReadinessVerdict, assess_readiness
from monitoring.served_values import ServedWindow, summarize_served_window
from monitoring.settings import MonitoringThresholds, load_thresholds
from transforms.features import SLICE_FEATURES

log = logging.getLogger(__name__)

MONITORING_PIPELINE_SUFFIX = "-monitoring"
EVALUATION_FILE = "evaluation.json"  # trainer/evaluate.py EVALUATION_FILE; read as a file, no TF import
# The evaluation report lists at most this many monitoring reports (newest first).
MAX_REPORT_LINKS = 20
PREDICTION_BINS = 20


def monitoring_pipeline_name(config: Config) -> str:
    return f"{config.pipeline_name}{MONITORING_PIPELINE_SUFFIX}"


def _ref(artifact: Any, type_name: str) -> ArtifactRef:
    return ArtifactRef(artifact.id, type_name, artifact.uri, properties_of(artifact))


@dataclasses.dataclass
class ModelBaseline:
    """What the served model was trained and evaluated on, found by following its lineage."""

    pushed: ArtifactRef
    statistics: ArtifactRef
    examples: ArtifactRef
    schema: ArtifactRef
    evaluation: ArtifactRef | None
    model_dir: Path


class Monitor:
    def __init__(self, config: Config, thresholds: MonitoringThresholds, log_dir: Path,
                 progress: Callable[[str], None]) -> None:
        self.config = config
        self.thresholds = thresholds
        self.log_dir = Path(log_dir)
        self.progress = progress
        self.model_name = config.serving.model_name

    # --- inputs ------------------------------------------------------------------------------

    def beam_args(self) -> list[str]:
        return self.config.pipeline_args()

    def read_window(self, start: dt.datetime, end: dt.datetime) -> ServedWindow:
        """The served requests of [start, end) as counts and per-version probabilities, streamed (never a frame)."""
        return summarize_served_window(self.log_dir, start, end, model_name=self.model_name)

    def model_baseline(self, store: Any, version: int) -> ModelBaseline:
        try:
            pushed = find_pushed_model(store, self.model_name, version)
        except LineageNotFoundError as err:
            raise DataError(f"{self.model_name}:{version} served the window, but {err}; without its training lineage "
                            "there is no baseline to judge it against (push models through the pipeline)") from None
        chain = training_chain(store, pushed)
        needed = {"statistics": "ExampleStatistics", "examples": "Examples", "schema": "Schema"}
        missing = [role for role in needed if chain.artifact(role) is None]
        if missing:
            raise DataError(f"the lineage of {self.model_name}:{version} (PushedModel {pushed.id}) lacks {missing}: "
                            "cannot find its training statistics")
        evaluation = chain.artifact("evaluation")
        model = chain.artifact("model")
        model_dir = Path(pushed.uri) if Path(pushed.uri).exists() else Path(model.uri if model else pushed.uri)
        return ModelBaseline(
            pushed=_ref(pushed, "PushedModel"),
            statistics=_ref(chain.artifact("statistics"), "ExampleStatistics"),
            examples=_ref(chain.artifact("examples"), "Examples"),
            schema=_ref(chain.artifact("schema"), "Schema"),
            evaluation=_ref(evaluation, "ModelEvaluation") if evaluation is not None else None,
            model_dir=model_dir,
        )

    def cache_dir(self) -> Path:
        return self.config.pipeline_root / "monitoring" / "baselines"

    def training_frame(self, examples: ArtifactRef) -> pd.DataFrame:
        """The training split's raw rows, cached per Examples artifact (they never change)."""
        from monitoring.frames import read_examples_frame, with_feature_types

        cached = self.cache_dir() / f"examples-{examples.id}-train.parquet"
        if cached.is_file():
            return with_feature_types(pd.read_parquet(cached))
        frame = read_examples_frame(Path(examples.uri), "train")
        with atomic_file(cached, "wb") as handle:
            frame.to_parquet(handle, index=False)
        return frame

    def evaluation_document(self, baseline: ModelBaseline) -> dict[str, Any] | None:
        if baseline.evaluation is None:
            return None
        path = Path(baseline.evaluation.uri) / EVALUATION_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err})") from None

    def prediction_baseline(self, baseline: ModelBaseline, document: dict[str, Any] | None) -> PredictionBaseline:
        """The evaluation's score histogram; else the model scored once on its eval split, cached."""
        if document is not None:
            label = (document.get("model") or {}).get("label")
            histogram = ((document.get("curves") or {}).get(label) or {}).get("histogram")
            if histogram and histogram.get("edges"):
                counts = np.asarray(histogram["positives"], dtype=float) + np.asarray(histogram["negatives"], dtype=float)
                return PredictionBaseline(tuple(histogram["edges"]), tuple(counts.tolist()),
                                          f"{baseline.evaluation.uri}/{EVALUATION_FILE}")
        cached = self.cache_dir() / f"predictions-{baseline.pushed.id}.json"
        if cached.is_file():
            value = json.loads(cached.read_text(encoding="utf-8"))
            return PredictionBaseline(tuple(value["edges"]), tuple(value["counts"]), str(cached))
        from trainer.evaluate import score_examples

        self.progress(f"scoring {baseline.model_dir} on its eval split once for the prediction baseline")
        examples = Path((document or {}).get("examples", {}).get("path") or baseline.examples.uri)
        scored = score_examples(examples, "eval", {"model": baseline.model_dir})
        edges = np.linspace(0.0, 1.0, PREDICTION_BINS + 1)
        counts = checks.probability_histogram(scored.probabilities["model"], edges)
        write_json(cached, {"edges": edges.tolist(), "counts": counts.tolist(), "model_dir": str(baseline.model_dir)},
                   allow_nan=False)
        return PredictionBaseline(tuple(edges.tolist()), tuple(counts.tolist()), str(cached))

    def concept_baseline(self, baseline: ModelBaseline, document: dict[str, Any] | None) -> ConceptBaseline | None:
        from monitoring.drift import calibration_error_from_bins

        if document is not None:
            metrics = document.get("metrics") or {}
            label = (document.get("model") or {}).get("label")
            bins = ((document.get("curves") or {}).get(label) or {}).get("calibration") or {}
            ece = (calibration_error_from_bins(bins["mean_predicted"], bins["observed_rate"], bins["count"])
                   if bins.get("count") else math.nan)
            source = f"{baseline.evaluation.uri}/{EVALUATION_FILE}"
            histogram = ((document.get("curves") or {}).get(label) or {}).get("histogram") or {}
            calibration = (CalibrationMap.from_histogram(histogram["edges"], histogram["positives"], histogram["negatives"],
                                                         f"{source} (score histogram)")
                           if histogram.get("edges") and histogram.get("positives") else None)
            return ConceptBaseline(_number(metrics.get("auc")), _number(metrics.get("accuracy")), ece, source, calibration)
        if baseline.evaluation is not None:
            metrics = baseline.evaluation.properties.get("metrics") or {}
            return ConceptBaseline(_number(metrics.get("auc")), _number(metrics.get("accuracy")), math.nan,
                                   f"ModelEvaluation {baseline.evaluation.id}")
        return None

    def labelled_requests(self, end: dt.datetime, version: int) -> pd.DataFrame:
        """Served examples of this version in the rolling concept window, joined with their feedback."""
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        from monitoring.log_statistics import log_files
        from serving.prediction_log import join_feedback, read_feedback

        start = end - dt.timedelta(days=self.thresholds.concept.window_days)
        feedback = read_feedback(self.log_dir, start, end)
        # The slice features let the sequential check say where a change sits.
        columns = ["request_id", "instance_index", "timestamp", "model_name", "model_version", "probability", "is_shadow",
                   *SLICE_FEATURES]
        files = log_files(self.log_dir, start, end)
        if feedback.empty or not files:
            return pd.DataFrame({**{c: [] for c in columns}, "ground_truth": pd.array([], dtype="Int64")})
        # Only the labelled requests, and only the columns the metrics need: days of logs are large.
        wanted = (pc.field("request_id").isin(pa.array(feedback["request_id"].unique().tolist(), type=pa.string()))
                  & (pc.field("model_name") == self.model_name) & (pc.field("model_version") == version)
                  & (pc.field("timestamp") >= pa.scalar(start, type=pa.timestamp("us", tz="UTC")))
                  & (pc.field("timestamp") < pa.scalar(end, type=pa.timestamp("us", tz="UTC"))))
        table = ds.dataset([str(f) for f in files], format="parquet").to_table(columns=columns, filter=wanted)
        served = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype()}.get)
        return join_feedback(served, feedback)

    def previous_window(self, store: Any, start: dt.datetime, end: dt.datetime, out: Path) -> tuple[Baseline | None, str]:
        """The window of the same length just before this one, when it holds enough served requests."""
        from beam_jobs.statistics import load_statistics
        from monitoring.log_statistics import generate_log_statistics, log_statistics_progress

        previous_start = start - (end - start)
        window = self.read_window(previous_start, start)
        label = f"previous window [{previous_start.isoformat()}, {start.isoformat()})"
        if window.rows < self.thresholds.min_rows:
            return None, f"{label} holds {window.rows} served requests (fewer than {self.thresholds.min_rows}): not compared"
        reused = self._recorded_statistics(store, previous_start, start, window.rows)
        if reused is not None:
            return Baseline(label, load_statistics(reused), window.values), f"{label}: statistics reused from {reused}"
        path = generate_log_statistics(self.log_dir, previous_start, start, out / "previous_statistics" / "FeatureStats.pb",
                                       model_name=self.model_name, beam_args=self.beam_args(),
                                       progress=log_statistics_progress(self.log_dir, previous_start, start))
        return Baseline(label, load_statistics(path), window.values), f"{label}: statistics computed now"

    def _recorded_statistics(self, store: Any, start: dt.datetime, end: dt.datetime, rows: int) -> Path | None:
        for artifact in sorted(store.get_artifacts_by_type("DriftCheckResult"), key=lambda a: -a.id):
            props = properties_of(artifact)
            if (props.get("log_dir") == str(self.log_dir) and props.get("model_name") == self.model_name
                    and props.get("window_start") == start.isoformat() and props.get("window_end") == end.isoformat()
                    and props.get("rows") == rows and props.get("statistics") and Path(props["statistics"]).is_file()):
                return Path(props["statistics"])
        return None

    def concept_history(self, store: Any, version: int) -> list[dict[str, Any]]:
        history = []
        for artifact in store.get_artifacts_by_type("DriftCheckResult"):
            props = properties_of(artifact)
            metrics = props.get("concept_metrics")
            if props.get("model_name") == self.model_name and props.get("model_version") == version and isinstance(metrics, dict):
                history.append({**metrics, "window_end": props.get("window_end"), "artifact_id": artifact.id})
        return sorted(history, key=lambda h: str(h["window_end"]))

    # --- the run -----------------------------------------------------------------------------

    def run(self, start: dt.datetime, end: dt.datetime, *, run_id: str | None, trigger: Trigger) -> MonitoringResult:
        from metadata.store import connect

        served = self.read_window(start, end)
        if served.empty:
            self.progress(f"no served requests for {self.model_name} logged in [{start.isoformat()}, {end.isoformat()}) "
                          f"under {self.log_dir}: nothing to check")
            return MonitoringResult([], start, end, self.model_name, None, 0, None, None)
        version = served.judged_version()
        store = connect(self.config.metadata)
        baseline = self.model_baseline(store, version)
        run_id = run_id or new_run_id("monitoring")
        from metadata.openlineage import step_events

        pipeline = monitoring_pipeline_name(self.config)
        run = PipelineRun(store, pipeline, run_id, trigger, events=step_events(self.config.pipeline_root, pipeline))
        prediction_log = run.register_artifact(
            "PredictionLog", str(self.log_dir),
            {"window_start": start.isoformat(), "window_end": end.isoformat(), "rows": served.rows,
             "model_name": self.model_name}, identity=("window_start", "window_end", "rows"))
        inputs = {"prediction_log": prediction_log, "model": baseline.pushed, "baseline_statistics": baseline.statistics,
                  "schema": baseline.schema}
        if baseline.evaluation is not None:
            inputs["evaluation"] = baseline.evaluation
        # Small on purpose: MLMD indexes string properties and PostgreSQL refuses index entries over 2.7 kB.
        # The thresholds themselves are in result.json.
        parameters = {"window_start": start.isoformat(), "window_end": end.isoformat(), "log_dir": str(self.log_dir),
                      "model": f"{self.model_name}:{version}", "thresholds_file": str(self.thresholds.source),
                      "thresholds_sha256": self.thresholds.fingerprint()}
        final = self.config.pipeline_root / "runs" / run_id / "drift_check"
        self.progress(f"checking {served.rows} served requests of [{start.isoformat()}, {end.isoformat()}) "
                      f"against {self.model_name}:{version} (run {run_id})")
        with run.step("DriftCheck", inputs, parameters, use_cache=False) as record:
            with atomic_directory(final) as out:
                outcomes, report_inputs = self._checks(store, served, version, baseline, start, end, out)
                agreement, readiness = self.agreement(served, version, start, end)
                result = MonitoringResult(outcomes, start, end, self.model_name, version, served.rows, final / REPORT_FILE, None,
                                          agreement, readiness)
                concept = next(c for c in outcomes if c.name == CONCEPT_DRIFT)
                concept_metrics = self._concept_summary(concept, end)
                history = self.concept_history(store, version) + ([{**concept_metrics, "window_end": end.isoformat()}]
                                                                  if concept_metrics else [])
                document = {**result.to_json(), "details": {c.name: c.details_json() for c in outcomes},
                            "run_id": run_id, "log_dir": str(self.log_dir),
                            "thresholds": self.thresholds.to_json(), "baselines": report_inputs["baselines"],
                            "concept_history": history}
                document["report_html"] = str(final / REPORT_FILE)
                from monitoring.report import write_report
                from monitoring.timeline import build_timeline, window_summary

                # Kept in result.json so later timelines do not read this window's logs again.
                document["window_summary"] = window_summary(self.log_dir, start, end, self.model_name, self.thresholds)
                write_json(out / RESULT_FILE, as_strict_json(document), allow_nan=False)
                links = self._report_links(baseline, final)
                timeline = build_timeline(store, self.model_name, version, self.thresholds, document)
                write_report(out / REPORT_FILE, result, report_inputs, history, links, run_id, timeline)
            record.output("result", "DriftCheckResult", str(final), {
                "passed": int(result.passed), "model_name": self.model_name, "model_version": version,
                "window_start": start.isoformat(), "window_end": end.isoformat(), "rows": served.rows,
                "failed_checks": [c.name for c in result.failed], "report": str(final / REPORT_FILE),
                "statistics": str(final / STATISTICS_FILE), "log_dir": str(self.log_dir),
                "concept_metrics": concept_metrics or None,
                "performance_estimate": self._estimate_summary(result) or None,
                "agreement": agreement.summary() or None,
                "automation_readiness": ({"current": readiness.current, "next": readiness.next,
                                          "action": readiness.action} if readiness else None),
            })
            record.record(passed=int(result.passed), failed_checks=[c.name for c in result.failed], rows=served.rows,
                          model=f"{self.model_name}:{version}")
        artifact = record.outputs["result"]
        self._link_evaluation_report(store, baseline, version)
        status = "all checks passed" if result.passed else "FAILED: " + ", ".join(c.name for c in result.failed)
        self.progress(f"{status}; report {final / REPORT_FILE}; DriftCheckResult {artifact.id}")
        return dataclasses.replace(result, artifact=artifact)

    def agreement(self, served: ServedWindow, version: int, start: dt.datetime,
                  end: dt.datetime) -> tuple[AgreementResult, ReadinessVerdict | None]:
        """Model vs reviewers over the automation evidence window ending with this one, and the served version's readiness.

        Reviews accumulate over days, so the evidence window is `automation.window_days` long (or
        this window, when longer); the version's degree is the one it answered most of this window in.
        """
        rules = self.config.automation
        agreement = read_agreement(self.log_dir, self.model_name, min(start, end - dt.timedelta(days=rules.window_days)), end,
                                   ledger_path(self.config.pipeline_root))
        degree = served.automation_of(version)
        readiness = assess_readiness(agreement, version, degree, rules) if degree is not None else None
        return agreement, readiness

    def _checks(self, store: Any, served: ServedWindow, version: int, baseline: ModelBaseline,
                start: dt.datetime, end: dt.datetime, out: Path) -> tuple[list[CheckOutcome], dict[str, Any]]:
        from beam_jobs.statistics import load_statistics, statistics_path
        from monitoring.log_statistics import generate_log_statistics, log_statistics_progress
        from validation.schema import load_schema

        thresholds = self.thresholds
        window_hours = (end - start).total_seconds() / 3600
        self.progress("statistics of the window (Beam job over the Parquet logs)")
        current_path = generate_log_statistics(self.log_dir, start, end, out / STATISTICS_FILE,
                                               model_name=self.model_name, beam_args=self.beam_args(),
                                               progress=log_statistics_progress(self.log_dir, start, end))
        current_stats = load_statistics(current_path)
        training_stats = load_statistics(statistics_path(baseline.statistics.uri, "train"))
        training = Baseline(f"training data of {self.model_name}:{version}", training_stats,
                            self.training_frame(baseline.examples))
        schema = load_schema(baseline.schema.uri)
        previous, previous_note = self.previous_window(store, start, end, out)
        drift_baselines = [training] + ([previous] if previous is not None else [])
        self.progress("comparing distributions (TFDV drift and skew comparators)")
        data_drift = checks.data_drift(current_stats, served.values, drift_baselines, schema, thresholds, window_hours)
        data_drift.evidence["previous_window"] = previous_note
        outcomes = [
            data_drift,
            checks.training_serving_skew(training, current_stats, served.values, schema, thresholds, window_hours),
            checks.schema_anomalies(current_stats, schema),
            checks.missing_values(current_stats, training_stats, thresholds),
            checks.null_outputs(served.values, thresholds),
        ]
        document = self.evaluation_document(baseline)
        of_version = served.probabilities_of(version)
        prediction_baseline = self.prediction_baseline(baseline, document)
        outcomes.append(checks.prediction_drift(of_version, prediction_baseline, thresholds))
        concept_baseline = self.concept_baseline(baseline, document)
        labelled = self.labelled_requests(end, version)
        if concept_baseline is None:
            outcomes.append(skipped_outcome(CONCEPT_DRIFT, "the model has no evaluation to compare with"))
        else:
            outcomes.append(checks.concept_drift(labelled, concept_baseline, thresholds.concept,
                                                 self.config.evaluation.decision_threshold))
        in_window = labelled[(labelled["timestamp"] >= start) & (labelled["timestamp"] < end)] if len(labelled) else labelled
        outcomes.append(performance_estimate(of_version, concept_baseline,
                                             thresholds.performance, self.config.evaluation.decision_threshold, in_window))
        report_inputs = {
            "baselines": {"training_statistics": str(statistics_path(baseline.statistics.uri, "train")),
                          "training_examples": baseline.examples.uri, "schema": baseline.schema.uri,
                          "previous_window": previous_note, "evaluation": baseline.evaluation.uri if baseline.evaluation else None,
                          "prediction_baseline": prediction_baseline.source},
            "current_statistics": current_stats,
            "training_statistics": training_stats,
            "versions": {str(k): int(v) for k, v in served.versions.items() if v},
            "labels_in_concept_window": int(labelled["ground_truth"].notna().sum()) if len(labelled) else 0,
            "concept_window_days": thresholds.concept.window_days,
        }
        return outcomes, report_inputs

    @staticmethod
    def _concept_summary(concept: CheckOutcome, end: dt.datetime) -> dict[str, Any]:
        metrics = concept.details.get("metrics") if concept.details else None
        if not metrics:
            return {}
        return {"labels": concept.evidence.get("labels"), "passed": concept.passed,
                **{k: (None if isinstance(v, float) and math.isnan(v) else round(float(v), 5))
                   for k, v in metrics.items() if k in ("auc", "accuracy", "ece", "positive_rate")}}

    @staticmethod
    def _estimate_summary(result: MonitoringResult) -> dict[str, Any]:
        """Estimated and realized accuracy and AUC: small, for the DriftCheckResult's properties."""
        outcome = next((c for c in result.checks if c.name == PERFORMANCE_ESTIMATE), None)
        metrics = (outcome.evidence.get("metrics") or {}) if outcome else {}
        if not metrics:
            return {}
        return {"passed": outcome.passed, "rows": outcome.evidence.get("rows"),
                "realized_labels": outcome.evidence.get("realized_labels"),
                **{f"{kind}_{name}": values.get(kind) for name, values in metrics.items() for kind in ("estimated", "realized")}}

    def _report_links(self, baseline: ModelBaseline, final: Path) -> dict[str, str]:
        links: dict[str, str] = {}
        if baseline.evaluation is not None:
            report = baseline.evaluation.properties.get("report") or str(Path(baseline.evaluation.uri) / "report.html")
            links[f"Evaluation report of {self.model_name}:{baseline.pushed.properties.get('version')}"] = \
                os.path.relpath(report, final)
        return links

    def _link_evaluation_report(self, store: Any, baseline: ModelBaseline, version: int) -> None:
        """Re-renders the model's evaluation report with links to its monitoring reports (newest first)."""
        if baseline.evaluation is None:
            return
        evaluation_dir = Path(baseline.evaluation.uri)
        evaluation_json = evaluation_dir / EVALUATION_FILE
        if not evaluation_json.is_file():
            return
        from metadata.queries import drift_checks_of
        from trainer.report import rewrite_report

        links = {}
        for check in reversed(drift_checks_of(store, self.model_name, version)[-MAX_REPORT_LINKS:]):
            if not check.get("report") or not Path(check["report"]).is_file():
                continue
            verdict = "passed" if check["passed"] else "FAILED " + ", ".join(check["failed_checks"])
            title = f"Monitoring of {self.model_name}:{version}, {check['window_start']} to {check['window_end']}: {verdict}"
            links[title] = os.path.relpath(check["report"], evaluation_dir)
        try:
            rewrite_report(evaluation_json, links)
        except OSError as err:  # the evaluation directory may be read-only (an archived run): the check still stands
            log.warning("could not add monitoring links to %s: %s", evaluation_json, err)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _utc(value: dt.datetime | str, what: str) -> dt.datetime:
    from monitoring.log_statistics import utc

    return utc(value, what)


def run_monitoring(
    config: Config,
    *,
    window_start: dt.datetime,
    window_end: dt.datetime,
    log_dir: Path | None = None,
    run_id: str | None = None,
    trigger: Trigger = Trigger("schedule"),
    thresholds: MonitoringThresholds | None = None,
    progress: Callable[[str], None] | None = None,
) -> MonitoringResult:
    """Runs every check on the served requests logged in [window_start, window_end) and records the result.

    A window without logged requests returns a result with `rows == 0` and no checks (nothing is
    recorded: there was nothing to judge). Raises DataError when the model that served the window
    has no training lineage in ML Metadata, since there is then no baseline to judge it against.
    """
    start, end = _utc(window_start, "window_start"), _utc(window_end, "window_end")
    if end <= start:
        raise DataError(f"the monitoring window is empty: end {end.isoformat()} is not after start {start.isoformat()}")
    monitor = Monitor(config, thresholds or load_thresholds(), Path(log_dir) if log_dir else config.root / DEFAULT_LOG_DIR,
                      progress or (lambda message: log.info("%s", message)))
    return monitor.run(start, end, run_id=run_id, trigger=trigger)
