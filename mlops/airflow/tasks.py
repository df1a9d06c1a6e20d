"""The task side: what the DAGs' tasks run inside `@task.external_python`, in the ML runtime.

DAG files stay declarations (stdlib, pendulum and airflow.sdk only); the work, its argument
checks and its MLMD records live here, where they can be tested without Airflow. One entry point
per DAG: `run_training_task` (taxi_training, one call per step; with `run_prepare_transform_task`
and its teardown `run_discard_prepared_transform_task` beside validate), `run_monitoring_task`
(taxi_monitoring), `run_batch_predict_task` (taxi_batch_predict); taxi_rollout's are in
`mlops/airflow/rollout_tasks.py` (with the helpers here that other tasks share: `gateway_client`,
`serving_labels`, `newest_version`).

Retry policy (why exit codes): a task's ML process fails in one of two ways. A Python exception
(a lock held too long, a full disk, a server that is restarting, a bug) reaches Airflow as an
`AirflowException` and is retried with exponential backoff. A user error (bad data, schema
anomalies, a model that is not blessed, a canary that was rolled back, a bad parameter) is caught
here, printed as one clear line, and ends the process with a distinct exit code; Airflow sees a
`CalledProcessError` and the DAGs' retry policy fails the task at once: retrying cannot fix the
input.

The DAG files repeat the exit codes and the Param defaults below (they cannot import this module
where Airflow parses them, docs/AIRFLOW.md); tests/dags/test_dag_copies.py ties each copy to its
source here. Module level imports are stdlib only, so the DAG tests can import this module in the
Airflow environment; the ML stack is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

# Exit codes of a task's ML process for errors a retry cannot fix (the CLI uses 2 and 3 too).
EXIT_DATA_ERROR = 2
EXIT_NOT_BLESSED = 3
EXIT_ROLLED_BACK = 4
# "Nothing to do" (no prediction logs in the window): the DAG maps it to a skipped task.
EXIT_NOTHING_TO_CHECK = 99

# Defaults of the DAGs' Params (and what an empty Param falls back to here).
DEFAULT_TRAINING_WINDOW = ("2013-01-01", "2015-01-01")
DEFAULT_RETRAINING_WINDOW = ("2013-01-01", "2017-01-01")
ROLLOUT_ACTIONS = ("canary", "blue_green", "rollback")
DEFAULT_CANARY_SHARES = (5, 25, 50, 100)
DEFAULT_OBSERVE_SECONDS = 60
DEFAULT_BATCH_OUTPUT_FORMAT = "jsonl"


@contextlib.contextmanager
def exit_on_user_error(task: str) -> Iterator[None]:
    """Turns an error a retry cannot fix into one clear log line and a distinct exit code.

    Other exceptions propagate: Airflow records them and retries the task with backoff.
    """
    from core.config import ConfigError
    from core.errors import MlopsError, ModelNotBlessedError

    try:
        yield
    except MlopsError as err:
        if _is_transient(err):
            raise  # a gateway that is restarting: Airflow retries the task with backoff
        if isinstance(err, ModelNotBlessedError):
            _report_failure(task, err, "the model stays where it is; nothing was pushed or deployed")
            raise SystemExit(EXIT_NOT_BLESSED) from None
        _report_failure(task, err, "fix the input or the parameters, then trigger a new run (this task is not retried)")
        raise SystemExit(EXIT_DATA_ERROR) from None
    except RolledBackError as err:
        _report_failure(task, err, "traffic is back on the stable version")
        raise SystemExit(EXIT_ROLLED_BACK) from None
    except ConfigError as err:
        _report_failure(task, err, "fix the config file or the parameters, then trigger a new run (this task is not retried)")
        raise SystemExit(EXIT_DATA_ERROR) from None


def _is_transient(err: BaseException) -> bool:
    """An admin call that did not reach the gateway, or that the gateway failed (5xx), may succeed later."""
    status = getattr(err, "status", "absent")
    return type(err).__name__ == "AdminApiError" and (status is None or (isinstance(status, int) and status >= 500))


def _report_failure(task: str, err: BaseException, advice: str) -> None:
    print(f"ERROR {task} failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
    print(f"ERROR {task}: {advice}", file=sys.stderr, flush=True)


class RolledBackError(Exception):
    """A canary failed its checks and was rolled back (recorded in MLMD before this is raised)."""


def pipeline_run_id(dag_id: str, airflow_run_id: str) -> str:
    """The MLMD PipelineRun name and run directory of an Airflow run: readable, and safe as a path."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{dag_id}__{airflow_run_id}").strip("_")


def trigger_of(trigger_param: Mapping[str, Any] | None, run_type: str) -> Any:
    """Who started the run: the `trigger` param (e.g. a drift check with evidence), else Airflow's run type."""
    from metadata.recorder import Trigger

    details = dict(trigger_param or {})
    kind = str(details.pop("kind", "") or "")
    if not kind:
        run_kind = run_type.rsplit(".", 1)[-1].lower()  # "DagRunType.SCHEDULED" or "scheduled"
        kind = {"scheduled": "schedule", "asset_triggered": "asset", "backfill": "schedule"}.get(run_kind, "manual")
        details.setdefault("airflow_run_type", run_kind)
    return Trigger(kind, details)


def load_task_config(config_path: str) -> Any:
    """The validated config a DAG task runs with (its DAG's CONFIG_PATH; empty = the default lookup)."""
    from core.config import load_config

    return load_config(config_path or None)


def task_params(params_json: str | Mapping[str, Any]) -> dict[str, Any]:
    """A run's params as the DAG hands them over (`{{ params | tojson }}` or a mapping), as a dict."""
    from core.errors import DataError

    if isinstance(params_json, Mapping):
        return dict(params_json)
    try:
        value = json.loads(params_json)
    except ValueError as err:
        raise DataError(f"the DAG params are not JSON ({err}): {params_json[:200]!r}") from None
    if not isinstance(value, dict):
        raise DataError(f"the DAG params must be a JSON object, got {type(value).__name__}")
    return value


HYPERPARAMETERS = ("learning_rate", "train_steps", "batch_size", "hidden_units", "seed")


def training_config(config: Any, params: Mapping[str, Any]) -> Any:
    """The config with the run's hyperparameter and Beam option overrides (None = keep mlops.toml's), validated."""
    overrides = {name: params[name] for name in HYPERPARAMETERS if params.get(name) is not None}
    if "hidden_units" in overrides:
        overrides["hidden_units"] = tuple(overrides["hidden_units"])
    if overrides:
        config = config.replace(training=dataclasses.replace(config.training, **overrides))
    beam_args = params.get("beam_args")
    if beam_args is not None:
        from core.config import beam_flags
        from core.errors import DataError

        # A run's bad param is bad input (DataError: exit code 2, not retried), not a bad config file.
        config = config.replace(beam_args=beam_flags(beam_args, "the beam_args param", error=DataError))
    return config


def check_window(start: str, end: str) -> tuple[dt.date, dt.date]:
    """The training window [start, end) as dates; an empty or reversed window is refused."""
    from core.errors import DataError

    try:
        first, last = dt.date.fromisoformat(str(start)), dt.date.fromisoformat(str(end))
    except ValueError:
        raise DataError(f"start and end must be dates as YYYY-MM-DD, got start={start!r} end={end!r}") from None
    if last <= first:
        raise DataError(f"the window is empty: end {last} is not after start {first}")
    return first, last


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """What a taxi_training task works with: the run's config (its params applied), its ML Metadata
    run, its data window and the outcomes of the steps before it (XCom)."""

    config: Any
    ctx: Any
    params: dict[str, Any]
    start: dt.date
    end: dt.date
    done: dict[str, Any]


def open_training_run(task: str, needs: Sequence[str], *, config_path: str, dag_id: str, airflow_run_id: str,
                      run_type: str, params_json: str | Mapping[str, Any],
                      upstream: Mapping[str, Any] | None) -> TrainingRun:
    """The run as `task` sees it; `needs`: the steps whose outcomes it must have been handed."""
    from mlops import steps
    from mlops.data_policy import retraining_policy

    params = task_params(params_json)
    start, end = check_window(params.get("start", ""), params.get("end", ""))
    config = training_config(load_task_config(config_path), params)
    policy = retraining_policy(config, params)  # the data policy params over the config's [data]
    config, (start, end) = policy.apply(config), policy.csv_window(start, end)
    ctx = steps.open_run(config, pipeline_run_id(dag_id, airflow_run_id), trigger_of(params.get("trigger"), run_type),
                         airflow_dag_id=dag_id, airflow_run_id=airflow_run_id)
    done = {name: steps.StepOutcome.from_json(value) for name, value in dict(upstream or {}).items()}
    missing = [name for name in needs if name not in done]
    if missing:
        raise RuntimeError(f"{task} needs the outcomes of {missing} from the tasks before it (XCom)")
    print(f"{task}: pipeline run {ctx.run.run_id} (metadata: {ctx.run.store.description}); "
          f"trigger {ctx.run.trigger.kind}", flush=True)
    return TrainingRun(config, ctx, params, start, end, done)


def run_training_task(step: str, *, config_path: str, dag_id: str, airflow_run_id: str, run_type: str,
                      params_json: str | Mapping[str, Any], upstream: Mapping[str, Any] | None = None,
                      prepared: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Runs one pipeline step for the `taxi_training` DAG; returns every outcome so far (for XCom).

    Each task receives the outcomes of the steps before it and passes them on with its own, so a
    step can use any earlier step's artifacts while the DAG's edges stay the chain
    ingest -> clean -> ... -> push (plus `prepare_transform` beside validate). `prepared`: for
    transform, what `prepare_transform` returned (`run_prepare_transform_task`).
    """
    with exit_on_user_error(step):
        from mlops import steps

        if step not in steps.STEP_NAMES:
            raise ValueError(f"unknown step {step!r}; steps: {steps.STEP_NAMES}")
        run = open_training_run(step, steps.STEP_NAMES[: steps.STEP_NAMES.index(step)], config_path=config_path,
                                dag_id=dag_id, airflow_run_id=airflow_run_id, run_type=run_type,
                                params_json=params_json, upstream=upstream)
        outcome = _run_step(steps, run, step, prepared)
        print(f"{step}: {'reused' if outcome.cached else 'done'} in {outcome.seconds:.1f}s: {outcome.summary}", flush=True)
        return {**{name: value.to_json() for name, value in run.done.items()}, step: outcome.to_json()}


def _run_step(steps: Any, run: TrainingRun, step: str, prepared: Mapping[str, Any] | None) -> Any:
    ctx, done, config = run.ctx, run.done, run.config
    if step == "ingest":
        csv_path = Path(run.params.get("csv_path") or config.data.csv_path)
        return steps.ingest(ctx, csv_path, run.start.isoformat(), run.end.isoformat())
    if step == "clean":
        return steps.clean(ctx, done["ingest"].outputs["examples"])
    if step == "validate":
        cleaned = done["clean"].outputs
        return steps.validate(ctx, done["ingest"].outputs["examples"], cleaned["cleaned"], cleaned["rejected"])
    if step == "transform":
        return steps.transform(ctx, done["clean"].outputs["cleaned"], done["validate"].outputs["anomalies"],
                               prepared=prepared_folder(prepared))
    if step == "train":
        transformed = done["transform"].outputs
        return steps.train(ctx, transformed["transformed"], transformed["transform_graph"])
    if step == "evaluate":
        return steps.evaluate(ctx, done["train"].outputs["model"], done["clean"].outputs["cleaned"],
                              recent=done["ingest"].outputs["examples"])
    return steps.push(ctx, done["train"].outputs["model"], done["evaluate"].outputs["blessing"])


# --- taxi_training: transform's Beam job beside validation ---

# The folder of a run where `prepare_transform` runs transform's job: fixed, so a retry clears and
# reuses it and the teardown knows what it may remove.
PREPARED_TRANSFORM_DIR = ".transform-prepared"


def run_prepare_transform_task(*, config_path: str, dag_id: str, airflow_run_id: str, run_type: str,
                               params_json: str | Mapping[str, Any],
                               upstream: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """taxi_training's `prepare_transform` (a setup task, beside `validate`): transform's Beam job on
    the cleaned rows before validation has judged them, adopted by `transform` only once it passed.

    It ends successfully whether or not it prepared anything (the result and its log say which and
    why): Airflow requires a setup's work tasks to need its success, and a job not started or failed
    here only means `transform` runs the job itself.
    """
    with exit_on_user_error("prepare_transform"):
        run = open_training_run("prepare_transform", ("clean",), config_path=config_path, dag_id=dag_id,
                                airflow_run_id=airflow_run_id, run_type=run_type, params_json=params_json,
                                upstream=upstream)
        return prepare_transform_beside_validation(run.config, run.ctx.run_dir, run.done["clean"])


def prepare_transform_beside_validation(config: Any, run_dir: Path, clean: Any) -> dict[str, Any]:
    """Runs transform's Beam job (`steps.prepare_transform`) into `run_dir/.transform-prepared`
    (cleared first: a retry starts afresh) when `mlops.pipeline.transform_beside_validation` says so
    (the CLI's rule). Returns `{"folder", "prepared", "reason"}` for XCom. A job that fails is
    reported here (its traceback, an ERROR line), its folder removed, and the task goes on: the
    Transform step then runs the job itself and reports its error where the run stops.

    In this process, not a spawned one as the CLI's `TransformBesideValidation`: a spawned child
    re-runs its parent's main script, and Airflow's `external_python` script is not guarded.
    """
    from mlops import steps
    from mlops.pipeline import transform_beside_validation

    folder = Path(run_dir) / PREPARED_TRANSFORM_DIR
    shutil.rmtree(folder, ignore_errors=True)
    decision = transform_beside_validation(config, clean)
    print(f"prepare_transform: {decision.reason}", flush=True)
    result = {"folder": str(folder), "prepared": False, "reason": decision.reason}
    if not decision.start:
        return result
    folder.mkdir(parents=True)
    started = time.time()
    try:
        steps.prepare_transform(config, clean.outputs["cleaned"], folder)
    except ImportError:
        raise  # a broken install fails the task: transform would fail the same way
    except Exception as err:  # noqa: BLE001 - any failure of the job: transform runs it and reports it
        traceback.print_exc()
        shutil.rmtree(folder, ignore_errors=True)
        reason = (f"its Beam job failed ({type(err).__name__}: {str(err).strip()[:300]}): transform runs its own job "
                  f"after validation and reports any error")
        print(f"ERROR prepare_transform: {reason}", file=sys.stderr, flush=True)
        return {**result, "reason": reason}
    print(f"prepare_transform: prepared in {folder} in {time.time() - started:.1f}s; "
          f"transform adopts it once validation passed", flush=True)
    return {**result, "prepared": True}


def prepared_folder(prepared: Mapping[str, Any] | None) -> Path | None:
    """The folder to hand the Transform step: where `prepare_transform` made a transform, if it did
    and the folder holds it (the step itself refuses one made from other inputs); else None."""
    from mlops.steps import PREPARED_TRANSFORM_FILE

    if not prepared or not prepared.get("prepared"):
        why = f"prepare_transform: {prepared['reason']}" if prepared else "prepare_transform did not run"
        print(f"transform: runs its own Beam job ({why})", flush=True)
        return None
    folder = Path(prepared["folder"])
    if not (folder / PREPARED_TRANSFORM_FILE).is_file():
        print(f"transform: runs its own Beam job ({folder} holds no prepared transform)", flush=True)
        return None
    print(f"transform: adopts the transform prepared beside validation in {folder} "
          f"(if it was made from these cleaned rows by this code)", flush=True)
    return folder


def run_discard_prepared_transform_task(prepared: Mapping[str, Any] | None) -> dict[str, Any]:
    """taxi_training's teardown of `prepare_transform`: removes its folder, whatever happened to
    validate and transform (after an adoption only a record is left; after a failed validation the
    whole transform, ~1 GB at 1.5M rows). Only a folder named PREPARED_TRANSFORM_DIR is removed."""
    folder = Path(prepared["folder"]) if prepared and prepared.get("folder") else None
    if folder is None or not folder.exists():
        print(f"discard_prepared_transform: nothing to remove{f' ({folder} does not exist)' if folder else ''}", flush=True)
        return {"removed": None, "bytes": 0}
    if folder.name != PREPARED_TRANSFORM_DIR:
        raise ValueError(f"discard_prepared_transform removes only a {PREPARED_TRANSFORM_DIR} folder, not {folder}")
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    shutil.rmtree(folder)
    print(f"discard_prepared_transform: removed {folder} ({size / 2**20:.1f} MiB)", flush=True)
    return {"removed": str(folder), "bytes": size}


# --- taxi_monitoring ---


def monitoring_window(params: Mapping[str, Any], interval_start: str | None, interval_end: str | None,
                      now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """The window to check: explicit params, else the run's data interval, else the last full hour."""
    from core.errors import DataError

    def parse(name: str, text: Any) -> dt.datetime:
        try:
            value = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        except ValueError:
            raise DataError(f"{name} must be an ISO 8601 date or time (e.g. 2026-11-23T10:00:00Z), got {text!r}") from None
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)

    if params.get("window_start") or params.get("window_end"):
        if not (params.get("window_start") and params.get("window_end")):
            raise DataError("give both window_start and window_end, or neither (then the run's data interval is checked)")
        start, end = parse("window_start", params["window_start"]), parse("window_end", params["window_end"])
    elif interval_start and interval_end and interval_start not in ("None", "") and interval_end != interval_start:
        start, end = parse("data_interval_start", interval_start), parse("data_interval_end", interval_end)
    else:
        now = now or dt.datetime.now(dt.timezone.utc)
        end = now.replace(minute=0, second=0, microsecond=0)
        start = end - dt.timedelta(hours=1)
    if end <= start:
        raise DataError(f"the monitoring window is empty: end {end.isoformat()} is not after start {start.isoformat()}")
    return start, end


def retraining_conf(result: Mapping[str, Any], params: Mapping[str, Any], monitoring_run_id: str) -> dict[str, Any]:
    """The conf with which the monitoring DAG triggers taxi_training (docs/ARCHITECTURE.md)."""
    from mlops.data_policy import policy_params

    failed = [check for check in result.get("checks", []) if not check.get("passed")]
    artifact = result.get("artifact") or {}
    # The data policy for the retraining; its production data defaults to the very logs that drifted.
    policy = {**({"production_logs": params["log_dir"]} if params.get("log_dir") else {}), **policy_params(params)}
    return {
        "trigger": {
            "kind": "drift_check",
            "checks": [check["name"] for check in failed],
            "evidence": {check["name"]: {"value": check.get("value"), "threshold": check.get("threshold"),
                                         **dict(check.get("evidence") or {})} for check in failed},
            "drift_check_artifact_id": artifact.get("id") if isinstance(artifact, Mapping) else artifact,
            "monitoring_run_id": monitoring_run_id,
            "window_start": result.get("window_start"),
            "window_end": result.get("window_end"),
            "data_policy": policy,
        },
        "start": params.get("retrain_start") or DEFAULT_RETRAINING_WINDOW[0],
        "end": params.get("retrain_end") or DEFAULT_RETRAINING_WINDOW[1],
        **policy,
    }


def run_monitoring_task(*, config_path: str, dag_id: str, airflow_run_id: str, run_type: str,
                        params_json: str | Mapping[str, Any], interval_start: str | None = None,
                        interval_end: str | None = None) -> dict[str, Any]:
    """Runs the drift checks on the window's prediction logs; returns the result and, if a check failed,
    the conf for retraining. Exits with EXIT_NOTHING_TO_CHECK (a skipped task) when the window holds no logs.
    """
    with exit_on_user_error("check_drift"):
        from mlops.data_policy import SINCE_SERVED_MODEL, retraining_policy
        from monitoring.monitor import run_monitoring

        params = task_params(params_json)
        config = load_task_config(config_path)
        # A bad data policy param fails the run now, not at the next drift ("served_model" is resolved then).
        retraining_policy(config, {**params, "production_since": None}
                          if params.get("production_since") == SINCE_SERVED_MODEL else params)
        start, end = monitoring_window(params, interval_start, interval_end)
        run_id = pipeline_run_id(dag_id, airflow_run_id)
        log_dir = Path(params["log_dir"]) if params.get("log_dir") else None
        print(f"check_drift: prediction logs of [{start.isoformat()}, {end.isoformat()})"
              f"{f' in {log_dir}' if log_dir else ''}", flush=True)
        result = run_monitoring(config, window_start=start, window_end=end, log_dir=log_dir, run_id=run_id,
                                trigger=trigger_of(params.get("trigger"), run_type))
        document = xcom_jsonable(result.to_json())
        for check in result.checks:
            mark = "passed" if check.passed else "FAILED"
            print(f"check_drift:   {check.name:<24} {mark:<7} value={check.value} threshold={check.threshold}", flush=True)
        if result.rows == 0:
            print("check_drift: no predictions were logged in the window; nothing to check", flush=True)
            raise SystemExit(EXIT_NOTHING_TO_CHECK)
        passed = bool(result.passed)
        print(f"check_drift: {result.rows} predictions checked: "
              f"{'all checks passed' if passed else 'failed: ' + ', '.join(c.name for c in result.failed)}", flush=True)
        conf = None if passed else retraining_conf(document, params, run_id)
        decision = still_failing = None
        if conf is not None:
            from mlops.retraining import RETRAIN, check_still_failing, decide_retraining, served_data_end

            still_failing = check_still_failing(
                config, run_id, model_name=result.model_name, served_version=result.model_version,
                failed_checks=[check.name for check in result.failed], drift_check=result.artifact)
            if still_failing is not None:
                print(f"check_drift: {still_failing.message}", flush=True)

            if conf.get("production_since") == SINCE_SERVED_MODEL:
                since = served_data_end(steps_store(config, run_id), result.model_name, result.model_version)
                conf["trigger"]["data_policy"]["production_since_resolved"] = since
                conf["production_since"] = since or ""
            # What the triggered run would learn from, under the policy it will be given.
            policy = retraining_policy(config, conf)
            first, last = policy.csv_window(*check_window(conf["start"], conf["end"]))
            decision = decide_retraining(
                policy.apply(config), run_id, model_name=result.model_name, served_version=result.model_version,
                failed_checks=[check.name for check in result.failed],
                csv_path=config.data.csv_path, start=first.isoformat(), end=last.isoformat(),
                drift_check=result.artifact)
            print(f"check_drift: {decision.message}", flush=True)
            if decision.action != RETRAIN:
                conf = None
        return {
            "passed": passed,
            "failed_checks": [check.name for check in result.failed],
            "rows": result.rows,
            "result": document,
            "training_conf": conf,
            "retraining": decision.to_json() if decision else None,
            "still_failing": still_failing.to_json() if still_failing else None,
        }


def steps_store(config: Any, run_id: str) -> Any:
    """The ML Metadata store, opened the way the steps open it (the run's context)."""
    from mlops import steps

    return steps.open_run(config, run_id).run.store


def xcom_jsonable(value: Any) -> Any:
    """Plain JSON types only (XCom is JSON): dates as ISO text, paths as strings, NaN as None."""
    return json.loads(json.dumps(value, default=str), parse_constant=lambda _: None)


def gateway_client(params: Mapping[str, Any]) -> Any:
    """The gateway admin client; the token comes from the environment, never from a DAG param."""
    from serving.rollout import ADMIN_TOKEN_ENV, GatewayAdminClient, gateway_url

    url = gateway_url(params.get("gateway_url"))
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not token:
        from core.errors import DataError

        raise DataError("MLOPS_GATEWAY_ADMIN_TOKEN is not set in Airflow's environment: the rollout needs the "
                        "gateway's admin token (set it before `python -m mlops.airflow start`)")
    return GatewayAdminClient(url, token)


def serving_labels(config: Any) -> dict[str, int]:
    from serving.model_config import labels, read_model_config

    path = config.serving.model_config_file
    return labels(read_model_config(path), config.serving.model_name) if Path(path).exists() else {}


def newest_version(config: Any) -> int | None:
    from serving.model_config import version_directories

    model_root = Path(config.serving.model_base_dir) / config.serving.model_name
    versions = version_directories(model_root) if model_root.is_dir() else []
    return versions[-1] if versions else None


# --- taxi_batch_predict ---

# Until metadata/store.py declares them, the batch-scoring types are registered here on first use.
BATCH_EXECUTION_TYPE = "BatchPredict"
BATCH_ARTIFACT_TYPE = "BatchPredictions"


def _ensure_batch_types(store: Any) -> None:
    from ml_metadata.proto import metadata_store_pb2

    from metadata import store as store_module

    store_module.ARTIFACT_TYPES.setdefault(BATCH_ARTIFACT_TYPE, {"rows": metadata_store_pb2.INT, "model_version": metadata_store_pb2.INT})
    if BATCH_ARTIFACT_TYPE not in store.type_ids:
        artifact_type = metadata_store_pb2.ArtifactType(name=BATCH_ARTIFACT_TYPE)
        for key, value_type in store_module.ARTIFACT_TYPES[BATCH_ARTIFACT_TYPE].items():
            artifact_type.properties[key] = value_type
        store.type_ids[BATCH_ARTIFACT_TYPE] = store.put_artifact_type(artifact_type, can_add_fields=True)
    if BATCH_EXECUTION_TYPE not in store.type_ids:
        execution_type = metadata_store_pb2.ExecutionType(name=BATCH_EXECUTION_TYPE)
        for key, value_type in store_module.EXECUTION_PROPERTIES.items():
            execution_type.properties[key] = value_type
        store.type_ids[BATCH_EXECUTION_TYPE] = store.put_execution_type(execution_type, can_add_fields=True)


def run_batch_predict_task(*, config_path: str, dag_id: str, airflow_run_id: str, run_type: str,
                           params_json: str | Mapping[str, Any]) -> dict[str, Any]:
    """Scores a CSV with a served model version (default: `stable`) and records it in MLMD."""
    with exit_on_user_error("score"):
        from beam_jobs.batch_predict import batch_predict
        from mlops import steps
        from core.errors import DataError

        params = task_params(params_json)
        config = load_task_config(config_path)
        model = config.serving.model_name
        run_id = pipeline_run_id(dag_id, airflow_run_id)
        if params.get("model_version") not in (None, ""):
            version = int(params["model_version"])
        else:
            version = serving_labels(config).get("stable") or newest_version(config)
            if version is None:
                raise DataError(f"no served version of {model} (no `stable` label in {config.serving.model_config_file} "
                                f"and nothing under {config.serving.model_base_dir / model}); run taxi_training first")
        model_dir = Path(config.serving.model_base_dir) / model / str(version)
        if not model_dir.is_dir():
            raise DataError(f"{model} version {version} is not in {config.serving.model_base_dir / model}")
        csv_path = Path(params.get("csv_path") or config.data.csv_path).resolve()
        output = Path(params.get("output_path") or config.pipeline_root / "batch_predictions" / run_id)
        ctx = steps.open_run(config, run_id, trigger_of(params.get("trigger"), run_type),
                             airflow_dag_id=dag_id, airflow_run_id=airflow_run_id)
        _ensure_batch_types(ctx.run.store)
        raw, rows = steps.register_csv(ctx, csv_path)
        csv_path = Path(raw.uri)  # the file itself when csv_path names a folder holding one
        inputs = {"raw_data": raw}
        from metadata.lineage import pushed_model_ref

        pushed = pushed_model_ref(ctx.run.store, model, version)
        if pushed is not None:
            inputs["pushed_model"] = pushed
        parameters = {"model_name": model, "model_version": version,
                      "output_format": params.get("output_format") or DEFAULT_BATCH_OUTPUT_FORMAT}
        print(f"score: {csv_path} with {model}:{version} ({model_dir}) -> {output}", flush=True)
        with ctx.run.step(BATCH_EXECUTION_TYPE, inputs, parameters, use_cache=False) as record:
            result = batch_predict(csv_path, model_dir, output, model_version=version,
                                   output_format=parameters["output_format"], beam_args=ctx.beam_args(),
                                   progress=steps.job_progress("score", rows=rows))
            record.output("predictions", BATCH_ARTIFACT_TYPE, str(output), {"rows": result.rows_scored, "model_version": version})
            record.record(rows_read=result.rows_read, rows_scored=result.rows_scored, rows_rejected=result.rows_rejected,
                          rejected_by_reason=result.rejected_by_reason, positive_rate=result.positive_rate,
                          mean_probability=result.mean_probability, model_version=version)
        print(f"score: {result.rows_scored} of {result.rows_read} rows scored ({result.rows_rejected} rejected), "
              f"positive rate {result.positive_rate}, predictions in {output}", flush=True)
        return {"execution_id": record.execution_id, "model_version": version, "output_path": str(output),
                **xcom_jsonable(dataclasses.asdict(result))}


