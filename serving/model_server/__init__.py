"""The embedded model server: a stand-in for `tensorflow_model_server` that serves TF Serving's REST
and gRPC APIs over the same model base path and `models.config`, where the real binary cannot run.

    python -m serving.model_server --port=8500 --rest_api_port=8501 --model_config_file=...
    handle = start_model_server(...)   # in-process (tests, benchmarks); handle.stop()

`server.py` starts it (flags, `models.config` polling, wiring) and lists where it deliberately
differs from TF Serving. A REST request enters at `rest_api.RestServer` (aiohttp) and is answered
by `rest_api.RestApiHandler` (JSON through `json_requests.py` / `json_responses.py`); a gRPC call
enters at `grpc_api.PredictionServicer` or `grpc_api.ModelServicer` (TensorProtos through
`tensors.py`). Both ask `manager.ModelManager` for a `servable.Servable` (one loaded version),
which runs the model, through `batching.py` with `--enable_batching`. Only the two edges turn a
`serving.status.ServingError` into an HTTP status or a gRPC code; both record into
`metrics.ServingMetrics`.

Importing this package does not import TensorFlow: that waits until a server starts.
"""

from serving.model_server.server import start_model_server

__all__ = ["start_model_server"]
