"""When transform's Beam job runs beside validation, and what Airflow's `prepare_transform` task and
its teardown do with the run's folder: the decision the CLI pipeline and the DAG share
(`mlops.pipeline.transform_beside_validation`) and the task side's functions, on real folders and a
real (failing) Beam job. The DAG's runs that prepare and adopt: tests/dags/test_training_dag.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import mlops.pipeline
from core.config import config_from_dict
from metadata.recorder import ArtifactRef
from mlops import steps
from mlops.airflow.tasks import (
    PREPARED_TRANSFORM_DIR,
    prepare_transform_beside_validation,
    prepared_folder,
    run_discard_prepared_transform_task,
)
from mlops.pipeline import transform_beside_validation
from tests.conftest import PROJECT_ROOT, TAXI_CSV


def config_from(root: Path, rows: int):
    return config_from_dict(
        {"pipeline_root": "pipeline", "transform_beside_validation_from_rows": rows,
         "beam_args": ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"],
         "data": {"csv_path": str(TAXI_CSV), "schema_path": str(PROJECT_ROOT / "data/taxi/schema.pbtxt")}},
        root,
    )


def clean_outcome(rows: int | None, *, cached: bool = False, uri: str = "/nowhere/clean/cleaned") -> steps.StepOutcome:
    properties = {} if rows is None else {"rows": rows}
    return steps.StepOutcome("clean", {"cleaned": ArtifactRef(7, "CleanedExamples", uri, properties)}, {}, cached, 3, 1.0,
                             "kept")


@pytest.fixture()
def two_cores(monkeypatch):
    monkeypatch.setattr(mlops.pipeline, "usable_cores", lambda: 2)


def test_the_job_starts_beside_validation_from_the_threshold_on_when_clean_ran(tmp_path, two_cores):
    config = config_from(tmp_path, 1_000_000)
    below = transform_beside_validation(config, clean_outcome(999_999))
    assert (below.start, below.rows_reached) == (False, False)
    assert below.reason == ("999,999 cleaned rows < transform_beside_validation_from_rows 1,000,000: "
                            "transform runs its own job after validation")
    reached = transform_beside_validation(config, clean_outcome(1_000_000))
    assert (reached.start, reached.rows_reached) == (True, True)
    assert reached.reason == ("1,000,000 cleaned rows >= transform_beside_validation_from_rows 1,000,000: "
                              "transform's Beam job starts beside validation")
    reused = transform_beside_validation(config, clean_outcome(5_000_000, cached=True))
    assert (reused.start, reused.rows_reached) == (False, False) and "clean reused an earlier run's output" in reused.reason
    unknown = transform_beside_validation(config, clean_outcome(None))
    assert (unknown.start, unknown.rows_reached) == (False, False) and "no row count" in unknown.reason


def test_on_one_core_the_threshold_is_reached_but_nothing_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(mlops.pipeline, "usable_cores", lambda: 1)
    decision = transform_beside_validation(config_from(tmp_path, 0), clean_outcome(10))
    assert (decision.start, decision.rows_reached) == (False, True)
    assert decision.reason.endswith("but this process may use one core: validation and transform run in turn")


def test_below_the_threshold_the_task_prepares_nothing_and_clears_an_earlier_trys_folder(tmp_path, two_cores, capsys):
    run_dir = tmp_path / "runs" / "taxi_training__manual_1"
    stale = run_dir / PREPARED_TRANSFORM_DIR / "transformed"
    stale.mkdir(parents=True)  # left by a try that was killed
    result = prepare_transform_beside_validation(config_from(tmp_path, 1_000), run_dir, clean_outcome(999))
    assert result == {"folder": str(run_dir / PREPARED_TRANSFORM_DIR), "prepared": False,
                      "reason": "999 cleaned rows < transform_beside_validation_from_rows 1,000: "
                                "transform runs its own job after validation"}
    assert not (run_dir / PREPARED_TRANSFORM_DIR).exists()
    assert f"prepare_transform: {result['reason']}" in capsys.readouterr().out
    assert prepared_folder(result) is None  # transform runs its own job
    assert "transform: runs its own Beam job (prepare_transform: 999 cleaned rows <" in capsys.readouterr().out


@pytest.mark.slow
def test_a_failed_job_is_reported_leaves_no_folder_and_does_not_fail_the_task(tmp_path, two_cores, capsys):
    """A real Beam job on cleaned examples that are not there: it fails, the task function does not."""
    run_dir = tmp_path / "runs" / "taxi_training__manual_2"
    result = prepare_transform_beside_validation(config_from(tmp_path, 1), run_dir,
                                                 clean_outcome(500, uri=str(tmp_path / "no-cleaned-examples")))
    assert result["prepared"] is False
    assert result["reason"].startswith("its Beam job failed (") and result["reason"].endswith(
        "): transform runs its own job after validation and reports any error"), result
    assert not Path(result["folder"]).exists()
    err = capsys.readouterr().err
    assert f"ERROR prepare_transform: {result['reason']}" in err and "Traceback" in err
    assert prepared_folder(result) is None


def test_transform_is_handed_the_folder_only_when_it_holds_a_prepared_transform(tmp_path):
    folder = tmp_path / PREPARED_TRANSFORM_DIR
    folder.mkdir()
    said_so = {"folder": str(folder), "prepared": True, "reason": "beside validation"}
    assert prepared_folder(said_so) is None  # no record of a finished job in it
    (folder / steps.PREPARED_TRANSFORM_FILE).write_text("{}")
    assert prepared_folder(said_so) == folder  # the Transform step itself checks what it was made from
    assert prepared_folder({**said_so, "prepared": False}) is None
    assert prepared_folder(None) is None


def test_the_teardown_removes_the_prepared_folder_and_nothing_else(tmp_path):
    folder = tmp_path / PREPARED_TRANSFORM_DIR
    (folder / "transformed").mkdir(parents=True)
    (folder / "transformed" / "part-0").write_bytes(b"x" * 4096)
    assert run_discard_prepared_transform_task({"folder": str(folder), "prepared": True}) == {
        "removed": str(folder), "bytes": 4096}
    assert not folder.exists() and tmp_path.exists()
    assert run_discard_prepared_transform_task({"folder": str(folder), "prepared": True}) == {"removed": None, "bytes": 0}
    assert run_discard_prepared_transform_task(None) == {"removed": None, "bytes": 0}
    other = tmp_path / "transform"
    other.mkdir()
    with pytest.raises(ValueError, match="removes only a .transform-prepared folder"):
        run_discard_prepared_transform_task({"folder": str(other), "prepared": True})
    assert other.exists()
