"""`mlops monitor check`: the drift checks from the command line, plus the lineage and runs commands.

`mlops.cli` calls `add_commands` for every package that has one; this one also brings
`mlops lineage ...` and `mlops runs ...` (metadata/cli.py), which answer from ML Metadata.
Heavy imports happen inside the handlers, so `mlops --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

# Exit code of `mlops monitor check` when a check failed (0: all passed, 2: bad input).
EXIT_CHECK_FAILED = 1


def cmd_monitor_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from core.config import load_config
    from metadata.recorder import Trigger
    from monitoring.monitor import run_monitoring
    from monitoring.settings import load_thresholds

    config = load_config(args.config)
    result = run_monitoring(
        config, window_start=args.start, window_end=args.end, log_dir=Path(args.log_dir) if args.log_dir else None,
        run_id=args.run_id, trigger=Trigger(args.trigger), thresholds=load_thresholds(args.thresholds),
        progress=lambda message: print(message, file=sys.stderr))
    if args.json:
        print(json.dumps(result.to_json(), indent=2, sort_keys=True, default=str))
        return 0 if result.passed else EXIT_CHECK_FAILED
    if result.rows == 0:
        print(f"no served requests logged between {result.window_start.isoformat()} and {result.window_end.isoformat()}")
        return 0
    print(f"{result.rows} served requests of {result.model_name}:{result.model_version}, "
          f"{result.window_start.isoformat()} to {result.window_end.isoformat()}")
    for check in result.checks:
        judged = check.evidence.get("judged") is not False
        mark = ("passed" if check.passed else "FAILED") if judged else "not judged"
        moved = (check.evidence.get("drifted_features") or check.evidence.get("features_exceeded")
                 or check.evidence.get("features") or check.evidence.get("metrics_failed")
                 or check.evidence.get("detectors_failed") or [])
        value = f"{check.value:.4f}" if isinstance(check.value, float) else "-"
        threshold = f"{check.threshold:.4f}" if isinstance(check.threshold, float) else "-"
        detail = check.evidence.get("skipped") if not judged else (", ".join(moved) if not check.passed else "")
        print(f"  {check.name:<22} {mark:<10} value {value:>8}  threshold {threshold:>8}  {detail or ''}".rstrip())
    print(f"report: {result.report_html}")
    if result.artifact is not None:
        print(f"recorded: DriftCheckResult {result.artifact.id}")
    return 0 if result.passed else EXIT_CHECK_FAILED


def cmd_monitor_paired(args: argparse.Namespace) -> int:
    """Candidate vs stable on the shadowed requests of a window (monitoring/paired.py)."""
    from pathlib import Path

    from core.config import load_config
    from metadata.queries import DEFAULT_LOG_DIR
    from monitoring.paired import compare_logged, write_paired_report
    from monitoring.settings import load_thresholds

    config = load_config(args.config)
    log_dir = Path(args.log_dir) if args.log_dir else config.root / DEFAULT_LOG_DIR
    comparison = compare_logged(log_dir, args.start, args.end, load_thresholds(args.thresholds).paired,
                                model_name=config.serving.model_name)
    if args.html:
        write_paired_report(Path(args.html), comparison, f"{config.serving.model_name}: candidate vs stable, {args.start} to {args.end}")
    if args.json:
        print(json.dumps(comparison.to_json(), indent=2, sort_keys=True))
    else:
        print(f"{comparison.pairs} paired requests (stable {list(comparison.stable_versions)}, candidate "
              f"{list(comparison.candidate_versions)}): decisions agree on {comparison.agreement:.1%}, mean probability "
              f"difference {comparison.mean_difference:+.4f}; labelled disagreements {comparison.labelled_disagreements}: "
              f"stable right {comparison.stable_right}, candidate right {comparison.candidate_right}")
        for entry in comparison.slices[:10]:
            mark = "DIVERGED" if entry.diverged else ""
            print(f"  {entry.feature}={entry.value:<30} pairs {entry.pairs:>6}  agreement {entry.agreement:.3f}  "
                  f"difference {entry.mean_difference:+.3f}  {mark}".rstrip())
        print(("not judged: " if not comparison.judged else "DIVERGED: " if comparison.diverged else "within the limits")
              + "; ".join(comparison.reasons))
    return EXIT_CHECK_FAILED if comparison.diverged else 0


def cmd_monitor_timeline(args: argparse.Namespace) -> int:
    """Every recorded window of one model version, oldest first (monitoring/timeline.py)."""
    from pathlib import Path

    from core.atomic import write_text
    from core.config import load_config
    from metadata.store import connect
    from monitoring.report import render_timeline_page
    from monitoring.settings import load_thresholds
    from monitoring.timeline import build_timeline

    config = load_config(args.config)
    timeline = build_timeline(connect(config.metadata), config.serving.model_name, args.version, load_thresholds(args.thresholds))
    for p in timeline.points:
        numbers = (p.data_drift, p.estimated_accuracy, p.realized_accuracy, p.agreement, p.referrals)
        drift, estimated, realized, agreement, referrals = ("-" if v is None else f"{v:.3f}" for v in numbers)
        print(f"{p.window_end[:16]}  rows {p.rows:>7}  drift {drift:>6}  accuracy {estimated:>6} est. / {realized:>6} real.  "
              f"agreement {agreement:>6}  referrals {referrals:>6}  {', '.join(p.failed_checks)}  {p.retraining or ''}".rstrip())
    if args.html:
        write_text(Path(args.html), render_timeline_page(timeline, f"{config.serving.model_name}:{args.version}: monitoring timeline"))
    return 0


def _window_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", required=True, help="window start, ISO date or time (UTC)")
    parser.add_argument("--end", required=True, help="window end (exclusive), ISO date or time (UTC)")
    parser.add_argument("--log-dir", help="the gateway's prediction log directory (default: var/logs/predictions)")
    parser.add_argument("--thresholds", help="thresholds TOML (default: $MLOPS_MONITORING_THRESHOLDS, else monitoring/thresholds.toml)")


def add_commands(sub: Any) -> None:
    from metadata.cli import add_commands as add_lineage_commands

    monitor = sub.add_parser("monitor", help="drift, skew, quality and concept-drift checks on prediction logs").add_subparsers(
        dest="action", required=True)
    check = monitor.add_parser("check", help="run every check on a window of logged predictions and record the result")
    _window_arguments(check)
    check.add_argument("--run-id", help="monitoring run id (MLMD context); default: a new one")
    check.add_argument("--trigger", default="manual", help="manual | schedule | cli")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(handler=cmd_monitor_check)
    paired = monitor.add_parser("paired", help="candidate vs stable on the same (shadowed) requests of a window")
    _window_arguments(paired)
    paired.add_argument("--html", help="write the comparison's page here")
    paired.add_argument("--json", action="store_true", help="print the comparison as JSON")
    paired.set_defaults(handler=cmd_monitor_paired)
    timeline = monitor.add_parser("timeline", help="every recorded monitoring window of a model version, with the page")
    timeline.add_argument("--version", type=int, required=True, help="the model version whose windows to show")
    timeline.add_argument("--thresholds", help="thresholds TOML (for the agreement limit)")
    timeline.add_argument("--html", help="write the timeline page here")
    timeline.set_defaults(handler=cmd_monitor_timeline)
    add_lineage_commands(sub)
