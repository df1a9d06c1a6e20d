"""`mlops automation status|move`: the served model's degree of automation, its evidence, and moving it.

The degree lives in the gateway (its admin API's policy: `automation`, `band`); the evidence in the
prediction and feedback logs (monitoring.agreement); the rules in the config's [automation]
section (monitoring.readiness). A move up must meet the rules for the next degree (or be forced,
with a reason) and names who approved it; a move down is immediate and needs nobody. Every move,
and every refused request to move up, is an `AutomationChange` execution in ML Metadata with the
served model as its input (metadata.automation).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from core.config import AUTOMATION_DEGREES, Config, load_config
from core.errors import DataError
from metadata.recorder import Trigger
from monitoring.readiness import ReadinessVerdict, assess_readiness, check_degree
from serving.rollout import ADMIN_TOKEN_ENV, DEFAULT_GATEWAY_URL, GATEWAY_URL_ENV, GatewayAdminClient
from serving.rollout import gateway_url as resolve_gateway_url



@dataclasses.dataclass(frozen=True)
class AutomationStatus:
    """The served model, the degree it answers in, and its readiness verdict on the evidence window."""

    model_name: str
    model_version: int
    degree: str
    band: tuple[float, float]
    window_start: dt.datetime
    window_end: dt.datetime
    verdict: ReadinessVerdict
    review_ledger: str | None = None  # the ledger cannot-tell / unanswered cases were counted from; None: none yet

    def to_json(self) -> dict[str, Any]:
        group = self.verdict.evidence
        return {"model_name": self.model_name, "model_version": self.model_version, "degree": self.degree,
                "band": list(self.band), "window_start": self.window_start.isoformat(),
                "window_end": self.window_end.isoformat(), "verdict": self.verdict.to_json(),
                "review_ledger": self.review_ledger,
                "undecided_reviews": {"cannot_tell": group.cannot_tell if group else 0,
                                      "unanswered": group.unanswered if group else 0}}

    def describe(self) -> str:
        header = (f"{self.model_name}:{self.model_version} answers in {self.degree}"
                  + (f" (band {self.band[0]:g} to {self.band[1]:g})" if self.degree == "partial" else "")
                  + f"; evidence: requests served {self.window_start:%Y-%m-%d %H:%M} to {self.window_end:%Y-%m-%d %H:%M} UTC")
        verdict = {"up": f"ready for {self.verdict.next}: `mlops automation move --to {self.verdict.next} --approved-by NAME`",
                   "down": f"agreement fell under the floor of {self.degree}: "
                           f"`mlops automation move --to {self.verdict.move_down_to}` (no approval needed)",
                   "stay": f"stays in {self.degree}" + (f" (not yet ready for {self.verdict.next})" if self.verdict.next else "")}
        return "\n".join([header, self.verdict.describe(), self.undecided_line(), verdict[self.verdict.action]])

    def undecided_line(self) -> str:
        """The reviews that gave no decision (from the review ledger), which agreement does not count."""
        if self.review_ledger is None:
            return "cannot tell / unanswered: not counted (no review ledger: no review run has opened cases yet)"
        group = self.verdict.evidence
        cannot_tell, unanswered = (group.cannot_tell, group.unanswered) if group else (0, 0)
        return (f"reviews without a decision in {self.degree}: {cannot_tell} cannot tell, {unanswered} unanswered "
                f"(ledger {self.review_ledger})")


@dataclasses.dataclass(frozen=True)
class AutomationMove:
    """One change of degree (or a refused request for one), as recorded in ML Metadata."""

    model_name: str
    model_version: int
    from_degree: str
    to_degree: str
    applied: bool
    approved_by: str
    reason: str
    forced: bool
    execution_id: int
    policy: dict[str, Any]  # the gateway's policy after the move

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Where `make run` keeps the token of the gateway it starts, below the config's root (mlops/loop.py).
LOCAL_TOKEN_FILE = Path("var/run/gateway_admin_token")


def admin_client(gateway_url: str | None = None, token: str | None = None, root: Path | None = None) -> Any:
    """The gateway's admin client: URL from the argument or $MLOPS_GATEWAY_URL, token from
    $MLOPS_GATEWAY_ADMIN_TOKEN, else from the local gateway's token file under `root`."""
    token = token or os.environ.get(ADMIN_TOKEN_ENV, "")
    local = root / LOCAL_TOKEN_FILE if root is not None else None
    if not token and local is not None and local.is_file():
        token = local.read_text(encoding="utf-8").strip()
    if not token:
        where = f" (`make run` keeps the token of the gateway it starts in {local})" if local else ""
        raise DataError(f"no gateway admin token: set {ADMIN_TOKEN_ENV} to the token the gateway was started with{where}")
    return GatewayAdminClient(resolve_gateway_url(gateway_url), token)


def default_log_dir(config: Config) -> Path:
    from metadata.queries import DEFAULT_LOG_DIR

    return config.root / DEFAULT_LOG_DIR


def automation_status(config: Config, admin: Any, *, log_dir: Path | None = None,
                      now: dt.datetime | None = None) -> AutomationStatus:
    """The served (stable) model's degree from the gateway and its readiness on the last `automation.window_days`."""
    from monitoring.agreement import read_agreement

    model_name = config.serving.model_name
    policy = admin.get_policy(model_name)
    version = policy.get("stable_version")
    if version is None:
        raise DataError(f"the gateway serves no stable version of {model_name!r} (policy {policy}): nothing to judge")
    degree = str(policy.get("automation"))
    check_degree(degree)
    end = now or dt.datetime.now(dt.timezone.utc)
    start = end - dt.timedelta(days=config.automation.window_days)
    from metadata.review import ledger_path

    agreement = read_agreement(Path(log_dir) if log_dir else default_log_dir(config), model_name, start, end,
                               ledger_path(config.pipeline_root))
    verdict = assess_readiness(agreement, int(version), degree, config.automation)
    band = tuple(float(b) for b in policy.get("band") or (0.4, 0.6))
    return AutomationStatus(model_name, int(version), degree, band, start, end, verdict,  # type: ignore[arg-type]
                            agreement.ledger)


def move_automation(config: Config, admin: Any, to: str, *, approved_by: str = "", force_reason: str = "",
                    log_dir: Path | None = None, now: dt.datetime | None = None, run_id: str | None = None,
                    trigger: Trigger = Trigger("cli"), airflow_dag_id: str = "", airflow_run_id: str = "") -> AutomationMove:
    """Moves the served model to degree `to` through the admin API and records the AutomationChange.

    Up: one degree at a time, the readiness rules met (or `force_reason` given), and `approved_by`
    named. Down: immediate, any number of degrees, no approval needed.
    """
    check_degree(to)
    status = automation_status(config, admin, log_dir=log_dir, now=now)
    current = status.degree
    if to == current:
        raise DataError(f"{status.model_name}:{status.model_version} already answers in {to}")
    up = AUTOMATION_DEGREES.index(to) > AUTOMATION_DEGREES.index(current)
    forced = False
    if up:
        if not approved_by.strip():
            raise DataError(f"moving {status.model_name} up from {current} to {to} needs a person: give --approved-by NAME")
        if to != status.verdict.next and not force_reason:
            raise DataError(f"moving up goes one degree at a time ({current} -> {status.verdict.next}), not to {to}; "
                            "--force REASON to skip")
        if not status.verdict.meets:
            if not force_reason:
                unmet = "; ".join(rule.describe() for rule in status.verdict.rules if not rule.met)
                raise DataError(f"{status.model_name}:{status.model_version} does not meet the rule for {current} -> {to}: "
                                f"{unmet or 'agreement is under the floor'} (--force REASON to move anyway)")
        forced = bool(force_reason) and (not status.verdict.meets or to != status.verdict.next)
    return apply_move(config, admin, status, to, approved_by=approved_by,
                      reason=force_reason or ("readiness rules met" if up else _down_reason(status, to)), forced=forced,
                      run_id=run_id, trigger=trigger, airflow_dag_id=airflow_dag_id, airflow_run_id=airflow_run_id)


def _down_reason(status: AutomationStatus, to: str) -> str:
    floor = status.verdict.floor
    if status.verdict.move_down and floor is not None:
        return f"agreement {floor.observed:.1%} under the floor {floor.threshold:.0%} of {status.degree}"
    return f"moved down to {to} by hand"


def apply_move(config: Config, admin: Any, status: AutomationStatus, to: str, *, approved_by: str, reason: str,
               forced: bool, run_id: str | None = None, trigger: Trigger = Trigger("cli"), airflow_dag_id: str = "",
               airflow_run_id: str = "") -> AutomationMove:
    """Sets the gateway's degree (the band of partial is kept) and records the change."""
    policy = admin.set_automation(status.model_name, to)
    execution_id = record_decision(config, status, to, applied=True, approved_by=approved_by, reason=reason, forced=forced,
                                   run_id=run_id, trigger=trigger, airflow_dag_id=airflow_dag_id,
                                   airflow_run_id=airflow_run_id)
    return AutomationMove(status.model_name, status.model_version, status.degree, to, True, approved_by, reason, forced,
                          execution_id, dict(policy))


def record_decision(config: Config, status: AutomationStatus, to: str, *, applied: bool, approved_by: str, reason: str,
                    forced: bool = False, run_id: str | None = None, trigger: Trigger = Trigger("cli"),
                    airflow_dag_id: str = "", airflow_run_id: str = "") -> int:
    """Records an AutomationChange (applied or refused) with the verdict it was decided on."""
    from metadata.automation import record_automation_change
    from metadata.store import connect

    verdict = status.verdict
    evidence = {"action": verdict.action, "meets": verdict.meets,
                "window": [status.window_start.isoformat(), status.window_end.isoformat()],
                "rules": {r.name: {"observed": r.observed, "threshold": r.threshold, "met": r.met, "detail": r.detail}
                          for r in verdict.rules},
                "floor": verdict.floor.to_json() if verdict.floor else None}
    if verdict.evidence is not None:
        group = verdict.evidence
        evidence.update(reviewed=group.reviewed, agreement=group.agreement, kappa=group.kappa,
                        referral_rate=group.referral_rate, override_rate=group.override_rate)
    return record_automation_change(
        connect(config.metadata), config.pipeline_name, status.model_name, status.model_version, from_degree=status.degree,
        to_degree=to, applied=applied, approved_by=approved_by, reason=reason, forced=forced, evidence=evidence,
        run_id=run_id, trigger=trigger, airflow_dag_id=airflow_dag_id, airflow_run_id=airflow_run_id)


# --- the command line ------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    status = automation_status(config, admin_client(args.gateway_url, root=config.root), log_dir=Path(args.log_dir) if args.log_dir else None)
    print(json.dumps(status.to_json(), indent=2, default=str) if args.json else status.describe())
    return 0


def cmd_move(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    move = move_automation(config, admin_client(args.gateway_url, root=config.root), args.to, approved_by=args.approved_by or "",
                           force_reason=args.force or "", log_dir=Path(args.log_dir) if args.log_dir else None)
    if args.json:
        print(json.dumps(move.to_json(), indent=2, default=str))
    else:
        who = f", approved by {move.approved_by}" if move.approved_by else ""
        print(f"{move.model_name}:{move.model_version} moved {move.from_degree} -> {move.to_degree}{who} "
              f"({move.reason}); recorded as AutomationChange {move.execution_id}")
    return 0


def add_commands(sub: Any) -> None:
    automation = sub.add_parser("automation", help="the served model's degree of automation (shadow, assist, partial, full)")
    actions = automation.add_subparsers(dest="action", required=True)
    status = actions.add_parser("status", help="its degree, the evidence, and whether it meets the rule for the next one")
    move = actions.add_parser("move", help="change its degree through the gateway's admin API; recorded in ML Metadata")
    move.add_argument("--to", required=True, choices=AUTOMATION_DEGREES, help="the degree to move to")
    move.add_argument("--approved-by", help="who approved a move up (needed for one; a move down needs nobody)")
    move.add_argument("--force", metavar="REASON", help="move up though the readiness rule is not met, saying why")
    for parser in (status, move):
        parser.add_argument("--gateway-url", help=f"the gateway (default: ${GATEWAY_URL_ENV} or {DEFAULT_GATEWAY_URL}); "
                                                  f"the admin token comes from ${ADMIN_TOKEN_ENV}")
        parser.add_argument("--log-dir", help="the gateway's prediction log directory (default: var/logs/predictions)")
        parser.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=cmd_status)
    move.set_defaults(handler=cmd_move)
