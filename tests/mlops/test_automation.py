"""`mlops automation status|move` against a real gateway (admin API on loopback) and a real ML Metadata store.

A scripted reviewer's shadow traffic earns the move to assist; the move goes through the admin API
and is recorded as an AutomationChange with its approver; moves up without approval or evidence
are refused; a move down needs nobody.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from core.config import config_from_dict
from core.errors import DataError
from metadata.automation import automation_changes_of
from metadata.lineage import find_pushed_model
from metadata.recorder import PipelineRun
from metadata.store import connect
from mlops import automation
from mlops.cli import main
from serving.rollout import GatewayAdminClient
from tests.monitoring.reviews import scripted_traffic
from tests.serving.conftest import gateway_config_file, model_root, model_server, start_gw  # noqa: F401 - fixtures
from tests.serving.gateway.helpers import ADMIN_TOKEN, MODEL, STABLE_VERSION

START = dt.datetime(2026, 3, 2, 8, tzinfo=dt.timezone.utc)
NOW = START + dt.timedelta(days=1)


@pytest.fixture
def served(start_gw, tmp_path):
    """A gateway serving taxi:1 in shadow, its pushed model in ML Metadata, and the config that points at both."""
    config = config_from_dict({"metadata": {"sqlite_path": str(tmp_path / "mlmd.sqlite")},
                               "serving": {"model_name": MODEL}}, root=tmp_path)
    run = PipelineRun(connect(config.metadata), config.pipeline_name, "push-1")
    run.register_artifact("PushedModel", str(tmp_path / "models" / MODEL / "1"), {"model_name": MODEL, "version": STABLE_VERSION})
    gateway = start_gw()
    admin = GatewayAdminClient(gateway.url, ADMIN_TOKEN)
    admin.set_automation(MODEL, "shadow")
    return config, admin, gateway, tmp_path / "logs"


def test_earned_move_up_is_applied_on_the_gateway_and_recorded_with_its_approver(served):
    config, admin, _, log_dir = served
    # Cash always agreed; Credit Card: every 8th case overridden -> 262/300 (87.3 %), overall 562/600 (93.7 %).
    scripted_traffic(log_dir, start=START, automation="shadow", model_version=STABLE_VERSION, agreeing=300,
                     disagreeing=300, disagree_every=8)
    status = automation.automation_status(config, admin, log_dir=log_dir, now=NOW)
    assert (status.degree, status.model_version, status.verdict.next, status.verdict.meets) == ("shadow", 1, "assist", True)
    assert "ready for assist" in status.describe()
    # No review run opened cases here: the undecided ones are not counted, and the status says so.
    assert status.review_ledger is None and "cannot tell / unanswered: not counted (no review ledger" in status.describe()

    with pytest.raises(DataError, match="needs a person"):
        automation.move_automation(config, admin, "assist", log_dir=log_dir, now=NOW)
    with pytest.raises(DataError, match="one degree at a time"):
        automation.move_automation(config, admin, "partial", approved_by="alice", log_dir=log_dir, now=NOW)
    assert admin.get_policy(MODEL)["automation"] == "shadow"  # refused moves changed nothing

    move = automation.move_automation(config, admin, "assist", approved_by="alice", log_dir=log_dir, now=NOW)
    assert admin.get_policy(MODEL)["automation"] == "assist" and move.policy["automation"] == "assist"
    store = connect(config.metadata)
    [change] = automation_changes_of(store, find_pushed_model(store, MODEL, STABLE_VERSION))
    assert change["execution_id"] == move.execution_id
    assert (change["from_degree"], change["to_degree"], change["direction"]) == ("shadow", "assist", "up")
    assert change["approved_by"] == "alice" and change["applied"] and not change["forced"]
    assert change["evidence"]["reviewed"] == 600 and change["evidence"]["agreement"] == pytest.approx(562 / 600)
    assert change["evidence"]["rules"]["min_slice_agreement"]["observed"] == pytest.approx(262 / 300)


def test_without_evidence_a_move_up_is_refused_unless_forced_and_a_move_down_needs_nobody(served):
    config, admin, _, log_dir = served
    with pytest.raises(DataError, match="does not meet the rule for shadow -> assist"):
        automation.move_automation(config, admin, "assist", approved_by="alice", log_dir=log_dir, now=NOW)
    forced = automation.move_automation(config, admin, "assist", approved_by="bob", force_reason="pilot week",
                                        log_dir=log_dir, now=NOW)
    assert forced.forced and forced.reason == "pilot week" and admin.get_policy(MODEL)["automation"] == "assist"
    down = automation.move_automation(config, admin, "shadow", log_dir=log_dir, now=NOW)
    assert (down.from_degree, down.to_degree, down.approved_by) == ("assist", "shadow", "")
    assert admin.get_policy(MODEL)["automation"] == "shadow"
    store = connect(config.metadata)
    history = automation_changes_of(store, find_pushed_model(store, MODEL, STABLE_VERSION))
    assert [(c["to_degree"], c["direction"], c["forced"]) for c in history] == [("assist", "up", True), ("shadow", "down", False)]


def test_the_command_prints_the_status_as_json_and_moves(served, capsys, monkeypatch, tmp_path):
    config, admin, gateway, log_dir = served
    config_file = tmp_path / "mlops.toml"
    config_file.write_text(f'[serving]\nmodel_name = "{MODEL}"\n[metadata]\nsqlite_path = "mlmd.sqlite"\n')
    monkeypatch.setenv("MLOPS_GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
    common = ["--gateway-url", gateway.url, "--log-dir", str(log_dir)]
    assert main(["--config", str(config_file), "automation", "status", "--json", *common]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["degree"] == "shadow" and status["verdict"]["next"] == "assist" and status["verdict"]["meets"] is False
    assert main(["--config", str(config_file), "automation", "move", "--to", "assist", "--approved-by", "carol", *common]) == 2
    assert "does not meet the rule" in capsys.readouterr().err
    monkeypatch.delenv("MLOPS_GATEWAY_ADMIN_TOKEN")
    assert main(["--config", str(config_file), "automation", "status", *common]) == 2
    assert "MLOPS_GATEWAY_ADMIN_TOKEN" in capsys.readouterr().err
