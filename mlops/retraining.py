"""Whether a failed drift check should start a retraining: not when nothing new would go in.

A retraining on the same data, window, schema, hyperparameters and code as the served model reuses
every cached step and pushes nothing new, so the drift it answers persists, hour after hour. Before
the monitoring DAG triggers `taxi_training`, `decide_retraining` compares what the run would use with
what trained the judged model (its lineage in ML Metadata). When they are the same it records a
`RetrainingDecision` execution ("drift persists; no new data to learn from", with the evidence) and
says so once: the next window with the same cause (the failed checks and the inputs' fingerprint,
kept as the execution's parameters) finds that record and stays quiet. New data (a changed CSV, or new
request-log or feedback files when production data trains too), another window, changed code or
another failed check make a new cause, and the decision is taken again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from core.config import Config
from metadata.recorder import ArtifactRef, properties_of

RETRAIN = "retrain"
# The steps whose code decides what a retraining learns (evaluate and push judge and ship it).
TRAINING_STEPS = ("ingest", "clean", "validate", "transform", "train")
NO_NEW_DATA = "no_new_data"
ALREADY_RAISED = "already_raised"
# A drift-triggered retraining ran and its model, now served, fails the same check again.
STILL_FAILING = "still_failing"
# The Prometheus text file (node_exporter's textfile collector format) with the alerts' counters,
# below the config's pipeline_root; rewritten from ML Metadata whenever an alert is recorded.
ALERT_METRICS_FILE = Path("metrics") / "retraining_alerts.prom"
ALERT_METRIC = "mlops_retraining_alerts_total"


@dataclasses.dataclass(frozen=True)
class TrainingInputs:
    """What a training run learns from, as far as its outcome goes."""

    raw_sha256: str | None
    window_start: str | None
    window_end: str | None
    schema_sha256: str | None
    hyperparameters: Mapping[str, Any]
    # step -> digest of the code its outputs depend on (mlops.steps.STEP_MODULES); a commit that
    # touches only the gateway or the docs does not make a retraining worth starting.
    step_code: Mapping[str, str | None]
    # Production data (mlops/production_source.py): the label policy and the fingerprint of every
    # feedback partition read; new labels change it. Empty without feedback.
    production: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def fingerprint(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def differences(self, other: "TrainingInputs") -> dict[str, tuple[Any, Any]]:
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        return {key: (mine[key], theirs[key]) for key in mine if mine[key] != theirs[key]}


@dataclasses.dataclass(frozen=True)
class RetrainingDecision:
    action: str  # RETRAIN, NO_NEW_DATA (say so now) or ALREADY_RAISED (said before, for the same cause)
    message: str
    served_version: int | None
    differences: dict[str, Any]
    execution_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "message": self.message, "served_version": self.served_version,
                "differences": self.differences, "execution_id": self.execution_id}


def planned_inputs(config: Config, csv_path: Path, start: str, end: str) -> TrainingInputs:
    """What a triggered `taxi_training` run would learn from: the conf's CSV and window, the config's
    schema and hyperparameters, this checkout's code."""
    from mlops.production_source import production_source
    from mlops.steps import STEP_MODULES, file_sha256, step_code

    csv_path, schema = Path(csv_path).resolve(), config.data.schema_path.resolve()
    production = production_source(config, None)
    return TrainingInputs(
        raw_sha256=file_sha256(csv_path) if csv_path.is_file() else None,
        window_start=_day(start), window_end=_day(end),
        schema_sha256=file_sha256(schema) if schema.is_file() else None,
        hyperparameters=_plain(dataclasses.asdict(config.training)),
        step_code={step: step_code(*modules) for step, modules in STEP_MODULES.items() if step in TRAINING_STEPS},
        production=_production_inputs(production.parameters() if production else {}),
    )


def _production_inputs(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The part of the ingest parameters that says what labelled production data went in.

    Labels arrive as feedback files: new requests without feedback add no training row, so only
    the feedback partitions (and the policy that reads them) count; no feedback = no production data.
    """
    from serving.prediction_log import FEEDBACK_DIR

    feedback = {key: value for key, value in dict(parameters.get("log_fingerprints") or {}).items()
                if key.startswith(f"{FEEDBACK_DIR}/")}
    if not feedback:
        return {}
    return {"label_policy": parameters.get("label_policy"), "feedback_fingerprints": feedback}


def served_inputs(store: Any, model_name: str, version: int) -> TrainingInputs | None:
    """What trained the pushed model `model_name:version`, from its lineage; None if it is not recorded."""
    from metadata.lineage import find_pushed_model_or_none
    from metadata.queries import training_chain

    pushed = find_pushed_model_or_none(store, model_name, version)
    if pushed is None:  # a model pushed outside the pipeline has no lineage to compare with
        return None
    chain = training_chain(store, pushed)
    ingest, train = chain.executions.get("ingest"), chain.executions.get("train")
    if ingest is None or train is None:
        return None
    ingest_props, train_props = properties_of(ingest), properties_of(train)
    window = ingest_props.get("parameters") or {}
    raw, schema = chain.artifact("raw_data"), chain.artifact("schema")
    return TrainingInputs(
        raw_sha256=properties_of(raw).get("sha256") if raw is not None else None,
        window_start=_day(window.get("window_start")), window_end=_day(window.get("window_end")),
        schema_sha256=properties_of(schema).get("sha256") if schema is not None else None,
        hyperparameters=_plain(train_props.get("parameters") or {}),
        step_code={step: properties_of(chain.executions[step]).get("code_digest") if step in chain.executions else None
                   for step in TRAINING_STEPS},
        production=_production_inputs(window),
    )


def served_data_end(store: Any, model_name: str, version: int | None) -> str | None:
    """The day the served model's training data ended (YYYY-MM-DD): its production window's end if it
    learned from production, else its CSV window's end; None without recorded lineage."""
    from metadata.lineage import find_pushed_model_or_none
    from metadata.queries import training_chain

    pushed = find_pushed_model_or_none(store, model_name, version) if version is not None else None
    if pushed is None:
        return None
    ingest = training_chain(store, pushed).executions.get("ingest")
    window = (properties_of(ingest).get("parameters") or {}) if ingest is not None else {}
    return _day(window.get("production_window_end") or window.get("window_end"))


def decide_retraining(config: Config, run_id: str, *, model_name: str, served_version: int | None,
                      failed_checks: Sequence[str], csv_path: Path, start: str, end: str,
                      drift_check: ArtifactRef | None) -> RetrainingDecision:
    """RETRAIN unless the run would learn from exactly what trained the served model (see the module
    docstring). Every no-op decision is recorded in ML Metadata under the run `run_id`."""
    from mlops import steps

    planned = planned_inputs(config, csv_path, start, end)
    ctx = steps.open_run(config, run_id)
    served = served_inputs(ctx.run.store, model_name, served_version) if served_version is not None else None
    if served is None:
        return RetrainingDecision(RETRAIN, "the served model's training inputs are not recorded: retraining",
                                  served_version, {})
    differences = planned.differences(served)
    if differences:
        changed = ", ".join(sorted(differences))
        return RetrainingDecision(RETRAIN, f"retraining: {changed} differ from what trained {model_name}:{served_version}",
                                  served_version, {key: list(pair) for key, pair in differences.items()})
    cause = {"failed_checks": sorted(failed_checks), "inputs": planned.fingerprint()}
    parameters = {"cause": cause, "action": NO_NEW_DATA, "served_version": served_version}
    checks = ", ".join(sorted(failed_checks))
    earlier = _earlier_decision(ctx.run.store, parameters)
    if earlier is not None:
        first = properties_of(earlier).get("result_decided_at") or "earlier"
        return RetrainingDecision(
            ALREADY_RAISED,
            f"drift persists ({checks}) and there is still no new data to learn from; already raised at {first} "
            f"(RetrainingDecision execution {earlier.id}); not asking again for the same cause",
            served_version, {}, earlier.id)
    pushed = steps.pushed_model_artifact(ctx, served_version)
    inputs = {"served_model": pushed} if pushed is not None else {}
    with ctx.run.step("RetrainingDecision", inputs, parameters, use_cache=False) as record:
        record.record(decision=NO_NEW_DATA, failed_checks=sorted(failed_checks), served_version=served_version,
                      drift_check_artifact_id=drift_check.id if drift_check else None,
                      window=[planned.window_start, planned.window_end], raw_sha256=planned.raw_sha256,
                      decided_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    write_alert_metrics(config, ctx.run.store)
    return RetrainingDecision(
        NO_NEW_DATA,
        f"drift persists ({checks}); no new data to learn from: a retraining would learn from exactly what trained "
        f"{model_name}:{served_version} "
        f"(same data sha256 {str(planned.raw_sha256)[:12]}, window {planned.window_start}..{planned.window_end}, "
        f"schema, hyperparameters, code and labelled production data): not started. Give it new data (labels for "
        f"the drifted traffic as feedback, another CSV, or a later window end in the DAG params "
        f"retrain_start/retrain_end) or look into the drift "
        f"(RetrainingDecision execution {record.execution_id})",
        served_version, {}, record.execution_id)


def _earlier_decision(store: Any, parameters: Mapping[str, Any]) -> Any:
    """The first recorded no-op decision for the same cause, if any (the cool-down)."""
    wanted = json.loads(json.dumps(parameters, sort_keys=True, default=str))
    for execution in sorted(store.get_executions_by_type("RetrainingDecision"), key=lambda e: e.id):
        if properties_of(execution).get("parameters") == wanted:
            return execution
    return None


def _day(value: Any) -> str | None:
    """Dates in any of the forms the steps record them (YYYY-MM-DD or ISO instants) as YYYY-MM-DD."""
    if value in (None, ""):
        return None
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).date().isoformat()


def _plain(value: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters as JSON gives them back (tuples as lists), so recorded and configured compare equal."""
    return json.loads(json.dumps(dict(value), default=str))


@dataclasses.dataclass(frozen=True)
class StillFailing:
    """The served model came from a drift-triggered retraining and fails one of its checks again."""

    message: str
    served_version: int
    checks: list[str]  # failed now and named by the trigger of the retraining that made the model
    retraining_run: str  # the training run's PipelineRun name
    triggered_by: str | None  # the monitoring run whose failed check triggered it
    execution_id: int | None
    first_time: bool  # False: raised before for the same model and checks (quiet now)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def retraining_that_made(store: Any, model_name: str, version: int) -> tuple[str, Mapping[str, Any]] | None:
    """(training run name, its drift-check trigger) when `model_name:version` came from a drift-triggered
    retraining; None for a manual run, a model pushed outside the pipeline, or unknown lineage."""
    from metadata.lineage import find_pushed_model_or_none
    from metadata.queries import producer

    pushed = find_pushed_model_or_none(store, model_name, version)
    if pushed is None:
        return None
    push = producer(store, pushed.id)
    if push is None:
        return None
    for context in store.get_contexts_by_execution(push.id):
        props = properties_of(context)
        trigger = props.get("trigger")
        trigger = json.loads(trigger) if isinstance(trigger, str) else trigger
        if props.get("trigger_kind") == "drift_check" and isinstance(trigger, Mapping):
            return context.name, trigger
    return None


def check_still_failing(config: Config, run_id: str, *, model_name: str, served_version: int | None,
                        failed_checks: Sequence[str], drift_check: ArtifactRef | None) -> StillFailing | None:
    """Raised once per (served model, checks): the retraining that made the served model did not fix
    the drift it answered. Recorded as a `RetrainingDecision` (decision `still_failing`) in the
    monitoring run `run_id`, linked to the served model and naming both runs; counted in the alert
    metrics. A later window with the same model and checks finds it and stays quiet."""
    from mlops import steps

    if served_version is None or not failed_checks:
        return None
    ctx = steps.open_run(config, run_id)
    made_by = retraining_that_made(ctx.run.store, model_name, served_version)
    if made_by is None:
        return None
    training_run, trigger = made_by
    again = sorted(set(failed_checks) & set(trigger.get("checks") or ()))
    if not again:
        return None  # another check fails: a new cause, which the retraining decision handles
    parameters = {"cause": {"failed_checks": again, "retraining_run": training_run},
                  "action": STILL_FAILING, "served_version": served_version}
    earlier = _earlier_decision(ctx.run.store, parameters)
    where = (f"{model_name}:{served_version} was trained by {training_run}, triggered by "
             f"{trigger.get('monitoring_run_id') or 'a drift check'} for {', '.join(trigger.get('checks') or ())}")
    if earlier is not None:
        first = properties_of(earlier).get("result_decided_at") or "earlier"
        return StillFailing(
            f"still failing after retraining ({', '.join(again)}): {where}; already raised at {first} "
            f"(RetrainingDecision execution {earlier.id}); not raising it again", served_version, again, training_run,
            trigger.get("monitoring_run_id"), earlier.id, first_time=False)
    pushed = steps.pushed_model_artifact(ctx, served_version)
    inputs: dict[str, ArtifactRef] = {"served_model": pushed} if pushed is not None else {}
    with ctx.run.step("RetrainingDecision", inputs, parameters, use_cache=False) as record:
        record.record(decision=STILL_FAILING, failed_checks=again, served_version=served_version,
                      retraining_run=training_run, triggered_by=trigger.get("monitoring_run_id"),
                      triggering_drift_check_artifact_id=trigger.get("drift_check_artifact_id"),
                      drift_check_artifact_id=drift_check.id if drift_check else None, monitoring_run=run_id,
                      decided_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    write_alert_metrics(config, ctx.run.store)
    return StillFailing(
        f"still failing after retraining ({', '.join(again)}): {where}, and the same check fails again on "
        f"{model_name}:{served_version} in this window; retraining on this data did not fix it: look into the drift "
        f"(the features or the labels) before the next retraining (RetrainingDecision execution {record.execution_id})",
        served_version, again, training_run, trigger.get("monitoring_run_id"), record.execution_id, first_time=True)


def alert_counts(store: Any) -> dict[str, int]:
    """Recorded alerts by decision: how often people were told (each once per cause)."""
    counts = {NO_NEW_DATA: 0, STILL_FAILING: 0}
    for execution in store.get_executions_by_type("RetrainingDecision"):
        decision = properties_of(execution).get("result_decision")
        if decision in counts:
            counts[decision] += 1
    return counts


def write_alert_metrics(config: Config, store: Any) -> Path:
    """The alerts' counters as a Prometheus text file (counted from ML Metadata, so they survive restarts)."""
    from core.atomic import write_text

    lines = [f"# HELP {ALERT_METRIC} Retraining alerts raised to people, once per cause: no_new_data = drift "
             "persists and a retraining would learn nothing new; still_failing = the retrained model fails the same check.",
             f"# TYPE {ALERT_METRIC} counter"]
    lines += [f'{ALERT_METRIC}{{decision="{decision}"}} {count}' for decision, count in sorted(alert_counts(store).items())]
    return write_text(Path(config.pipeline_root) / ALERT_METRICS_FILE, "\n".join(lines) + "\n")
