"""Serving: two programs and what they share (imports core and transforms; never mlops).

- `model_server/`: the embedded TF Serving stand-in (`python -m serving.model_server`), same REST and
  gRPC protocol as `tensorflow_model_server`.
- `gateway/`: what clients call (`python -m serving.gateway`): routing (blue-green, canary, shadow),
  input checks, decisions, the prediction log, the admin API. Its `__init__.py` is its map.
- Shared, small: `status.py` (TF Serving's codes and error), `protocol.py` (wire names),
  `tensor_protos.py` (TF Serving's protos without TensorFlow), `model_config.py` (`models.config`),
  `prediction_log.py` (the Parquet logs monitoring reads), `push.py` (a blessed model into the
  model base path), `rollout.py` (the admin client and the canary judgement), `client.py` (a
  REST/gRPC client for the taxi model), `cli.py` (`mlops predict|serve|gateway`).

The two programs never import each other, and the gateway never loads TensorFlow
(tests/serving/test_boundaries.py).
"""
