"""Every value a DAG file repeats from the project's code equals its source.

The DAG files are self-contained (docs/AIRFLOW.md: Airflow 3 puts the DAGs folder on sys.path only
inside its own processes, so a plain DagBag could not import a shared helper), so they carry
copies: the task side's exit codes, the launcher's default paths, the pipeline's step names and the
Param defaults the task side also falls back to. Changing one side without the other fails here.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import runpy
from typing import Any

import pytest

from core.config import ROLLOUT_APPROVAL_MODES, DataConfig, ServingConfig, TrainingConfig
from mlops.airflow import launcher, rollout_tasks, tasks
from mlops.data_policy import LABEL_POLICIES, POLICY_PARAMS
from serving.rollout import DEFAULT_GATEWAY_URL, CanaryThresholds
from tests.dags.conftest import DAG_IDS, DAGS_FOLDER, run_in_ml


@functools.cache
def dag_module(dag_id: str) -> dict[str, Any]:
    """The DAG file's module globals, as Airflow's DAG processor sees them."""
    return runpy.run_path(str(DAGS_FOLDER / f"{dag_id}.py"))


def param_default(dagbag, dag_id: str, name: str) -> Any:
    return dagbag.dags[dag_id].params.get_param(name).value


def param_schema(dagbag, dag_id: str, name: str) -> dict[str, Any]:
    return dagbag.dags[dag_id].params.get_param(name).schema


def training_task_order(dag) -> list[str]:
    """taxi_training's task ids along its chain of steps: each step's one downstream task that is
    neither a setup nor a teardown (prepare_transform and its teardown, beside validate; its edges
    are checked in test_dag_structure)."""
    [current] = [task for task in dag.tasks if not task.upstream_task_ids]
    order = [current.task_id]
    while current.downstream_task_ids:
        [current] = [task for task in current.downstream_list if not (task.is_setup or task.is_teardown)]
        order.append(current.task_id)
    return order


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_the_user_error_exit_codes_are_the_task_sides(dag_id):
    user_errors = dag_module(dag_id)["USER_ERRORS"]
    assert list(user_errors) == [tasks.EXIT_DATA_ERROR, tasks.EXIT_NOT_BLESSED, tasks.EXIT_ROLLED_BACK]


def test_every_dag_explains_failures_with_the_same_callback_and_words():
    """The four copies of `explain_failure` and `USER_ERRORS` are one design: they change together."""
    def callback(dag_id: str) -> str:
        tree = ast.parse((DAGS_FOLDER / f"{dag_id}.py").read_text())
        [function] = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "explain_failure"]
        return ast.dump(function)

    assert len({callback(dag_id) for dag_id in DAG_IDS}) == 1
    assert len({tuple(dag_module(dag_id)["USER_ERRORS"].items()) for dag_id in DAG_IDS}) == 1


def test_the_review_options_are_the_review_queues():
    from mlops.airflow import review_tasks

    assert dag_module("taxi_review")["REVIEW_OPTIONS"] == list(review_tasks.REVIEW_OPTIONS)
    assert run_in_ml("import json; from monitoring.review_queue import REVIEW_OPTIONS; print(json.dumps(REVIEW_OPTIONS))") == \
        list(review_tasks.REVIEW_OPTIONS)


def test_automation_skips_with_the_task_sides_exit_code_and_knows_its_approve_option(dagbag):
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    from mlops.airflow import automation_tasks

    assert dag_module("taxi_automation")["EXIT_NOTHING_TO_DO"] == automation_tasks.EXIT_NOTHING_TO_DO
    assert automation_tasks.APPROVE == ApprovalOperator.APPROVE


def test_a_window_without_predictions_skips_with_the_task_sides_exit_code(dagbag):
    assert dag_module("taxi_monitoring")["EXIT_NOTHING_TO_CHECK"] == tasks.EXIT_NOTHING_TO_CHECK
    assert dagbag.dags["taxi_monitoring"].get_task("check_drift").skip_on_exit_code == [tasks.EXIT_NOTHING_TO_CHECK]


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_the_ml_python_and_config_come_from_the_launchers_variables_and_defaults(dag_id, monkeypatch, tmp_path):
    layout = launcher.AirflowLayout()
    monkeypatch.delenv(launcher.ML_PYTHON_ENV, raising=False)
    monkeypatch.delenv(launcher.CONFIG_ENV, raising=False)
    defaults = runpy.run_path(str(DAGS_FOLDER / f"{dag_id}.py"))
    assert (defaults["ML_PYTHON"], defaults["CONFIG_PATH"]) == (str(layout.ml_python), str(layout.config_file))
    monkeypatch.setenv(launcher.ML_PYTHON_ENV, str(tmp_path / "python"))
    monkeypatch.setenv(launcher.CONFIG_ENV, str(tmp_path / "mlops.toml"))
    chosen = runpy.run_path(str(DAGS_FOLDER / f"{dag_id}.py"))
    assert (chosen["ML_PYTHON"], chosen["CONFIG_PATH"]) == (str(tmp_path / "python"), str(tmp_path / "mlops.toml"))


def test_training_params_default_to_the_task_sides_window_and_hyperparameters(dagbag):
    assert (param_default(dagbag, "taxi_training", "start"),
            param_default(dagbag, "taxi_training", "end")) == tasks.DEFAULT_TRAINING_WINDOW
    hyperparameters = [name for name in dagbag.dags["taxi_training"].params
                       if name not in ("start", "end", "csv_path", "trigger", "beam_args", *POLICY_PARAMS)]
    assert hyperparameters == list(tasks.HYPERPARAMETERS)
    assert all(param_default(dagbag, "taxi_training", name) is None for name in hyperparameters)  # None = mlops.toml's
    # training_config() overrides these fields of the config.
    assert set(tasks.HYPERPARAMETERS) <= {field.name for field in dataclasses.fields(TrainingConfig)}


@pytest.mark.parametrize("dag_id", ["taxi_training", "taxi_monitoring"])
def test_both_dags_declare_the_data_policy_params_empty_so_the_config_decides(dagbag, dag_id):
    declared = [name for name in dagbag.dags[dag_id].params if name in POLICY_PARAMS]
    assert declared == list(POLICY_PARAMS)
    assert all(param_default(dagbag, dag_id, name) in (None, "") for name in declared)  # empty = mlops.toml's
    assert param_schema(dagbag, dag_id, "label_policy")["enum"] == [None, *LABEL_POLICIES]
    assert all(DataConfig(label_policy=policy).label_policy == policy for policy in LABEL_POLICIES)  # the config's too
    # The two DAG files carry one copy each (they cannot share a module): the same schema, bar the wording.
    for name in POLICY_PARAMS:
        schemas = [{k: v for k, v in param_schema(dagbag, dag, name).items() if k != "description"}
                   for dag in ("taxi_training", "taxi_monitoring")]
        assert schemas[0] == schemas[1], name


def test_retraining_defaults_to_the_task_sides_window(dagbag):
    assert (param_default(dagbag, "taxi_monitoring", "retrain_start"),
            param_default(dagbag, "taxi_monitoring", "retrain_end")) == tasks.DEFAULT_RETRAINING_WINDOW


def test_rollout_actions_and_params_default_to_the_task_sides_and_the_canary_thresholds(dagbag):
    rollout = dagbag.dags["taxi_rollout"]
    assert dag_module("taxi_rollout")["ACTIONS"] == tasks.ROLLOUT_ACTIONS
    assert param_schema(dagbag, "taxi_rollout", "action")["enum"] == list(tasks.ROLLOUT_ACTIONS)
    assert param_default(dagbag, "taxi_rollout", "action") in tasks.ROLLOUT_ACTIONS
    # run_rollout_task is called with the task id as its action.
    assert rollout.get_task("choose_action").downstream_task_ids == set(tasks.ROLLOUT_ACTIONS)
    assert param_default(dagbag, "taxi_rollout", "shares") == list(tasks.DEFAULT_CANARY_SHARES)
    assert param_default(dagbag, "taxi_rollout", "observe_seconds") == tasks.DEFAULT_OBSERVE_SECONDS
    for field in dataclasses.fields(CanaryThresholds):
        assert param_default(dagbag, "taxi_rollout", field.name) == field.default, field.name
    assert DEFAULT_GATEWAY_URL in rollout.params.get_param("gateway_url").description


def test_the_approval_gate_uses_the_task_sides_names_and_the_configs_modes(dagbag):
    rollout = dag_module("taxi_rollout")
    assert rollout["APPROVAL_MODES"] == rollout_tasks.APPROVAL_MODES == ROLLOUT_APPROVAL_MODES
    assert ServingConfig().rollout_approval == "none"  # today's behaviour unless mlops.toml or the run asks
    assert param_default(dagbag, "taxi_rollout", "approval") is None  # None = mlops.toml's
    assert rollout["AWAITING_APPROVAL"] == rollout_tasks.AWAITING_APPROVAL
    assert (rollout["APPROVAL_TASK"], rollout["APPROVAL_OUTCOMES"], rollout["ANSWER_KEY"]) == (
        rollout_tasks.APPROVAL_TASK, rollout_tasks.APPROVAL_OUTCOMES, rollout_tasks.ANSWER_KEY)
    assert dagbag.dags["taxi_rollout"].get_task(rollout_tasks.APPROVAL_TASK).downstream_task_ids == set(rollout_tasks.APPROVAL_OUTCOMES)


def test_batch_predict_params_default_to_the_task_sides_format(dagbag):
    assert param_default(dagbag, "taxi_batch_predict", "output_format") == tasks.DEFAULT_BATCH_OUTPUT_FORMAT


def test_the_step_names_and_output_formats_are_the_ml_codes(dagbag):
    """What only the ML runtime can import: the pipeline's steps and the batch job's output formats."""
    ml_side = run_in_ml(
        """
        import json
        from beam_jobs.batch_predict import FORMATS
        from mlops.steps import STEP_NAMES

        print(json.dumps({"steps": list(STEP_NAMES), "formats": list(FORMATS)}))
        """
    )
    assert training_task_order(dagbag.dags["taxi_training"]) == ml_side["steps"]
    assert list(dag_module("taxi_training")["STEP_DOCS"]) == ml_side["steps"]
    assert param_schema(dagbag, "taxi_batch_predict", "output_format")["enum"] == ml_side["formats"]
