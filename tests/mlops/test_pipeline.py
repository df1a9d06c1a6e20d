"""The whole training pipeline end to end on a small window, its lineage, re-runs and bad input.

Real Beam, TFDV, TFT, TF and MLMD; every path points into the test's temp directory.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from core.config import Config, config_from_dict
from core.errors import DataError, SchemaAnomaliesError
from metadata.lineage import model_lineage
from metadata.store import connect
from mlops import steps
from mlops.pipeline import run_pipeline
from tests.conftest import PROJECT_ROOT, TAXI_CSV, write_csv

pytestmark = pytest.mark.slow

SMALL_WINDOW = ("2013-01-01", "2013-07-01")


def small_config(root: Path, **training) -> Config:
    return config_from_dict(
        {
            "pipeline_root": "pipeline",
            "beam_args": ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"],
            "data": {"csv_path": str(TAXI_CSV), "schema_path": str(PROJECT_ROOT / "data/taxi/schema.pbtxt")},
            "training": {"train_steps": 150, **training},
            "evaluation": {"auc_floor": 0.5},
            "serving": {"model_base_dir": "models", "model_config_file": "models.config"},
            "metadata": {"sqlite_path": "mlmd.sqlite"},
        },
        root,
    )


def pushed_versions(config: Config) -> list[str]:
    model_dir = config.serving.model_base_dir / config.serving.model_name
    return sorted(p.name for p in model_dir.iterdir() if p.name.isdigit()) if model_dir.exists() else []


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    config = small_config(root)
    lines: list[str] = []
    result = run_pipeline(config, start=SMALL_WINDOW[0], end=SMALL_WINDOW[1], progress=lines.append)
    return config, result, lines


def test_the_pipeline_pushes_a_blessed_model_and_reports_progress(first_run):
    config, result, lines = first_run
    assert pushed_versions(config) == ["1"]
    version_dir = config.serving.model_base_dir / "taxi" / "1"
    assert (version_dir / "saved_model.pb").exists()
    assert result.outcomes["push"].results["version"] == 1
    assert result.outcomes["evaluate"].results["blessed"] == 1
    assert [line.split()[1] for line in lines if "running" in line] == [
        "ingest", "clean", "validate", "transform", "train", "evaluate", "push"]
    clean = result.outcomes["clean"].results
    assert clean["rows_in"] == clean["rows_kept"] + clean["rows_rejected"]
    ingest = result.outcomes["ingest"].results
    assert ingest["rows_read"] == ingest["rows_in_window"] + ingest["rows_outside_window"] + ingest["rows_unparseable"]
    assert clean["rows_in"] == ingest["rows_in_window"]
    assert 'stable' in (config.serving.model_config_file).read_text()


def test_lineage_from_the_pushed_model_reaches_data_schema_transform_parameters_and_code(first_run):
    config, result, _ = first_run
    graph = model_lineage(connect(config.metadata), "taxi", 1)
    artifact_types = {a["type"] for a in graph.artifacts.values()}
    assert {"RawData", "Schema", "ExampleAnomalies", "Examples", "CleanedExamples", "TransformGraph",
            "TransformedExamples", "Model", "ModelBlessing", "PushedModel"} <= artifact_types
    [raw] = graph.artifacts_of_type("RawData")
    assert raw["uri"] == str(TAXI_CSV) and raw["properties"]["sha256"] == config.data.expected_sha256
    [train] = [e for e in graph.executions_of_type("Train") if e["state"] == "COMPLETE"]
    assert train["properties"]["parameters"]["train_steps"] == 150
    assert train["properties"]["parameters"]["learning_rate"] == config.training.learning_rate
    assert train["properties"]["code_version"].startswith("git:")
    ingest = graph.executions_of_type("Ingest")[0]
    assert ingest["properties"]["parameters"]["window_start"].startswith("2013-01-01")
    assert ingest["run"]["name"] == result.run_id


def test_a_rerun_with_the_same_inputs_reuses_everything_and_says_so(first_run):
    config, first, _ = first_run
    lines: list[str] = []
    again = run_pipeline(config, start=SMALL_WINDOW[0], end=SMALL_WINDOW[1], progress=lines.append)
    for name in ("ingest", "clean", "validate", "transform", "train", "evaluate"):
        assert again.outcomes[name].cached, name
        assert "reused the outputs of execution" in again.outcomes[name].summary
    assert again.outcomes["train"].outputs["model"].id == first.outcomes["train"].outputs["model"].id
    assert again.outcomes["push"].results["version"] == 1 and again.outcomes["push"].results["reused"] == 1
    assert "already pushed as taxi:1" in again.outcomes["push"].summary
    assert pushed_versions(config) == ["1"]
    assert sum("reused" in line for line in lines) >= 6


def test_another_training_budget_reuses_the_transform_and_retrains(tmp_path):
    """The heads' size follows the training budget but is not part of Transform's cache key: a run
    with another budget transforms nothing again, and its trainer reads the heads it finds (or, were
    they shorter than its budget and the split longer, the whole split)."""
    first = run_pipeline(small_config(tmp_path), start=SMALL_WINDOW[0], end=SMALL_WINDOW[1])
    transformed = first.outcomes["transform"].outputs["transformed"]
    assert first.outcomes["transform"].results["head_rows"] == 150 * 40
    lines: list[str] = []
    again = run_pipeline(small_config(tmp_path, train_steps=160), start=SMALL_WINDOW[0], end=SMALL_WINDOW[1],
                         progress=lines.append)
    for name in ("ingest", "clean", "validate", "transform"):
        assert again.outcomes[name].cached, name
    assert not again.outcomes["train"].cached
    assert again.outcomes["transform"].outputs["transformed"].uri == transformed.uri
    rows = first.outcomes["transform"].results["rows"]
    assert max(rows.values()) < 150 * 40 < 160 * 40, "the heads hold whole splits: they serve the larger budget"
    assert again.outcomes["train"].results["train_metrics"]["examples"] == rows["train"]


_IN_OWN_PROCESSES = """
import json, sys
from pathlib import Path
from tests.mlops.test_pipeline import SMALL_WINDOW, small_config
from mlops.pipeline import run_pipeline
config = small_config(Path(sys.argv[1])).replace(steps_in_own_process_from_rows=0)
lines = []
result = run_pipeline(config, start=SMALL_WINDOW[0], end=SMALL_WINDOW[1], progress=lines.append)
step_modules = [m for m in ("beam_jobs.clean", "beam_jobs.transform", "trainer.train", "trainer.evaluate", "tensorflow_transform")
                if m in sys.modules]
print(json.dumps({"lines": lines, "results": {name: o.results for name, o in result.outcomes.items()},
                  "imported_here": step_modules}, default=str))
"""


def test_steps_in_processes_of_their_own_make_the_same_run(first_run, tmp_path):
    """From `steps_in_own_process_from_rows` rows on, each step after ingest runs in a process of its
    own (here from 0 rows): same rows, same model, same push; the command's own process never loads
    the steps' libraries."""
    import json
    import subprocess
    import sys

    _, first, _ = first_run
    done = subprocess.run([sys.executable, "-c", _IN_OWN_PROCESSES, str(tmp_path)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout.strip().splitlines()[-1])
    assert any("steps_in_own_process_from_rows 0: each step from here on runs in a process of its own" in line
               for line in run["lines"]), run["lines"]
    assert run["imported_here"] == []
    for name, keys in {"clean": ("rows_in", "rows_kept", "rows_rejected"), "transform": ("rows",),
                       "train": ("eval_metrics",), "evaluate": ("blessed",)}.items():
        for key in keys:
            assert run["results"][name][key] == json.loads(json.dumps(first.outcomes[name].results[key], default=str)), (name, key)
    assert run["results"]["push"]["version"] == 1


def test_transform_beside_validation_makes_the_same_run(first_run, tmp_path):
    """From `transform_beside_validation_from_rows` cleaned rows on (here 0), transform's Beam job runs
    in a process of its own while validation runs, and the Transform step adopts its output: the
    same rows and model as the run that waited, recorded the same way, nothing left behind."""
    _, first, _ = first_run
    config = small_config(tmp_path).replace(transform_beside_validation_from_rows=0)
    lines: list[str] = []
    result = run_pipeline(config, start=SMALL_WINDOW[0], end=SMALL_WINDOW[1], progress=lines.append)
    assert any("transform_beside_validation_from_rows 0: transform's Beam job starts beside validation" in line
               for line in lines), lines
    transformed = result.outcomes["transform"]
    assert transformed.results["beside_validation"] is True
    assert "(its Beam job ran beside validation)" in transformed.summary
    assert transformed.results["rows"] == first.outcomes["transform"].results["rows"]
    assert result.outcomes["train"].results["eval_metrics"] == first.outcomes["train"].results["eval_metrics"]
    assert first.outcomes["transform"].results["beside_validation"] is False
    run_dir = Path(transformed.outputs["transformed"].uri).parent.parent
    assert not list(run_dir.glob(".transform-beside-validation-*"))
    assert not list((run_dir / "transform").glob(steps.PREPARED_TRANSFORM_FILE))
    graph = model_lineage(connect(config.metadata), "taxi", 1)
    assert {"ExampleAnomalies", "TransformGraph"} <= {a["type"] for a in graph.artifacts.values()}  # validation's verdict still in


def test_on_one_core_validation_and_transform_run_in_turn(tmp_path, monkeypatch):
    import mlops.pipeline

    monkeypatch.setattr(mlops.pipeline, "usable_cores", lambda: 1)
    config = small_config(tmp_path).replace(transform_beside_validation_from_rows=0)
    lines: list[str] = []
    result = run_pipeline(config, start=SMALL_WINDOW[0], end=SMALL_WINDOW[1], progress=lines.append)
    assert any("but this process may use one core: validation and transform run in turn" in line for line in lines), lines
    assert result.outcomes["transform"].results["beside_validation"] is False


def test_a_transform_begun_beside_a_failing_validation_is_thrown_away(tmp_path, taxi_rows):
    bad = [dict(r, payment_type="Bitcoin") if i % 2 == 0 else r for i, r in enumerate(taxi_rows[:3000])]
    csv = write_csv(tmp_path / "bitcoin.csv", bad)
    config = small_config(tmp_path).replace(transform_beside_validation_from_rows=0)
    with pytest.raises(SchemaAnomaliesError):
        run_pipeline(config, start=SMALL_WINDOW[0], end=SMALL_WINDOW[1], csv_path=csv, progress=lambda _: None)
    run_dirs = list((config.pipeline_root / "runs").iterdir())
    assert len(run_dirs) == 1
    assert not list(run_dirs[0].glob(".transform-beside-validation-*"))
    assert not (run_dirs[0] / "transform").exists()
    assert not [p for p in multiprocessing.active_children() if p.name == "transform-beside-validation"]
    assert connect(config.metadata).get_executions_by_type("Transform") == []


def _fails_and_pushes_nothing(tmp_path: Path, csv: Path, error: type[Exception], *patterns: str,
                              window: tuple[str, str] = SMALL_WINDOW) -> str:
    config = small_config(tmp_path)
    with pytest.raises(error) as caught:
        run_pipeline(config, start=window[0], end=window[1], csv_path=csv, progress=lambda _: None)
    message = str(caught.value)
    for pattern in patterns:
        assert pattern in message, message
    assert pushed_versions(config) == []
    return message


def test_an_empty_csv_fails_clearly(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _fails_and_pushes_nothing(tmp_path, empty, DataError, "empty.csv")


def test_missing_columns_are_named(tmp_path, taxi_rows):
    columns = [c for c in taxi_rows[0] if c not in ("fare", "company")]
    csv = write_csv(tmp_path / "no_fare.csv", taxi_rows[:500], columns)
    _fails_and_pushes_nothing(tmp_path, csv, DataError, "fare", "company")


def test_a_column_of_wrong_types_is_named(tmp_path, taxi_rows):
    rows = [dict(r, trip_miles="about %s miles" % r["trip_miles"]) for r in taxi_rows[:3000]]
    csv = write_csv(tmp_path / "wrong_types.csv", rows)
    _fails_and_pushes_nothing(tmp_path, csv, DataError, "trip_miles")


def test_a_window_with_no_rows_names_the_window_and_the_data_range(tmp_path):
    _fails_and_pushes_nothing(tmp_path, TAXI_CSV, DataError, "2020-01-01", window=("2020-01-01", "2020-02-01"))


def test_a_schema_breaking_batch_names_the_feature(tmp_path, taxi_rows):
    rows = [dict(r, payment_type="Bitcoin") if i % 4 == 0 else r for i, r in enumerate(taxi_rows[:4000])]
    csv = write_csv(tmp_path / "bitcoin.csv", rows)
    message = _fails_and_pushes_nothing(tmp_path, csv, SchemaAnomaliesError, "payment_type", "Bitcoin")
    # It says where the full report is and how to go on when the data, not the schema, is right.
    assert "/validate/anomalies. " in message.split("The anomalies are in ", 1)[1]
    assert "mlops schema infer" in message and "data.schema_path" in message


def test_validate_compares_new_data_with_the_served_models_and_fails_on_drift_only_when_asked(first_run, taxi_rows, tmp_path):
    from mlops import steps

    config, _, _ = first_run
    inflated = [dict(r, fare=str(round(float(r["fare"]) * 4 + 20, 2)), tips=str(round(float(r["tips"] or 0) * 4, 2)))
                if r["fare"] else r for r in taxi_rows[:6000]]
    csv = write_csv(tmp_path / "inflated.csv", inflated)
    for mode in ("warn", "fail"):
        moded = config.replace(data=type(config.data)(**{**config.data.__dict__, "previous_data_check": mode}))
        ctx = steps.open_run(moded, f"drifted-{mode}")
        ingested = steps.ingest(ctx, csv, *SMALL_WINDOW)
        cleaned = steps.clean(ctx, ingested.outputs["examples"])
        if mode == "warn":
            validated = steps.validate(ctx, ingested.outputs["examples"], cleaned.outputs["cleaned"], cleaned.outputs["rejected"])
            assert "moved since the served model's data: " in validated.summary and "fare" in validated.summary
            assert validated.results["compared_with"].endswith("cleaned_statistics")
        else:
            with pytest.raises(SchemaAnomaliesError, match="fare.*Jensen-Shannon"):
                steps.validate(ctx, ingested.outputs["examples"], cleaned.outputs["cleaned"], cleaned.outputs["rejected"])


def test_a_retraining_that_would_learn_nothing_new_is_refused_once_then_quietly(first_run):
    from mlops.retraining import ALREADY_RAISED, NO_NEW_DATA, RETRAIN, decide_retraining

    config, _, _ = first_run

    def decide(start: str, end: str, checks=("prediction_drift",), config=config):
        return decide_retraining(config, "monitoring-run", model_name="taxi", served_version=1, failed_checks=list(checks),
                                 csv_path=config.data.csv_path, start=start, end=end, drift_check=None)

    first = decide(*SMALL_WINDOW)
    assert first.action == NO_NEW_DATA and "no new data to learn from" in first.message, first.message
    again = decide(*SMALL_WINDOW)
    assert again.action == ALREADY_RAISED and again.execution_id == first.execution_id
    other_cause = decide(*SMALL_WINDOW, checks=("concept_drift",))
    assert other_cause.action == NO_NEW_DATA and other_cause.execution_id != first.execution_id
    later = decide(SMALL_WINDOW[0], "2014-01-01")
    assert later.action == RETRAIN and set(later.differences) == {"window_end"}
    other_steps = config.replace(training=type(config.training)(**{**config.training.__dict__, "train_steps": 300}))
    changed = decide(*SMALL_WINDOW, config=other_steps)
    assert changed.action == RETRAIN and set(changed.differences) == {"hyperparameters"}
