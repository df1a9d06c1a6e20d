"""Auditor queries on stores populated by real pipeline runs, real monitoring and a drift-triggered retraining,
on SQLite and on real PostgreSQL and MySQL (MariaDB) servers: model, request and dataset lineage, runs, pictures, and the CLI.

The history is tests/monitoring/story.py: train-1 pushes taxi:1 (2013-01..06 trips); monitor-2 finds the
2016 trips drifted; retrain-2, triggered by that check, pushes taxi:2.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree

import pytest

from core.config import MetadataConfig
from metadata.lineage import LineageNotFoundError
from metadata.queries import compare_runs, list_runs, model_audit, model_graph
from metadata.served_lineage import data_audit, request_audit
from metadata.store import connect
from tests.conftest import TAXI_CSV
from tests.monitoring.story import story

pytestmark = pytest.mark.slow


SERVER_FIXTURES = {"postgresql": "postgres_metadata", "mysql": "mysql_metadata"}


@pytest.fixture(scope="session", params=["sqlite", "postgresql", "mysql"])
def history(request, tmp_path_factory):
    taxi = request.getfixturevalue("taxi")
    root = tmp_path_factory.mktemp(f"story-{request.param}")
    if request.param == "sqlite":
        metadata = MetadataConfig(backend="sqlite", sqlite_path=root / "mlmd.sqlite")
    else:
        metadata = request.getfixturevalue(SERVER_FIXTURES[request.param])
    built = story(request.param, root, metadata, taxi)
    return built, connect(built.config.metadata)


@pytest.fixture(scope="session")
def taxi(taxi_rows):
    from tests.monitoring import logs

    frame = logs.taxi_frame(taxi_rows)
    frame["year"] = logs.year_of(frame)
    return frame


def test_a_retrained_model_names_the_drift_check_and_evidence_that_triggered_it(history):
    built, store = history
    audit = model_audit(store, "taxi", 2)
    run = audit["run"]
    assert run["id"] == "retrain-2" and run["trigger_kind"] == "drift_check"
    check = run["drift_check"]
    assert check["id"] == built.drifted.artifact.id and check["properties"]["passed"] == 0
    failed = {c["name"]: c for c in check["failed_checks"]}
    assert "payment_type" in failed["data_drift"]["evidence"]["drifted_features"]
    assert failed["data_drift"]["value"] > failed["data_drift"]["threshold"]
    # The check judged taxi:1 on the logged window: both are reachable from the retrained model.
    assert check["judged"]["model"]["properties"]["version"] == 1
    assert check["judged"]["prediction_log"]["uri"] == str(built.log_dir)


def test_model_lineage_has_the_full_chain_from_data_to_push(history):
    built, store = history
    audit = model_audit(store, "taxi", 2)
    assert audit["data"]["raw"]["uri"] == str(TAXI_CSV)
    assert audit["data"]["raw"]["properties"]["sha256"] == built.config.data.expected_sha256
    assert audit["data"]["files"] == [str(TAXI_CSV)]
    assert audit["data"]["window_start"].startswith("2013-01-01") and audit["data"]["window_end"].startswith("2013-07-01")
    assert audit["data"]["rows"] == sum(audit["data"]["splits"].values()) > 0
    assert audit["schema"]["uri"].endswith("schema.pbtxt")
    assert audit["statistics"]["uri"].endswith("validate/statistics")
    assert audit["anomalies"]["count"] == 0
    clean = built.first.outcomes["clean"].results
    assert audit["rejected"]["clean_rejected"] == clean["rows_rejected"]
    assert audit["rejected"]["rows_in"] == clean["rows_in"] and audit["rejected"]["ingest_unparseable"] == 0
    assert audit["transform_graph"].endswith("transform/transform_graph")
    assert audit["hyperparameters"]["train_steps"] == 200 and "learning_rate" in audit["hyperparameters"]
    assert all(version.startswith("git:") for version in audit["code_version"])
    assert audit["evaluation"]["blessed"] is True and audit["evaluation"]["metrics"]["auc"] > 0.5
    assert audit["evaluation"]["baseline_model"] == {"name": "taxi", "version": 1}
    assert audit["model"]["pushed_at"] and audit["model"]["uri"].endswith("models/taxi/2")
    # Steps the retraining reused ran in train-1: the audit says where each one really ran.
    assert audit["executions"]["train"]["run"]["name"] == "retrain-2"
    assert audit["executions"]["ingest"]["run"]["name"] == "train-1"
    assert set(audit["executions"]) == {"push", "evaluate", "train", "transform", "clean", "validate", "ingest"}


def test_the_first_model_was_triggered_by_hand_and_lists_its_drift_checks(history):
    built, store = history
    audit = model_audit(store, "taxi", 1)
    assert audit["run"]["trigger_kind"] == "manual" and audit["run"]["trigger"] == {"user": "test"}
    assert "drift_check" not in audit["run"]
    # Oldest window first (other tests of the same process may check hour 2 again: they come after).
    checks = audit["monitoring"]
    assert [c["id"] for c in checks][:2] == [built.undrifted.artifact.id, built.drifted.artifact.id]
    assert [c["passed"] for c in checks][:2] == [True, False]
    assert all(c["report"] and c["window_start"] for c in checks)
    assert audit["hyperparameters"]["train_steps"] == 150


def test_a_logged_request_leads_to_the_model_that_answered_it(history):
    built, store = history
    request_id = built.requests["hour_2"][3]
    audit = request_audit(store, built.log_dir, request_id)
    assert audit["models"] == ["taxi:1"]
    assert len(audit["rows"]) == 8 and {r["model_version"] for r in audit["rows"]} == {1}
    assert audit["model_audits"]["taxi:1"]["run"]["id"] == "train-1"
    # Hour 1 had a shadow candidate: its copies are listed, but the answer came from taxi:1.
    shadowed = request_audit(store, built.log_dir, built.requests["hour_1"][0])
    assert shadowed["models"] == ["taxi:1"]
    assert {r["is_shadow"] for r in shadowed["rows"]} == {True, False}
    assert shadowed["feedback"] and all(f["ground_truth"] in (0, 1) for f in shadowed["feedback"])
    later = request_audit(store, built.log_dir, built.requests["hour_4"][0])
    assert later["models"] == ["taxi:2"] and later["model_audits"]["taxi:2"]["run"]["trigger_kind"] == "drift_check"


def test_a_dataset_leads_to_every_model_trained_on_it_and_the_requests_they_served(history):
    built, store = history
    audit = data_audit(store, str(TAXI_CSV), built.log_dir)
    models = {(m["name"], m["version"]): m for m in audit["models"]}
    assert set(models) == {("taxi", 1), ("taxi", 2)}
    assert models[("taxi", 1)]["requests"] == {"served": 400 + 833, "shadow": 0, "requests": 50 + 105}
    assert models[("taxi", 2)]["requests"]["served"] == 96
    assert {"Examples", "ExampleStatistics", "CleanedExamples", "Model", "PushedModel", "DriftCheckResult"} <= set(audit["derived"])
    assert {"train-1", "retrain-2"} <= set(audit["runs"])


def test_unknown_models_requests_datasets_and_runs_say_what_exists(history):
    built, store = history
    with pytest.raises(LineageNotFoundError, match=r"no pushed model taxi:9 .* known: taxi:1, taxi:2"):
        model_audit(store, "taxi", 9)
    with pytest.raises(LineageNotFoundError, match="no request 'nope' in the prediction logs"):
        request_audit(store, built.log_dir, "nope")
    with pytest.raises(LineageNotFoundError, match=r"no artifact with uri '/data/other.csv'.*known datasets: " + str(TAXI_CSV)):
        data_audit(store, "/data/other.csv")
    with pytest.raises(LineageNotFoundError, match="no pipeline run 'nope'"):
        compare_runs(store, ["train-1", "nope"])


def test_runs_list_and_compare_show_parameters_and_metrics_side_by_side(history):
    _, store = history
    runs = {r["run_id"]: r for r in list_runs(store, "taxi")}
    assert {"train-1", "retrain-2"} <= set(runs)
    assert runs["retrain-2"]["trigger_kind"] == "drift_check" and runs["retrain-2"]["pushed_version"] == 2
    assert runs["train-1"]["metrics"]["auc"] > 0.5 and runs["train-1"]["blessed"] == 1
    assert "monitor-2" not in runs  # monitoring runs belong to the taxi-monitoring pipeline
    assert "monitor-2" in {r["run_id"] for r in list_runs(store, "taxi-monitoring")}
    comparison = compare_runs(store, ["train-1", "retrain-2"])
    rows = {(r["section"], r["name"]): r for r in comparison["rows"]}
    assert rows[("parameters", "train_steps")]["values"] == [150, 200] and rows[("parameters", "train_steps")]["differs"]
    assert not rows[("parameters", "learning_rate")]["differs"]
    assert rows[("outcome", "trigger_kind")]["values"] == ["manual", "drift_check"]
    assert ("metrics", "auc") in rows


def test_the_lineage_picture_is_valid_svg_with_the_chain_and_the_checks(history):
    from metadata.lineage_graph import layout, render_html, render_svg

    _, store = history
    graph = model_graph(store, "taxi", 1)
    types = {a["type"] for a in graph.artifacts.values()}
    assert {"RawData", "Examples", "ExampleStatistics", "Schema", "CleanedExamples", "TransformGraph", "Model",
            "ModelEvaluation", "ModelBlessing", "PushedModel", "PredictionLog", "DriftCheckResult"} <= types
    assert {e["type"] for e in graph.executions.values()} == {
        "Ingest", "Validate", "Clean", "Transform", "Train", "Evaluate", "Push", "DriftCheck"}
    svg = ElementTree.fromstring(render_svg(graph, "taxi:1"))
    namespace = "{http://www.w3.org/2000/svg}"
    nodes = svg.findall(f".//{namespace}g")
    assert len(nodes) == len(graph.artifacts) + len(graph.executions)
    _, edges = layout(graph)
    assert len(svg.findall(f"{namespace}path")) == len(edges) > len(graph.executions)
    assert "PushedModel" in render_html(graph, "taxi:1")


def test_the_cli_answers_auditors_and_exits_2_for_unknown_ids(history, capsys, tmp_path):
    from mlops.cli import main

    built, _ = history
    config = str(built.config_file)
    assert main(["--config", config, "lineage", "model", "taxi:2", "--html", str(tmp_path / "g.html"),
                 "--svg", str(tmp_path / "g.svg")]) == 0
    out = capsys.readouterr().out
    assert "triggered by     drift_check" in out and "drift check      DriftCheckResult" in out
    assert "Hyperparameters" in out and "train_steps=200" in out
    ElementTree.parse(tmp_path / "g.svg")
    assert "<svg" in (tmp_path / "g.html").read_text()

    assert main(["--config", config, "lineage", "model", "taxi:2", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["run"]["drift_check"]["id"] == built.drifted.artifact.id and document["graph"]["artifacts"]

    request_id = built.requests["hour_2"][0]
    assert main(["--config", config, "lineage", "request", request_id, "--log-dir", str(built.log_dir)]) == 0
    assert f"Request {request_id}" in capsys.readouterr().out
    assert main(["--config", config, "lineage", "data", str(TAXI_CSV), "--log-dir", str(built.log_dir)]) == 0
    assert "taxi:2" in capsys.readouterr().out
    assert main(["--config", config, "runs", "list"]) == 0
    assert "retrain-2" in capsys.readouterr().out
    assert main(["--config", config, "runs", "compare", "train-1", "retrain-2"]) == 0
    assert "* train_steps" in capsys.readouterr().out

    for argv in (["lineage", "model", "taxi:9"], ["lineage", "model", "taxi"], ["lineage", "request", "nope"],
                 ["lineage", "data", "/nowhere.csv"], ["runs", "compare", "train-1", "nope"]):
        assert main(["--config", config, *argv]) == 2, argv
        assert "error: " in capsys.readouterr().err
