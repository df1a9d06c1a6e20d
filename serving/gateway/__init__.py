"""The serving gateway: TF Serving's REST and gRPC predict API in front of a model server.

It routes each request by the model's policy (blue-green, canary, shadow), checks inputs before
forwarding, adds a per-instance `decision` from the model's degree of automation, logs every
served example to Parquet (`serving/prediction_log.py`), durably before it answers, exposes
Prometheus metrics, and has a token-protected admin API for rollouts (driven by
`serving/rollout.py`). It never imports TensorFlow or the model server (tests/serving/test_boundaries.py).

Run it: `python -m serving.gateway --config gateway.toml [--rest-port N ...]` (`__main__.py`), or
in-process: `serving.gateway.app.start_gateway(settings)` returns a handle with `.rest_port`,
`.grpc_port`, `.url` and `.stop()`.

A map, in the order a predict request meets the code:

| step | where |
|---|---|
| settings (TOML, `MLOPS_GATEWAY_*`, flags), validated at start | `config.py` (`GatewaySettings`) |
| start-up and wiring: core, aiohttp app, gRPC server, signals | `app.py` (`Gateway`, `start_gateway`, `run_gateway`, `main`) |
| a REST request enters (`POST /v1/models/...:predict`, GETs, feedback, `/metrics`, `/healthz`) | `rest.py` (`RestApi`) |
| a gRPC request enters (`PredictionService/Predict`, metadata and status passed through) | `grpc_service.py` (`GrpcApi`) |
| the body is parsed and checked against `transforms.features` (column fast path, single example, NaN tokens) | `inputs.py` (`check_predict_body`, `check_instances`, `check_inputs`) |
| routed: policy, explicit version or label, sticky canary keys, decisions | `core.py` (`GatewayCore.resolve`) with `routing.py` (`RoutingTable`, `choose_target`, `decide`) |
| forwarded to the model server, merged with concurrent calls under load | `core.py` (`GatewayCore.predict`), `upstream.py` (REST/gRPC clients, circuit breaker), `upstream_batching.py`, `http_pool.py` |
| logged (durably, before the answer), counted, shadowed (and canaried requests asked of stable too: `routing.shadow_target`) | `core.py` (`GatewayCore.serve`, `GatewayCore.log`, the shadow workers), `serving/log_writer.py`, `metrics.py` |
| feedback checked and logged | `core.py` (`GatewayCore.record_feedback`) |
| admin calls land (`/admin/...`: policy, canary, promote, rollback, shadow, automation, stats, flush) | `admin.py` (`AdminApi`), changing `routing.py`'s table |
| replicas agree: the shared state file, locked for each change, re-read every `policy_poll_seconds` | `routing.py` (`RoutingTable.change`, `refresh_from_state`), `core.py` (the polls) |
| why a request failed, and the status each failure is answered with | `errors.py` (`GatewayError` and its kinds, carrying a `serving.status.Code`) |

The core raises typed errors and knows no HTTP or gRPC; `rest.py`, `admin.py` and
`grpc_service.py` are the edges that turn them into answers.

REST (same paths as TF Serving):
- `POST /v1/models/{name}[/versions/N|/labels/L]:predict` with `instances` (rows: one object per
  example, every feature of `features.SERVING_COLUMNS`) or `inputs` (columns), optional
  `signature_name` (`serving_default` only). A value of `null` means missing (counted, then sent
  as the serving sentinel); NaN/-1/"" sentinels are accepted as missing too. Required features
  may not be missing. Answers `{"predictions": [{"probability", "class", "decision"}...],
  "automation": mode}` (columnar requests: `{"outputs": {"probability": [...], "class": [...],
  "decision": [...]}}`). Clients that ignore unknown fields see plain TF Serving answers. In
  `shadow` automation the model's output is withheld: each prediction is `{"decision": "none"}`.
  Headers: `X-Request-Key` (sticky canary assignment) and `X-Request-Id` (kept if given, else
  generated) in; `X-Request-Id`, `X-Model-Version`, `X-Model-Label` out.
  An explicit `/versions/N` or `/labels/L` bypasses the policy (logged with label `version:N` or `L`).
- `GET /v1/models/{name}[...]` and `.../metadata`: passed through to the model server.
- `POST /v1/feedback`: `{"request_id", "instance_index": 0, "ground_truth": 0|1}` and/or
  `"human_decision": "big_tipper"|"not_big_tipper"`, optional `"source"`; or a list of such
  objects. Feedback for a request id still in memory is checked (the instance must exist); older
  ids (ground truth often arrives days later, after restarts) are accepted and reported back as
  `unmatched`: the join with the request log happens in monitoring.
- `GET /metrics` (Prometheus), `GET /healthz`.
- `/admin/...` (needs `Authorization: Bearer <token>`): see `admin.py` and `serving/rollout.py`.

gRPC: `tensorflow.serving.PredictionService/Predict` (routing key in metadata `x-request-key`,
request id in `x-request-id`; the answer adds a `decision` string output and trailing metadata
`x-request-id`, `x-model-label`, `x-automation`; `output_filter` picks among `probability`, `class`
and `decision`), and `GetModelMetadata` / `ModelService.GetModelStatus` passed through to the
model server's gRPC port.

Under load, requests for the same model version that arrive while `upstream_max_in_flight` calls
to it are already out wait and then go to the model server merged into one call
(`upstream_batching.py`); a lone request never waits. Each is still routed, checked, logged and
answered on its own. Whatever format the client used, the gateway checks examples as columns (one
list per feature) and calls the model server's REST API in the columnar format (`inputs` ->
`outputs`): per example, that is the cheapest form for the check, the merge, both ends' JSON and
the log.

Every example served with status 200 is one row in the request log; a shadow copy that was sent
is one row with `is_shadow=true`. The answer leaves only once the rows are durable in the log's
write-ahead journal (`serving/log_writer.py`; one fdatasync per group of concurrent requests), so
a `kill -9` loses no answered request: the next start replays the journal into Parquet. A request
waits for room in a full log queue; if none comes in `log_backpressure_timeout_s` it fails with
503 (so it was neither served nor logged). When the journal cannot be written, `log_failure`
decides: "refuse" (default) answers 503 naming the log problem (`/healthz` says 503 too) until
the disk works again; "serve" answers with the rows in memory only.
"""
