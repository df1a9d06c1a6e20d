"""What the scheduler and a data engineer see: the DAGs import cleanly, are light, and are wired as documented."""

from __future__ import annotations

import ast
import copy
import json
import subprocess
import sys

import pytest

from tests.dags.conftest import DAG_IDS, DAGS_FOLDER, PROJECT_ROOT

# Heavy or project modules a DAG file must not import at module level: the scheduler would pay for
# them on every parse, and the Airflow environment cannot even install the ML ones.
FORBIDDEN_MODULES = ("tensorflow", "tensorflow_transform", "tensorflow_data_validation", "tfx_bsl", "apache_beam",
                     "ml_metadata", "pyarrow", "pandas", "numpy", "mlops", "beam_jobs", "metadata", "trainer",
                     "serving", "monitoring", "transforms", "validation")
ALLOWED_IMPORT_ROOTS = {"__future__", "pendulum", "airflow"}

EDGES = {
    # transform's Beam job beside validation: clean forks to validate and the setup prepare_transform,
    # transform joins both; the teardown follows its setup and transform (the work between them).
    "taxi_training": {("ingest", "clean"), ("clean", "validate"), ("clean", "prepare_transform"),
                      ("validate", "transform"), ("prepare_transform", "transform"),
                      ("prepare_transform", "discard_prepared_transform"), ("transform", "discard_prepared_transform"),
                      ("transform", "train"), ("train", "evaluate"), ("evaluate", "push")},
    # check_drift also feeds trigger_training (the conf) and no_retraining (the row count) through XCom.
    "taxi_monitoring": {("check_drift", "decide"), ("decide", "trigger_training"), ("decide", "no_retraining"),
                        ("decide", "no_new_data"), ("check_drift", "no_new_data"),
                        ("check_drift", "trigger_training"), ("check_drift", "no_retraining"),
                        ("decide", "still_failing"), ("check_drift", "still_failing")},
    "taxi_rollout": {("choose_action", "canary"), ("choose_action", "blue_green"), ("choose_action", "rollback"),
                     ("canary", "approval_required"), ("approval_required", "approve_promotion"),
                     ("approve_promotion", "promote_canary"), ("approve_promotion", "roll_back_canary")},
    "taxi_batch_predict": set(),
    # collect_cases also hands gather_answers the case list; close_cases gets the answers. Each case's
    # group (mapped over required_actions) writes its answer back as soon as it is given.
    "taxi_review": {("collect_cases", "required_actions"), ("required_actions", "review_case.ask"),
                    ("required_actions", "review_case.write_back"), ("review_case.ask", "review_case.write_back"),
                    ("collect_cases", "gather_answers"), ("review_case.write_back", "gather_answers"),
                    ("gather_answers", "close_cases")},
    # check_readiness also feeds stay, move_down and apply_move (the degrees) through XCom; record_refusal
    # follows apply_move only (it runs when a Reject or a timeout skipped it).
    "taxi_automation": {("check_readiness", "decide"), ("decide", "ask_approval"), ("decide", "move_down"),
                        ("decide", "stay"), ("check_readiness", "move_down"), ("check_readiness", "stay"),
                        ("check_readiness", "apply_move"), ("ask_approval", "apply_move"),
                        ("apply_move", "record_refusal")},
}
TASKS = {
    "taxi_training": {"ingest", "validate", "clean", "transform", "train", "evaluate", "push", "prepare_transform",
                      "discard_prepared_transform"},
    "taxi_monitoring": {"check_drift", "decide", "trigger_training", "no_retraining", "no_new_data", "still_failing"},
    "taxi_rollout": {"choose_action", "canary", "blue_green", "rollback", "approval_required", "approve_promotion",
                     "promote_canary", "roll_back_canary"},
    "taxi_batch_predict": {"score"},
    "taxi_review": {"collect_cases", "required_actions", "review_case.ask", "review_case.write_back", "gather_answers",
                    "close_cases"},
    "taxi_automation": {"check_readiness", "decide", "ask_approval", "apply_move", "record_refusal", "move_down", "stay"},
}


def edges_of(dag) -> set[tuple[str, str]]:
    return {(task.task_id, downstream) for task in dag.tasks for downstream in task.downstream_task_ids}


def test_every_dag_file_imports_without_errors_and_defines_its_dag(dagbag):
    assert dagbag.import_errors == {}
    assert sorted(dagbag.dags) == list(DAG_IDS)
    for dag_id in DAG_IDS:
        dag = dagbag.dags[dag_id]
        assert dag.fileloc == str(DAGS_FOLDER / f"{dag_id}.py")  # dag_id = file name
        assert dag.doc_md and len(dag.doc_md) > 200, f"{dag_id} needs doc_md a data engineer can read"
        for task in dag.tasks:
            assert task.doc_md, f"{dag_id}.{task.task_id} has no doc_md"


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_task_ids_and_edges_are_as_documented(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert {task.task_id for task in dag.tasks} == TASKS[dag_id]
    assert edges_of(dag) == EDGES[dag_id]


def test_ml_tasks_run_in_the_ml_runtime_and_user_errors_are_not_retried(dagbag):
    ml_python = str(PROJECT_ROOT / ".venvs" / "ml" / "bin" / "python")
    ml_tasks = {"taxi_training": TASKS["taxi_training"], "taxi_monitoring": {"check_drift"},
                "taxi_rollout": {"canary", "blue_green", "rollback", "promote_canary", "roll_back_canary"},
                "taxi_batch_predict": {"score"},
                "taxi_automation": {"check_readiness", "apply_move", "record_refusal", "move_down"},
                "taxi_review": {"collect_cases", "close_cases"}}
    for dag_id, task_ids in ml_tasks.items():
        dag = dagbag.dags[dag_id]
        for task_id in task_ids:
            task = dag.get_task(task_id)
            assert type(task).__name__ == "_PythonExternalDecoratedOperator", task_id
            assert str(task.python) == ml_python
            assert task.retries == 2 and task.retry_exponential_backoff == 2.0
            assert task.on_failure_callback
            policy = task.retry_policy
            import subprocess as sp

            decision = policy.evaluate(sp.CalledProcessError(2, ["python"]), try_number=1, max_tries=3)
            assert decision.action.value == "fail", f"{dag_id}.{task_id} would retry a data error"
            assert policy.evaluate(RuntimeError("database is locked"), try_number=1, max_tries=3).action.value == "default"


def test_transform_needs_validate_and_the_prepared_folder_is_torn_down_whatever_happened(dagbag):
    """prepare_transform is the setup of the teardown discard_prepared_transform; transform, the work
    between them, needs validate's success (never runs on bad data) and prepare_transform's."""
    training = dagbag.dags["taxi_training"]
    prepare, transform = training.get_task("prepare_transform"), training.get_task("transform")
    discard = training.get_task("discard_prepared_transform")
    assert (prepare.is_setup, prepare.is_teardown) == (True, False)
    assert (discard.is_teardown, discard.is_setup) == (True, False)
    assert discard.trigger_rule == "all_done_setup_success"  # runs once transform is done, failed or not
    assert discard.on_failure_fail_dagrun is False  # a cleanup that failed does not fail a run that trained
    assert transform.trigger_rule == "all_success" and transform.upstream_task_ids == {"validate", "prepare_transform"}
    assert not {t.task_id for t in training.tasks if t.is_setup or t.is_teardown} & {"validate", "transform", "train"}
    # Only transform is in the setup's scope: clearing train does not rerun the Beam job beside validation.
    assert {t.task_id for t in training.get_task("train").get_upstreams_only_setups()} == set()
    assert {t.task_id for t in transform.get_upstreams_only_setups_and_teardowns()} == {"prepare_transform",
                                                                                         "discard_prepared_transform"}
    # The run's state is the pipeline's: push is its only leaf (teardowns are not counted).
    assert {t.task_id for t in training.tasks if not t.downstream_list and not t.is_teardown} == {"push"}


def test_review_asks_one_required_action_per_case_and_closes_whatever_the_answers(dagbag):
    review = dagbag.dags["taxi_review"]
    ask = review.get_task("review_case.ask")
    assert type(ask).__mro__[1].__name__ == "HITLOperator" and type(ask.task_group).__name__ == "MappedTaskGroup"
    assert ask.retries == 0  # a timed-out case is closed as unanswered, never asked again
    assert ask.options == ["big_tipper", "not_big_tipper", "cannot tell"]
    assert review.get_task("review_case.write_back").trigger_rule == "all_success"  # only an answered case
    for task_id in ("gather_answers", "close_cases"):
        assert review.get_task(task_id).trigger_rule == "all_done", task_id  # a timeout must not stop the write-back
    assert review.catchup is False and review.max_active_runs > 1  # a run waiting for answers must not block the next


def test_push_updates_the_asset_that_schedules_the_rollout(dagbag):
    push = dagbag.dags["taxi_training"].get_task("push")
    [asset] = push.outlets
    rollout = dagbag.dags["taxi_rollout"]
    assert asset.uri == "mlops://models/taxi"
    assert [a.uri for a in rollout.timetable.asset_condition.objects] == [asset.uri]


def test_the_approval_gate_asks_with_the_canary_evidence_and_each_answer_runs_its_task(dagbag):
    rollout = dagbag.dags["taxi_rollout"]
    approval = rollout.get_task("approve_promotion")
    assert type(approval).__mro__[1].__name__ == "ApprovalOperator"
    assert approval.options == ["Approve", "Reject"] and approval.defaults == ["Reject"]  # a timeout rejects
    assert sorted(approval.downstream_task_ids) == ["promote_canary", "roll_back_canary"]
    assert "evidence_markdown" in approval.body
    # Default trigger rules all the way: a failed canary leaves upstream_failed leaves, so the run fails.
    assert {rollout.get_task(t).trigger_rule for t in ("approval_required", "promote_canary", "roll_back_canary")} == {"all_success"}


def test_monitoring_runs_hourly_and_triggers_training(dagbag):
    monitoring = dagbag.dags["taxi_monitoring"]
    assert type(monitoring.timetable).__name__ == "CronDataIntervalTimetable"  # a run checks its past hour
    assert monitoring.timetable.expression == "0 * * * *"
    assert monitoring.catchup is False
    trigger = monitoring.get_task("trigger_training")
    assert type(trigger).__name__ == "TriggerDagRunOperator" and trigger.trigger_dag_id == "taxi_training"
    assert monitoring.get_task("check_drift").skip_on_exit_code == [99]


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_dag_files_import_nothing_heavy_at_module_level(dag_id):
    """Imports the file alone in a fresh interpreter (project on sys.path) and lists what got loaded."""
    script = (
        "import json, runpy, sys\n"
        f"sys.path.insert(0, {str(PROJECT_ROOT)!r})\n"
        f"runpy.run_path({str(DAGS_FOLDER / (dag_id + '.py'))!r})\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(FORBIDDEN_MODULES)!r}))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_module_level_imports_are_stdlib_pendulum_and_airflow_only(dag_id):
    """A static check as well: the ML environment's modules do not even exist where Airflow parses."""
    tree = ast.parse((DAGS_FOLDER / f"{dag_id}.py").read_text())
    roots = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots - set(sys.stdlib_module_names) - ALLOWED_IMPORT_ROOTS == set()


def _validate(dagbag, dag_id: str, conf: dict) -> dict:
    """What Airflow does with a run's conf when the run is created (REST API, UI, TriggerDagRunOperator)."""
    from airflow.serialization.serialized_objects import DagSerialization

    dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dagbag.dags[dag_id]))
    return copy.deepcopy(dag.params).deep_merge(conf).validate()


def test_training_params_have_defaults_and_reject_a_bad_window_or_hyperparameters(dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    defaults = _validate(dagbag, "taxi_training", {})
    assert (defaults["start"], defaults["end"], defaults["csv_path"], defaults["trigger"]) == ("2013-01-01", "2015-01-01", "", {})
    assert all(defaults[name] is None for name in ("learning_rate", "train_steps", "batch_size", "hidden_units", "seed"))
    good = _validate(dagbag, "taxi_training", {"start": "2013-01-01", "end": "2013-04-01", "train_steps": 100,
                                                "hidden_units": [16, 8], "learning_rate": 0.01})
    assert good["hidden_units"] == [16, 8]
    bad = {
        "start": "2013-02-30",  # no such day
        "end": "01/04/2013",  # not ISO
        "learning_rate": 1.5,
        "train_steps": 0,
        "batch_size": "forty",
        "hidden_units": [64, 0],
        "trigger": "drift",
    }
    for name, value in bad.items():
        with pytest.raises(ParamValidationError, match=f"param {name}"):
            _validate(dagbag, "taxi_training", {name: value})


def test_rollout_batch_and_monitoring_params_are_validated(dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    assert _validate(dagbag, "taxi_rollout", {})["shares"] == [5, 25, 50, 100]
    for conf in ({"action": "yolo"}, {"shares": [5, 250]}, {"observe_seconds": 0}, {"max_error_rate": 2},
                 {"version": 0}, {"approval": "maybe"}, {"approval_timeout_minutes": 0}):
        with pytest.raises(ParamValidationError):
            _validate(dagbag, "taxi_rollout", conf)
    assert _validate(dagbag, "taxi_batch_predict", {})["output_format"] == "jsonl"
    with pytest.raises(ParamValidationError, match="output_format"):
        _validate(dagbag, "taxi_batch_predict", {"output_format": "xlsx"})
    with pytest.raises(ParamValidationError, match="retrain_end"):
        _validate(dagbag, "taxi_monitoring", {"retrain_end": "soon"})


def test_review_params_default_to_the_config_and_refuse_negative_bounds(dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    defaults = _validate(dagbag, "taxi_review", {})
    assert (defaults["max_open_cases"], defaults["response_timeout_minutes"]) == (0, 0)  # 0 = mlops.toml's [review]
    for conf in ({"max_open_cases": -1}, {"response_timeout_minutes": -5}, {"max_open_cases": "many"}):
        with pytest.raises(ParamValidationError):
            _validate(dagbag, "taxi_review", conf)


def test_automation_asks_a_person_before_a_move_up_and_records_a_refusal(dagbag):
    automation = dagbag.dags["taxi_automation"]
    ask = automation.get_task("ask_approval")
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    assert isinstance(ask, ApprovalOperator) and ask.defaults == ["Reject"]  # no answer: no move
    assert automation.get_task("record_refusal").trigger_rule == "all_skipped"
    assert automation.get_task("record_refusal").skip_on_exit_code == [99]
    assert _validate(dagbag, "taxi_automation", {})["response_timeout"] == 86_400
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="response_timeout"):
        _validate(dagbag, "taxi_automation", {"response_timeout": 0})
