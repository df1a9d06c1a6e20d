"""`mlops predict`, `mlops serve` and `mlops gateway`; `mlops/cli.py` adds them via `add_commands`.

- `mlops predict --csv FILE [--url URL | --grpc HOST:PORT] [--limit N] [--request-key-column COL]`
  scores the rows of a taxi CSV through the gateway (or any TF Serving endpoint) and prints one
  JSON line per row. Extra columns (e.g. `tips`) are ignored; a bad row stops with its line number.
- `mlops serve` starts the embedded model server on the configured model base path and
  `models.config`, and the gateway in front of it, until Ctrl-C / SIGTERM.
- `mlops gateway` starts the gateway alone (in front of TF Serving or a model server elsewhere).

Nothing here imports TensorFlow until `mlops serve` starts the model server.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from serving.rollout import DEFAULT_GATEWAY_URL
from transforms.features import DECISION_REFER_TO_HUMAN


def add_commands(subparsers: Any) -> None:
    """Registers `predict`, `serve` and `gateway` on the `mlops` sub-command parser."""
    from serving.gateway.config import add_settings_arguments

    predict = subparsers.add_parser("predict", help="score the rows of a CSV through the gateway (REST or gRPC)")
    predict.add_argument("--csv", required=True, help="CSV with the serving columns of transforms/features.py (extra columns are ignored)")
    target = predict.add_mutually_exclusive_group()
    target.add_argument("--url", default=None, help=f"REST base URL (default {DEFAULT_GATEWAY_URL}, the gateway)")
    target.add_argument("--grpc", metavar="HOST:PORT", help="use gRPC PredictionService at this target instead of REST")
    predict.add_argument("--model", default=None, help="model name (default: serving.model_name from the config)")
    pin = predict.add_mutually_exclusive_group()
    pin.add_argument("--version", type=int, help="ask this version explicitly (bypasses the routing policy)")
    pin.add_argument("--label", help="ask this label explicitly (bypasses the routing policy)")
    predict.add_argument("--limit", type=int, default=None, help="score at most N rows")
    predict.add_argument("--batch-size", type=int, default=1, help="rows per request (1 when --request-key-column is given)")
    predict.add_argument("--request-key-column", default=None,
                         help="CSV column whose value is each row's routing key (sticky canary assignment)")
    predict.add_argument("--timeout", type=float, default=5.0, help="seconds per attempt")
    predict.add_argument("--attempts", type=int, default=3, help="attempts per request (retries on 429/502/503/504, timeouts, refused connections)")
    predict.set_defaults(handler=cmd_predict)

    serve = subparsers.add_parser("serve", help="run the embedded model server and the gateway in front of it")
    serve.add_argument("--gateway-config", help="gateway TOML file ([gateway], [models.<name>])")
    serve.add_argument("--model-rest-port", type=int, default=None, help="model server REST port (default: serving.rest_port)")
    serve.add_argument("--model-grpc-port", type=int, default=None, help="model server gRPC port (default: serving.grpc_port)")
    serve.add_argument("--poll-seconds", type=float, default=1.0, help="how often the model server re-reads models.config")
    add_settings_arguments(serve)
    serve.set_defaults(handler=cmd_serve)

    gateway = subparsers.add_parser("gateway", help="run the gateway alone")
    gateway.add_argument("--gateway-config", help="gateway TOML file ([gateway], [models.<name>])")
    add_settings_arguments(gateway)
    gateway.set_defaults(handler=cmd_gateway)


def _model_name(args: argparse.Namespace) -> str:
    if args.model:
        return args.model
    from core.config import load_config

    return load_config(args.config).serving.model_name


def cmd_predict(args: argparse.Namespace) -> int:
    from core.errors import DataError
    from serving.client import GrpcPredictionClient, RestPredictionClient, read_trips_csv

    if args.batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise DataError(f"--limit must be >= 1, got {args.limit}")
    model = _model_name(args)
    if args.grpc:
        client: Any = GrpcPredictionClient(args.grpc, model, timeout=args.timeout, attempts=args.attempts)
    else:
        client = RestPredictionClient(args.url or DEFAULT_GATEWAY_URL, model, timeout=args.timeout, attempts=args.attempts)
    batch_size = 1 if args.request_key_column else args.batch_size
    rows = read_trips_csv(Path(args.csv), limit=args.limit, key_column=args.request_key_column)
    scored = positives = referrals = 0
    started = time.perf_counter()
    with client:
        batch: list[tuple[int, Any, str | None]] = []
        for index, (trip, key) in enumerate(rows):
            batch.append((index, trip, key))
            if len(batch) == batch_size:
                counts = _score_batch(client, batch, args)
                scored, positives, referrals = scored + counts[0], positives + counts[1], referrals + counts[2]
                batch = []
        if batch:
            counts = _score_batch(client, batch, args)
            scored, positives, referrals = scored + counts[0], positives + counts[1], referrals + counts[2]
    seconds = time.perf_counter() - started
    print(f"scored {scored} rows in {seconds:.1f}s: {positives} predicted big tippers, {referrals} referred to a human",
          file=sys.stderr)
    return 0


def _score_batch(client: Any, batch: list[tuple[int, Any, str | None]], args: argparse.Namespace) -> tuple[int, int, int]:
    result = client.predict([trip for _, trip, _ in batch], request_key=batch[0][2], version=args.version, label=args.label)
    positives = referrals = 0
    for instance_index, ((row, _, _), prediction) in enumerate(zip(batch, result.predictions)):
        positives += prediction.predicted_class == 1
        referrals += prediction.decision == DECISION_REFER_TO_HUMAN
        print(json.dumps({
            "row": row, "request_id": result.request_id, "instance_index": instance_index,
            "model_version": result.model_version, "label": result.label, "probability": prediction.probability,
            "class": prediction.predicted_class, "decision": prediction.decision,
        }), flush=False)
    sys.stdout.flush()
    return len(batch), positives, referrals


def _gateway_settings(args: argparse.Namespace, **extra: Any) -> Any:
    from serving.gateway.config import load_gateway_settings, settings_overrides

    return load_gateway_settings(args.gateway_config, overrides={**settings_overrides(args), **extra})


def cmd_gateway(args: argparse.Namespace) -> int:
    from serving.gateway.app import run_gateway

    run_gateway(_gateway_settings(args))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from core.config import load_config
    from serving.gateway.app import start_gateway
    from serving.model_server import start_model_server

    config = load_config(args.config)
    serving = config.serving
    if not serving.model_config_file.is_file():
        from core.errors import DataError

        raise DataError(f"{serving.model_config_file}: no models.config yet; push a model first (`mlops pipeline run`)")
    # The model server first: it imports TensorFlow, which the gateway then shares.
    model_server = start_model_server(
        port=serving.grpc_port if args.model_grpc_port is None else args.model_grpc_port,
        rest_api_port=serving.rest_port if args.model_rest_port is None else args.model_rest_port,
        model_config_file=serving.model_config_file,
        model_config_file_poll_wait_seconds=args.poll_seconds,
        # As in docker-compose.yaml: push writes a new version and, on the first push, the
        # `stable` label in one config change; TF Serving would refuse that label until the
        # version has loaded (tensorflow/serving#1230) without this flag.
        allow_version_labels_for_unavailable_models=True,
    )
    try:
        settings = _gateway_settings(
            args, model_server_rest=model_server.rest_url, model_server_grpc=model_server.grpc_target,
            model_config_file=str(serving.model_config_file) if args.model_config_file is None else args.model_config_file,
        )
        gateway = start_gateway(settings)
    except BaseException:
        model_server.stop()
        raise
    print(f"model server: REST {model_server.rest_url}  gRPC {model_server.grpc_target}")
    print(f"gateway:      REST {gateway.url}  gRPC {gateway.grpc_target}  (logs: {settings.log_dir})", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    finally:
        print("stopping: draining requests and writing the prediction log", file=sys.stderr)
        try:
            gateway.stop()
        finally:
            model_server.stop()
    return 0
