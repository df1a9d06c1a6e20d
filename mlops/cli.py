"""`mlops`: the command line. Each pipeline step is a subcommand; heavy imports happen per command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# 3 hides TensorFlow's C++ start-up chatter (CUDA plugin registration on a CPU machine); real
# failures still surface as Python exceptions.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\..*")

from core.config import ConfigError, load_config  # noqa: E402
from core.errors import MlopsError, ModelNotBlessedError  # noqa: E402

EXIT_DATA_ERROR = 2
EXIT_NOT_BLESSED = 3

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Handler] = {}
# Further packages add their own subcommands (serving, monitoring, lineage): module, function.
EXTENSIONS = (
    ("serving.cli", "add_commands"),
    ("monitoring.cli", "add_commands"),
    ("mlops.automation", "add_commands"),
)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _context(args: argparse.Namespace):
    from metadata.recorder import Trigger
    from mlops import steps

    config = load_config(args.config)
    trigger = Trigger(args.trigger, json.loads(args.trigger_details) if args.trigger_details else {})
    return steps.open_run(config, args.run_id, trigger)


def _artifact(ctx, artifact_id: int):
    from metadata.recorder import ArtifactRef, properties_of

    found = ctx.run.store.get_artifacts_by_id([artifact_id])
    if not found:
        raise MlopsError(f"no artifact with id {artifact_id} in {ctx.run.store.description}")
    [artifact] = found
    [artifact_type] = ctx.run.store.get_artifact_types_by_id([artifact.type_id])
    return ArtifactRef(artifact.id, artifact_type.name, artifact.uri, properties_of(artifact))


def cmd_pipeline_run(args: argparse.Namespace) -> int:
    from metadata.recorder import Trigger
    from mlops.pipeline import run_pipeline

    config = load_config(args.config)
    trigger = Trigger(args.trigger, json.loads(args.trigger_details) if args.trigger_details else {})
    result = run_pipeline(
        config, start=args.start, end=args.end, csv_path=Path(args.csv) if args.csv else None,
        run_id=args.run_id, trigger=trigger,
        production_logs=Path(args.production_logs) if args.production_logs else None,
        production_data=not args.no_production_data,
    )
    if args.json:
        _print_json({"run_id": result.run_id, "seconds": result.seconds,
                     "steps": {k: v.to_json() for k, v in result.outcomes.items()}})
        return 0
    push = result.outcomes["push"]
    evaluation = result.outcomes["evaluate"]
    metrics = evaluation.results.get("metrics") or {}
    version = push.results["version"]
    print()
    print(f"Pipeline run {result.run_id} finished in {result.seconds:.0f}s.")
    print(f"Pushed model:   {config.serving.model_name}:{version} at {push.results['path']}")
    ingested = result.outcomes["ingest"].results
    production = ingested.get("production") or {}
    print(f"Trained on:     {ingested['rows_in_window']} CSV rows + {production.get('rows_labelled', 0)} labelled "
          f"production rows{' (policy ' + production['label_policy'] + ')' if production else ' (none read)'}")
    print("Metrics (eval):", ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    print(f"Report:         {evaluation.outputs['evaluation'].uri}/report.html")
    # The command to paste must read the same metadata store: the same config.
    config_flag = f"--config {args.config} " if args.config else ""
    print(f"Lineage:        mlops {config_flag}lineage model {config.serving.model_name}:{version}   (add --json or --html FILE)")
    return 0


def _step_runner(step_name: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        from mlops import steps

        ctx = _context(args)
        if step_name == "ingest":
            config = ctx.config
            outcome = steps.ingest(ctx, Path(args.csv or config.data.csv_path), args.start, args.end)
        elif step_name == "clean":
            outcome = steps.clean(ctx, _artifact(ctx, args.examples))
        elif step_name == "validate":
            outcome = steps.validate(ctx, _artifact(ctx, args.examples), _artifact(ctx, args.cleaned),
                                     _artifact(ctx, args.rejected), Path(args.schema) if args.schema else None)
        elif step_name == "transform":
            outcome = steps.transform(ctx, _artifact(ctx, args.cleaned), _artifact(ctx, args.anomalies))
        elif step_name == "train":
            outcome = steps.train(ctx, _artifact(ctx, args.transformed), _artifact(ctx, args.transform_graph))
        elif step_name == "evaluate":
            outcome = steps.evaluate(ctx, _artifact(ctx, args.model), _artifact(ctx, args.examples))
        else:
            outcome = steps.push(ctx, _artifact(ctx, args.model), _artifact(ctx, args.blessing))
        _print_json(outcome.to_json())
        return 0

    return run


def cmd_schema_infer(args: argparse.Namespace) -> int:
    import datetime as dt
    import tempfile

    from beam_jobs.ingest import ingest_csv
    from beam_jobs.statistics import generate_statistics
    from mlops.steps import _utc
    from validation.schema import infer_schema

    config = load_config(args.config)
    with tempfile.TemporaryDirectory() as temp:
        ingest_csv(Path(args.csv or config.data.csv_path), Path(temp) / "ingest", start=_utc(args.start), end=_utc(args.end),
                   hash_buckets=config.data.hash_buckets, eval_buckets=config.data.eval_buckets)
        stats = generate_statistics(Path(temp) / "ingest" / "examples", Path(temp) / "stats")
        output = infer_schema(stats["train"], Path(args.output))
    print(f"wrote {output} ({dt.datetime.now():%Y-%m-%d %H:%M}); review it, then point data.schema_path at it")
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from transforms.synth import write_synth_csv

    sample = Path(args.sample) if args.sample else load_config(args.config).data.csv_path
    result = write_synth_csv(sample, Path(args.out), args.rows, seed=args.seed, compress=True if args.gzip else None)
    print(f"wrote {result.rows} rows to {result.path} (resampled with jitter from {result.sample_rows} distinct rows of {sample}, seed {result.seed})")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from mlops import doctor

    setup = doctor.setup_from(load_config(args.config), Path(args.root).resolve() if args.root else doctor.REPO_ROOT,
                              args.gateway_config, args.min_free_mb)
    checks = doctor.run_checks(setup, skip=args.skip)
    failed = any(check.status == doctor.FAIL for check in checks)
    if args.json:
        _print_json({"ok": not failed, "checks": [check.to_json() for check in checks]})
    else:
        print(doctor.format_report(checks))
    return 1 if failed else 0


def cmd_review_cases(args: argparse.Namespace) -> int:
    from monitoring import review_queue as rq

    ledger = rq.CaseLedger(rq.ledger_dir(load_config(args.config).pipeline_root))
    cases = sorted((c for c in ledger.read().values() if not args.state or c.state == args.state), key=lambda c: (c.opened_at, c.key))
    if args.json:
        _print_json([case.to_json() for case in cases])
    else:
        print(rq.format_cases(cases, ledger.path))
    return 0


def _add_run_args(parser: argparse.ArgumentParser, run_id_required: bool) -> None:
    parser.add_argument("--run-id", required=run_id_required, help="pipeline run (MLMD context) this step belongs to")
    parser.add_argument("--trigger", default="manual", help="manual | schedule | drift_check | cli")
    parser.add_argument("--trigger-details", default="", help="JSON with what triggered the run (evidence)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlops", description=__doc__)
    parser.add_argument("--config", help="config file (default: $MLOPS_CONFIG, else ./mlops.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    pipeline = sub.add_parser("pipeline", help="the whole training pipeline").add_subparsers(dest="action", required=True)
    run = pipeline.add_parser("run", help="ingest -> clean -> validate -> transform -> train -> evaluate -> push")
    run.add_argument("--start", required=True, help="window start, YYYY-MM-DD (inclusive)")
    run.add_argument("--end", required=True, help="window end, YYYY-MM-DD (exclusive)")
    run.add_argument("--csv", help="a CSV with the taxi columns, plain or .gz/.bz2/.xz, or a folder of them (read in name order) "
                                   "(default: the config's data.csv_path)")
    run.add_argument("--json", action="store_true", help="print the outcome of every step as JSON")
    run.add_argument("--production-logs", metavar="DIR",
                     help="the gateway's log directory: its labelled requests train too (default: data.production_logs_dir)")
    run.add_argument("--no-production-data", action="store_true",
                     help="train on the CSV only, whatever the config says")
    _add_run_args(run, run_id_required=False)
    run.set_defaults(handler=cmd_pipeline_run, trigger="cli")

    step_inputs = {
        "ingest": [("--csv", str, False), ("--start", str, True), ("--end", str, True)],
        "clean": [("--examples", int, True)],
        "validate": [("--examples", int, True), ("--cleaned", int, True), ("--rejected", int, True), ("--schema", str, False)],
        "transform": [("--cleaned", int, True), ("--anomalies", int, True)],
        "train": [("--transformed", int, True), ("--transform-graph", int, True)],
        "evaluate": [("--model", int, True), ("--examples", int, True)],
        "push": [("--model", int, True), ("--blessing", int, True)],
    }
    for name, inputs in step_inputs.items():
        step = sub.add_parser(name, help=f"run the {name} step alone (inputs are MLMD artifact ids)")
        for flag, kind, required in inputs:
            step.add_argument(flag, type=kind, required=required)
        _add_run_args(step, run_id_required=True)
        step.set_defaults(handler=_step_runner(name))

    schema = sub.add_parser("schema", help="the data schema").add_subparsers(dest="action", required=True)
    infer = schema.add_parser("infer", help="bootstrap a schema from a window of data")
    infer.add_argument("--csv")
    infer.add_argument("--start", required=True)
    infer.add_argument("--end", required=True)
    infer.add_argument("--output", required=True)
    infer.set_defaults(handler=cmd_schema_infer)

    data = sub.add_parser("data", help="input data").add_subparsers(dest="action", required=True)
    synth = data.add_parser("synth", help="a larger CSV with the taxi columns and distributions (benchmark input)")
    synth.add_argument("--rows", type=int, required=True, help="how many rows to write")
    synth.add_argument("--out", required=True, help="the CSV to write (gzip-compressed when it ends in .gz)")
    synth.add_argument("--seed", type=int, default=0, help="the same seed and sample give the same bytes")
    synth.add_argument("--sample", help="the CSV to resample (default: the config's data.csv_path)")
    synth.add_argument("--gzip", action="store_true", help="gzip-compress whatever the file name")
    synth.set_defaults(handler=cmd_data_synth)

    doctor = sub.add_parser("doctor", help="check what a first run needs (environments, ML Metadata, Airflow, ports, models, disk)")
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON (exit code 1 when one failed)")
    doctor.add_argument("--root", help="the checkout holding .venvs/ and requirements/ (default: this one)")
    doctor.add_argument("--gateway-config", help="the gateway TOML file whose ports and log directory to check")
    doctor.add_argument("--min-free-mb", type=int, default=2048, help="free disk needed where the pipeline and the logs write")
    doctor.add_argument("--skip", action="append", default=[], metavar="GROUP",
                        choices=("environments", "metadata", "airflow", "ports", "models", "openlineage", "disk"),
                        help="leave a group of checks out (repeatable), e.g. airflow on a serving-only host")
    doctor.set_defaults(handler=cmd_doctor)

    review = sub.add_parser("review", help="the review queue (the taxi_review DAG)").add_subparsers(dest="action", required=True)
    cases = review.add_parser("cases", help="every review case and what became of it (ledger under the pipeline root)")
    cases.add_argument("--state", choices=("open", "answered", "cannot_tell", "unanswered"), help="only cases in this state")
    cases.add_argument("--json", action="store_true", help="print the cases as JSON")
    cases.set_defaults(handler=cmd_review_cases)

    for module_name, function_name in EXTENSIONS:
        try:
            module = __import__(module_name, fromlist=[function_name])
        except ModuleNotFoundError as err:
            if err.name != module_name:  # a real missing dependency inside it: surface it
                raise
            continue
        getattr(module, function_name)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except ModelNotBlessedError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_NOT_BLESSED
    except (MlopsError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_DATA_ERROR


if __name__ == "__main__":
    sys.exit(main())
