"""Lineage of the degree of automation: a request says in which degree it was answered and what its reviewer
decided; a model lists its AutomationChange history (who approved, what was refused)."""

from __future__ import annotations

import datetime as dt

from core.config import config_from_dict
from metadata.automation import automation_changes_of, record_automation_change
from metadata.lineage import find_pushed_model
from metadata.recorder import PipelineRun
from metadata.store import connect
from mlops.cli import main
from tests.monitoring.reviews import scripted_traffic

START = dt.datetime(2026, 3, 2, 8, tzinfo=dt.timezone.utc)


def test_request_and_model_lineage_show_the_degree_the_review_and_the_history(tmp_path, capsys):
    config_file = tmp_path / "mlops.toml"
    config_file.write_text('[metadata]\nsqlite_path = "mlmd.sqlite"\n')
    config = config_from_dict({"metadata": {"sqlite_path": str(tmp_path / "mlmd.sqlite")}}, root=tmp_path)
    store = connect(config.metadata)
    PipelineRun(store, "taxi", "push-1").register_artifact("PushedModel", str(tmp_path / "taxi" / "1"),
                                                           {"model_name": "taxi", "version": 1})
    first = record_automation_change(store, "taxi", "taxi", 1, from_degree="shadow", to_degree="assist", applied=True,
                                     approved_by="alice", reason="readiness rules met", forced=False,
                                     evidence={"reviewed": 600, "agreement": 0.9367})
    record_automation_change(store, "taxi", "taxi", 1, from_degree="assist", to_degree="partial", applied=False,
                             approved_by="", reason="rejected by bob", forced=False, evidence={"reviewed": 1100})
    history = automation_changes_of(store, find_pushed_model(store, "taxi", 1))
    assert [(c["execution_id"], c["to_degree"], c["applied"], c["approved_by"]) for c in history][0] == (first, "assist", True, "alice")
    assert history[1]["approved_by"] is None and history[1]["reason"] == "rejected by bob"

    [case] = scripted_traffic(tmp_path / "logs", start=START, automation="partial", model_version=1, agreeing=0,
                              disagreeing=1, disagree_every=1)
    assert main(["--config", str(config_file), "lineage", "request", case.request_id, "--log-dir", str(tmp_path / "logs")]) == 0
    out = capsys.readouterr().out
    assert "in degree of automation partial" in out
    assert f"Reviewed by a person: instance 0 decided {case.human_decision} (review" in out
    assert "shadow -> assist: moved, approved by alice (readiness rules met); evidence: 600 reviewed, agreement 93.7%" in out
    assert "assist -> partial: NOT moved (rejected by bob)" in out

    assert main(["--config", str(config_file), "lineage", "model", "taxi:1", "--json"]) == 0
    import json

    document = json.loads(capsys.readouterr().out)
    assert [c["to_degree"] for c in document["automation_changes"]] == ["assist", "partial"]
