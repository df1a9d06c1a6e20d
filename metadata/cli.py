"""`mlops lineage ...` and `mlops runs ...`: the auditor's and the experimenter's questions on the command line.

Text tables by default, `--json` for tooling, `--html FILE` / `--svg FILE` for a picture of the
lineage graph. Unknown models, requests, datasets or runs exit with code 2 and say what exists.
Nothing here imports TensorFlow: answers come from ML Metadata and the Parquet logs only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

EXIT_NOT_FOUND = 2


def _print_json(value: Any) -> None:
    from metadata.queries import as_plain

    print(json.dumps(as_plain(value), indent=2, sort_keys=True, default=str))


def _store_and_config(args: argparse.Namespace):
    from core.config import load_config
    from metadata.store import connect

    config = load_config(args.config)
    return connect(config.metadata), config


def _log_dir(args: argparse.Namespace, config) -> Path:
    from metadata.queries import DEFAULT_LOG_DIR

    return Path(args.log_dir) if getattr(args, "log_dir", None) else config.root / DEFAULT_LOG_DIR


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) if c is not None else "-" for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _kv(value: Mapping[str, Any] | None) -> str:
    if not value:
        return "-"
    return ", ".join(f"{k}={_short(v)}" for k, v in value.items())


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _write_pictures(args: argparse.Namespace, graph, title: str, summary: Mapping[str, Any]) -> None:
    from core.atomic import write_text
    from metadata.lineage_graph import render_html, render_svg

    if getattr(args, "html", None):
        print(f"wrote {write_text(Path(args.html), render_html(graph, title, summary))}", file=sys.stderr)
    if getattr(args, "svg", None):
        print(f"wrote {write_text(Path(args.svg), render_svg(graph, title))}", file=sys.stderr)


# --- lineage model ---------------------------------------------------------------------------


def _production_lines(production: Mapping[str, Any] | None) -> list[str]:
    """Which served requests and whose labels trained the model (empty when it learned from the CSV only)."""
    if not production:
        return []
    return [
        f"Production data  {production['rows_labelled']} labelled requests of {production['rows_served']} served "
        f"({production['rows_unlabelled']} unlabelled, {production['rows_capped']} over the cap), "
        f"window {production['window_start']} to {production['window_end']}, label policy {production['label_policy']}",
        f"  labels           {_kv(production['by_label_source'])}  by {_kv(production['by_feedback_source'])}",
        f"  request log      {production['log_dir']}/requests  rows by partition {_kv(production['rows_by_partition'])}",
        f"  feedback files   {len(production['feedback_files'])}: {', '.join(production['feedback_files'][:5])}"
        f"{' ...' if len(production['feedback_files']) > 5 else ''}",
    ]


def format_model_audit(audit: Mapping[str, Any]) -> str:
    model, run, data = audit["model"], audit["run"], audit["data"]
    evaluation, rejected = audit["evaluation"], audit["rejected"]
    lines = [f"Model {model['name']}:{model['version']}  (PushedModel {model['artifact_id']})",
             f"  served from      {model['uri']}",
             f"  pushed at        {model['pushed_at']}",
             f"  fingerprint      {model['fingerprint']}",
             f"Run              {run['id']} (pipeline {run['pipeline']})",
             f"  triggered by     {run['trigger_kind']}  {_short(run['trigger']) if run['trigger'] else ''}".rstrip()]
    if run.get("airflow_dag_id"):
        lines.append(f"  airflow          {run['airflow_dag_id']} / {run['airflow_run_id']}")
    check = run.get("drift_check")
    if check:
        props = check.get("properties") or {}
        lines.append(f"  drift check      DriftCheckResult {check.get('id')}: "
                     f"{'passed' if props.get('passed') else 'FAILED'} on {props.get('model_name')}:{props.get('model_version')}, "
                     f"window {props.get('window_start')} to {props.get('window_end')}, {props.get('rows')} requests")
        for failed in check.get("failed_checks", []):
            evidence = failed.get("evidence") or {}
            moved = evidence.get("drifted_features") or evidence.get("features_exceeded") or evidence.get("features") \
                or evidence.get("metrics_failed") or []
            lines.append(f"    {failed['name']}: value {_short(failed.get('value'))} > threshold {_short(failed.get('threshold'))}"
                         f"{'; moved: ' + ', '.join(moved) if moved else ''}")
        if check.get("report"):
            lines.append(f"    report: {check['report']}")
        elif props.get("report"):
            lines.append(f"    report: {props['report']}")
    raw = data.get("raw") or {}
    lines += [
        f"Data             {raw.get('uri')}  sha256 {(raw.get('properties') or {}).get('sha256')}",
        f"  window           {data['window_start']} to {data['window_end']}",
        f"  rows             {data['rows']}  splits {_kv(data['splits'])}",
        f"  examples         {data['examples']}",
        *_production_lines(data.get("production")),
        f"Schema           {(audit.get('schema') or {}).get('uri')}  sha256 {((audit.get('schema') or {}).get('properties') or {}).get('sha256')}",
        f"Statistics       {audit['statistics']['uri']}  report {audit['statistics']['report']}",
        f"Anomalies        {audit['anomalies']['count']}  {_short(audit['anomalies']['found']) if audit['anomalies']['count'] else ''}".rstrip(),
        f"Rejected rows    ingest (unparseable): {rejected['ingest_unparseable']}; clean: {rejected['clean_rejected']} "
        f"of {rejected['rows_in']} {_short(rejected['clean_by_reason'])}",
        f"  files            {rejected['clean_uri']}",
        f"Transform graph  {audit['transform_graph']}",
        f"Code version     {', '.join(audit['code_version'])}",
        f"Hyperparameters  {_kv(audit['hyperparameters'])}",
        f"Evaluation       {_kv({k: v for k, v in evaluation['metrics'].items() if k != 'count'})}",
        f"  blessed          {evaluation['blessed']}: {'; '.join(evaluation['reasons'])}",
        f"  report           {evaluation['report']}",
    ]
    if audit.get("monitoring"):
        lines.append("Monitoring")
        for check in audit["monitoring"]:
            verdict = "passed" if check["passed"] else "FAILED " + ", ".join(check["failed_checks"])
            lines.append(f"  #{check['id']} {check['window_start']} to {check['window_end']}: {verdict}  {check['report']}")
    lines += format_automation_changes(audit.get("automation_changes") or [])
    lines += format_review_runs(audit.get("review_runs") or [])
    if audit.get("rollouts"):
        lines.append("Rollouts")
        for rollout in audit["rollouts"]:
            lines.append(f"  #{rollout['id']} {rollout['finished']} {rollout['action']}: {rollout['decision']}"
                         f"{': ' + '; '.join(rollout['reasons']) if rollout['reasons'] else ''}")
            if rollout.get("approval"):
                lines.append(f"    {format_approval(rollout['approval'])}")
    steps = [(step, e["type"], e["id"], e["state"], (e.get("run") or {}).get("name"), e.get("finished"))
             for step, e in audit["executions"].items()]
    lines += ["", _table(steps, ["step", "type", "execution", "state", "run", "finished"])]
    return "\n".join(lines)


def format_automation_changes(changes: Sequence[Mapping[str, Any]]) -> list[str]:
    """The model's degree-of-automation history: each move (or refused move up), who approved, on what evidence."""
    from metadata.queries import _iso_ms

    if not changes:
        return []
    lines = ["Automation (degree changes, oldest first)"]
    for change in changes:
        when = _iso_ms(change.get("at_ms") or 0) or "?"
        evidence = change.get("evidence") if isinstance(change.get("evidence"), Mapping) else {}
        agreement = evidence.get("agreement")
        measured = (f"; evidence: {evidence.get('reviewed')} reviewed, agreement {agreement:.1%}"
                    if isinstance(agreement, (int, float)) else "")
        verdict = "moved" if change.get("applied") else "NOT moved"
        who = f", approved by {change['approved_by']}" if change.get("approved_by") else ""
        lines.append(f"  {when} {change.get('from_degree')} -> {change.get('to_degree')}: {verdict}{who} "
                     f"({change.get('reason')}{', forced' if change.get('forced') else ''}){measured}{_unmet(evidence)}  "
                     f"[AutomationChange {change.get('execution_id')}]")
    return lines


def _unmet(evidence: Mapping[str, Any]) -> str:
    """'; not met: min_slice_agreement 0.0% < 90.0% (worst slice ...)': the rules the move was made against."""
    rules = evidence.get("rules") if isinstance(evidence.get("rules"), Mapping) else {}
    shown = []
    for name, rule in rules.items():
        if not isinstance(rule, Mapping) or rule.get("met") is not False:
            continue
        observed, threshold = rule.get("observed"), rule.get("threshold")
        number = (lambda v: "n/a" if v is None else f"{int(v)}") if name == "min_reviewed" else (
            lambda v: "n/a" if v is None else f"{v:.1%}")
        shown.append(f"{name} {number(observed)} {'>' if name.startswith('max_') else '<'} {number(threshold)}"
                     + (f" ({rule['detail']})" if rule.get("detail") else ""))
    return f"; not met: {'; '.join(shown)}" if shown else ""


def format_review_runs(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The review runs of the model's answers: counts by outcome and who answered, oldest first."""
    from metadata.queries import _iso_ms

    if not runs:
        return []
    lines = ["Reviews (review runs of its answers, oldest first)"]
    for run in runs:
        reviewers = ", ".join(f"{user} ({who['answered']} decided, {who['cannot_tell']} cannot tell, last {who['last']})"
                              for user, who in (run.get("reviewers") or {}).items())
        lines.append(f"  {_iso_ms(run.get('at_ms') or 0)} {run['review_run']}: {run['cases']} cases, {run['answered']} answered "
                     f"({run['agree']} agree, {run['disagree']} disagree), {run['cannot_tell']} cannot tell, "
                     f"{run['unanswered']} unanswered  [ReviewRun {run['execution_id']}]")
        lines.append(f"    reviewers: {reviewers or 'nobody answered'}; cases {run.get('cases_file')}")
    return lines


def format_request_reviews(reviews: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per reviewed case of a request: what became of it, who said what, when, in which ReviewRun."""
    lines = []
    for review in reviews:
        state = review.get("state")
        said = {"answered": f"decided {review.get('answer')} by {review.get('answered_by')} at {review.get('answered_at')}",
                "cannot_tell": f"cannot tell, said {review.get('answered_by')} at {review.get('answered_at')}",
                "unanswered": f"unanswered: nobody answered before the timeout (closed {review.get('closed_at')})",
                "open": "open: waiting for a reviewer"}.get(str(state), str(state))
        where = (f"ReviewRun {review['review_execution']}" if review.get("review_execution") is not None
                 else f"not recorded in ML Metadata yet; ledger {review.get('source')}")
        lines.append(f"Review: instance {review.get('instance_index')} ({review.get('reason')}, {review.get('automation')}, "
                     f"v{review.get('model_version')}): {said}  [{review.get('run_id')}, {where}]")
    return lines


def format_approval(approval: Mapping[str, Any]) -> str:
    """'approved by admin at <time> on evidence: <windows>; <paired>' (or rejected / timed out)."""
    decision = approval.get("decision")
    who = {"approved": f"approved by {approval.get('responded_by')} at {approval.get('responded_at')}",
           "rejected": f"rejected by {approval.get('responded_by')} at {approval.get('responded_at')}",
           "timed_out": f"not answered before the timeout ({approval.get('responded_at')})"}.get(decision, str(decision))
    evidence = approval.get("evidence") or {}
    shown = [f"{w.get('share')}%: {w.get('canary_requests')}/{w.get('stable_requests')} requests, error rate "
             f"{_short(w.get('canary_error_rate'))}/{_short(w.get('stable_error_rate'))}, latency x{_short(w.get('latency_ratio'))}, "
             f"mean shift {_short(w.get('mean_probability_shift'))}" for w in evidence.get("windows", [])]
    paired = evidence.get("paired")
    if paired:
        shown.append(f"paired: {paired.get('pairs')} requests, agreement {_short(paired.get('agreement'))}"
                     f"{', DIVERGED' if paired.get('diverged') else ''}")
    return f"{who} on evidence: {'; '.join(shown) or 'none recorded'} (Deploy #{approval.get('canary_deploy_execution')})"


def cmd_lineage_model(args: argparse.Namespace) -> int:
    from metadata.queries import model_audit, model_graph, parse_model_ref

    store, _ = _store_and_config(args)
    name, version = parse_model_ref(args.model)
    audit = model_audit(store, name, version)
    graph = model_graph(store, name, version)
    _write_pictures(args, graph, f"Lineage of {name}:{version}", {
        "model": f"{name}:{version}", "run": audit["run"]["id"], "trigger": audit["run"]["trigger_kind"],
        "data window": f"{audit['data']['window_start']} to {audit['data']['window_end']}",
        "auc": audit["evaluation"]["metrics"].get("auc")})
    if args.json:
        _print_json({**audit, "graph": graph})
    else:
        print(format_model_audit(audit))
    return 0


# --- lineage request -------------------------------------------------------------------------


def cmd_lineage_request(args: argparse.Namespace) -> int:
    from metadata.queries import model_graph
    from metadata.served_lineage import request_audit

    from metadata.review import ledger_path

    store, config = _store_and_config(args)
    audit = request_audit(store, _log_dir(args, config), args.request_id, ledger_path(config.pipeline_root))
    if args.html or args.svg:
        for key in audit["model_audits"]:
            name, _, version = key.partition(":")
            if "error" not in audit["model_audits"][key]:
                _write_pictures(args, model_graph(store, name, int(version)), f"Request {args.request_id} -> {key}",
                                {"request": args.request_id, "model": key})
                break
    if args.json:
        _print_json(audit)
        return 0
    rows = audit["rows"]
    print(f"Request {audit['request_id']}: {len(rows)} logged rows, answered by {', '.join(audit['models']) or '?'} "
          f"in degree of automation {', '.join(audit.get('degrees') or []) or '?'}")
    table = [(r.get("instance_index"), r.get("timestamp"), f"{r.get('model_name')}:{r.get('model_version')}", r.get("label"),
              "shadow" if r.get("is_shadow") else "served", r.get("automation"), _short(r.get("probability")), r.get("decision"),
              r.get("status_code"))
             for r in rows]
    print(_table(table, ["instance", "time", "model", "label", "kind", "degree", "probability", "decision", "status"]))
    if audit["feedback"]:
        print("\nFeedback: " + "; ".join(f"instance {f['instance_index']}: ground_truth={f['ground_truth']} "
                                        f"human={f['human_decision']} ({f['source']}, {f['timestamp']})" for f in audit["feedback"]))
    reviewed = [f for f in audit["feedback"] if f.get("human_decision")]
    for review in reviewed:
        print(f"Reviewed by a person: instance {review['instance_index']} decided {review['human_decision']} "
              f"({review['source']}, {review['timestamp']})")
    for line in format_request_reviews(audit.get("reviews") or []):
        print(line)
    print()
    if not audit.get("trained"):
        print("Training data: not read by the training of any pushed model (no label, or no production data run since)")
    for use in audit.get("trained", []):
        labels = "; ".join(f"instance {i}: {v['label']} from {v['source']} by {v['by']}" for i, v in use["instances"].items())
        print(f"Training data: trained {use['model']} (ingest execution {use['ingest_execution']}, "
              f"policy {use['label_policy']}): {labels}")
    for key, model in audit["model_audits"].items():
        print()
        print(model["error"] if "error" in model else format_model_audit(model))
    return 0


# --- lineage data ----------------------------------------------------------------------------


def cmd_lineage_data(args: argparse.Namespace) -> int:
    from metadata.served_lineage import data_audit

    store, config = _store_and_config(args)
    audit = data_audit(store, args.uri, _log_dir(args, config))
    _write_pictures(args, audit["graph"], f"Derived from {args.uri}", {"dataset": args.uri, "models": len(audit["models"])})
    if args.json:
        _print_json(audit)
        return 0
    print(f"Dataset {args.uri}: " + ", ".join(f"{a['type']} {a['id']}" for a in audit["artifacts"]))
    print(f"Runs that used it: {', '.join(audit['runs']) or 'none'}")
    print("\nDerived artifacts:")
    print(_table([(kind, len(items), items[-1]["uri"]) for kind, items in audit["derived"].items()],
                 ["type", "count", "latest uri"]))
    print(f"\nModels trained on it, and the requests they served (logs: {audit['log_dir']}):")
    print(_table([(f"{m['name']}:{m['version']}", m["artifact_id"], m["pushed_at"], m["requests"]["requests"],
                   m["requests"]["served"], m["requests"]["shadow"]) for m in audit["models"]],
                 ["model", "artifact", "pushed at", "requests", "examples served", "shadow examples"]))
    return 0


# --- runs ------------------------------------------------------------------------------------


def cmd_runs_list(args: argparse.Namespace) -> int:
    from metadata.queries import list_runs

    store, config = _store_and_config(args)
    runs = list_runs(store, None if args.all else (args.pipeline or config.pipeline_name))[: args.limit]
    if args.json:
        _print_json(runs)
        return 0
    rows = []
    for run in runs:
        window = run["window"] or {}
        metrics = run["metrics"] or {}
        rows.append((run["run_id"], run["pipeline"], run["created"], run["trigger_kind"], run["status"],
                     f"{(window.get('window_start') or '')[:10]}..{(window.get('window_end') or '')[:10]}" if window else "-",
                     _short(metrics.get("auc")) if metrics else "-", run["blessed"], run["pushed_version"],
                     _kv({k: run["parameters"][k] for k in ("learning_rate", "train_steps", "batch_size") if k in run["parameters"]})))
    print(_table(rows, ["run", "pipeline", "created", "trigger", "status", "window", "auc", "blessed", "pushed", "parameters"]))
    return 0


def cmd_runs_compare(args: argparse.Namespace) -> int:
    from metadata.queries import compare_runs

    store, _ = _store_and_config(args)
    comparison = compare_runs(store, args.runs)
    if args.json:
        _print_json(comparison)
        return 0
    rows = [(row["section"], ("* " if row["differs"] else "  ") + row["name"], *[_short(v) for v in row["values"]])
            for row in comparison["rows"]]
    print(_table(rows, ["section", "name (* differs)", *comparison["runs"]]))
    return 0


# --- wiring ----------------------------------------------------------------------------------


def _not_found_to_exit(handler):
    """LineageNotFoundError is the user's question having no answer: a message and exit code 2, no traceback."""

    def run(args: argparse.Namespace) -> int:
        from metadata.lineage import LineageNotFoundError

        try:
            return handler(args)
        except LineageNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_NOT_FOUND

    return run


def _output_flags(parser: argparse.ArgumentParser, pictures: bool = True) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text tables")
    if pictures:
        parser.add_argument("--html", metavar="FILE", help="also write the lineage graph as an HTML page")
        parser.add_argument("--svg", metavar="FILE", help="also write the lineage graph as an SVG picture")


def add_commands(sub: Any) -> None:
    """Adds `lineage` and `runs` to the `mlops` command line."""
    lineage = sub.add_parser("lineage", help="lineage questions auditors ask").add_subparsers(dest="action", required=True)
    model = lineage.add_parser("model", help="everything behind a pushed model version, and what triggered its run")
    model.add_argument("model", help="MODEL:VERSION, e.g. taxi:1")
    _output_flags(model)
    model.set_defaults(handler=_not_found_to_exit(cmd_lineage_model))
    request = lineage.add_parser("request", help="from a logged prediction to the model that answered it and its lineage")
    request.add_argument("request_id")
    request.add_argument("--log-dir", help="the gateway's prediction log directory (default: var/logs/predictions)")
    _output_flags(request)
    request.set_defaults(handler=_not_found_to_exit(cmd_lineage_request))
    data = lineage.add_parser("data", help="everything derived from a dataset, down to models and the requests they served")
    data.add_argument("uri", help="the dataset's URI as recorded (e.g. the CSV path)")
    data.add_argument("--log-dir", help="the gateway's prediction log directory (default: var/logs/predictions)")
    _output_flags(data)
    data.set_defaults(handler=_not_found_to_exit(cmd_lineage_data))

    runs = sub.add_parser("runs", help="pipeline runs: list and compare (experiment tracking)").add_subparsers(
        dest="action", required=True)
    listing = runs.add_parser("list", help="runs, newest first, with trigger, window, metrics and what was pushed")
    listing.add_argument("--pipeline", help="pipeline name (default: the config's pipeline_name)")
    listing.add_argument("--all", action="store_true", help="every pipeline, monitoring runs included")
    listing.add_argument("--limit", type=int, default=50)
    _output_flags(listing, pictures=False)
    listing.set_defaults(handler=_not_found_to_exit(cmd_runs_list))
    compare = runs.add_parser("compare", help="parameters and metrics of runs side by side")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="two or more run ids")
    _output_flags(compare, pictures=False)
    compare.set_defaults(handler=_not_found_to_exit(cmd_runs_compare))

