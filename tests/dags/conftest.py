"""The DAG tests run in the Airflow environment (`.venvs/airflow`), never importing TensorFlow.

Airflow reads its configuration when it is first imported, so the test home (a temp folder with
its own SQLite metadata DB) and the DAGs folder are set here, before any test module imports it.
What the ML side left behind (MLMD, pushed models) is inspected through the ML runtime's python
in a subprocess, the way Airflow itself runs the tasks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAGS_FOLDER = PROJECT_ROOT / "dags"
DAG_IDS = ("taxi_automation", "taxi_batch_predict", "taxi_monitoring", "taxi_review", "taxi_rollout", "taxi_training")
ML_PYTHON = Path(os.environ.get("MLOPS_ML_PYTHON") or PROJECT_ROOT / ".venvs" / "ml" / "bin" / "python")
AIRFLOW_BIN = Path(sys.executable).parent
TAXI_CSV = PROJECT_ROOT / "data" / "taxi" / "data.csv"
SCHEMA = PROJECT_ROOT / "data" / "taxi" / "schema.pbtxt"

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="mlops-dag-tests-"))
os.environ.update({
    "AIRFLOW_HOME": str(_AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    # INFO: the ML process's output (the step summaries, the ERROR lines) is logged at INFO.
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    "MLOPS_ML_PYTHON": str(ML_PYTHON),
    "TF_USE_LEGACY_KERAS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
})


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata DB in the session's AIRFLOW_HOME (what `dag.test()` needs)."""
    subprocess.run([str(AIRFLOW_BIN / "airflow"), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


def ml_available(module: str) -> bool:
    """True when `module` imports in the ML runtime (parts built by other issues may not exist yet)."""
    result = subprocess.run([str(ML_PYTHON), "-c", f"import {module}"], capture_output=True, env=os.environ.copy())
    return result.returncode == 0


def run_in_ml(script: str, *args: str, timeout: float = 600) -> Any:
    """Runs a Python snippet in the ML runtime; it prints one JSON document, which is returned."""
    result = subprocess.run([str(ML_PYTHON), "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                            timeout=timeout, cwd=PROJECT_ROOT, env=os.environ.copy())
    if result.returncode != 0:
        raise AssertionError(f"ML runtime snippet failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_config(root: Path, **overrides: Any) -> Path:
    """A project config whose every path points into `root` (a test's temp folder).

    `training`, `evaluation` and `data` (dicts) add to those tables, `csv_path` is [data]'s; any other
    keyword is a top-level key (e.g. `transform_beside_validation_from_rows=1`).
    """
    training = {"train_steps": 100, **overrides.pop("training", {})}
    evaluation = {"auc_floor": 0.5, **overrides.pop("evaluation", {})}
    data = {"csv_path": str(overrides.pop("csv_path", TAXI_CSV)), "schema_path": str(SCHEMA), **overrides.pop("data", {})}
    lines = [
        'pipeline_name = "taxi"',
        f'pipeline_root = "{root / "pipeline"}"',
        'beam_args = ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]',
        *(f"{k} = {json.dumps(v)}" for k, v in overrides.items()),
        "[data]",
        *(f"{k} = {json.dumps(v)}" for k, v in data.items()),
        "[training]",
        *(f"{k} = {json.dumps(v)}" for k, v in training.items()),
        "[evaluation]",
        *(f"{k} = {json.dumps(v)}" for k, v in evaluation.items()),
        "[serving]",
        f'model_base_dir = "{root / "models"}"',
        f'model_config_file = "{root / "models.config"}"',
        "[metadata]",
        f'sqlite_path = "{root / "mlmd.sqlite"}"',
    ]
    path = root / "mlops.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def parse_dag(dag_id: str):
    """Parses the DAG file afresh, so module-level settings (MLOPS_CONFIG) are read now."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER / f"{dag_id}.py"))
    assert bag.import_errors == {}, bag.import_errors
    return bag.get_dag(dag_id)


def task_states(dag_run) -> dict[str, tuple[str | None, int]]:
    """task_id -> (state, try_number) of a finished dag.test() run."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_run.dag_id,
                                                  TaskInstance.run_id == dag_run.run_id).all()
        return {ti.task_id: (str(ti.state.value if hasattr(ti.state, "value") else ti.state) if ti.state else None,
                             ti.try_number) for ti in rows}


def xcom_value(dag_run, task_id: str, key: str = "return_value") -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter(XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id,
                                              XComModel.task_id == task_id, XComModel.key == key).one_or_none()
        if row is None:
            return None
        value = row.value
        return json.loads(value) if isinstance(value, (str, bytes)) else value


@contextlib.contextmanager
def captured_logs(into: list[str]) -> Iterator[None]:
    """Collects every log record (dag.test() logs the ML process's output line by line) into `into`.

    A handler on the root logger rather than capsys/capfd: those are per test, this works in
    module-scoped fixtures and whatever pytest's capture mode.
    """
    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            into.append(record.getMessage())

    handler = Collect(level=logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def push_tiny_models(config_path: Path, weights: list[float]) -> list[int]:
    """Pushes one tiny real SavedModel per weight (versions 1, 2, ...) as the training DAG's push would:
    into the config's model base path and models.config (the first becomes `stable`), each recorded
    as a PushedModel artifact in the config's MLMD."""
    return run_in_ml(
        """
        import json, sys, tempfile
        from pathlib import Path
        from metadata.recorder import PipelineRun, Trigger
        from metadata.store import connect
        from core.config import load_config
        from serving.push import push_model
        from tests.fixtures.tiny_model import export_tiny_model

        config = load_config(sys.argv[1])
        run = PipelineRun(connect(config.metadata), config.pipeline_name, "test-push-tiny-models", Trigger("test"))
        versions = []
        for weight in json.loads(sys.argv[2]):
            with tempfile.TemporaryDirectory() as temp:
                model = export_tiny_model(Path(temp) / "model", weight=weight)
                result = push_model(model, config.serving.model_base_dir, config.serving.model_name,
                                    config_file=config.serving.model_config_file)
            run.register_artifact("PushedModel", str(result.path),
                                  {"model_name": result.model_name, "version": result.version}, identity=("version",))
            versions.append(result.version)
        print(json.dumps(versions))
        """,
        str(config_path), json.dumps(weights),
    )


def write_trips_sample(path: Path, rows: int, start: int = 0) -> Path:
    """The first `rows` data rows (after `start`) of the shipped CSV."""
    with TAXI_CSV.open() as source:
        lines = source.read().splitlines()
    path.write_text("\n".join([lines[0], *lines[1 + start: 1 + start + rows]]) + "\n")
    return path
