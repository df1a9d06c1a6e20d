"""TF Serving's wire names as this project uses them, shared by the model server, the gateway and
the clients: the HTTP headers and gRPC metadata keys the gateway adds, the default signature, and
the names of the model's outputs.
"""

REQUEST_KEY_HEADER = "X-Request-Key"
REQUEST_ID_HEADER = "X-Request-Id"
MODEL_VERSION_HEADER = "X-Model-Version"
MODEL_LABEL_HEADER = "X-Model-Label"
REQUEST_KEY_METADATA = "x-request-key"
REQUEST_ID_METADATA = "x-request-id"
DEFAULT_SIGNATURE = "serving_default"
PROBABILITY_OUTPUT = "probability"
CLASS_OUTPUT = "class"
DECISION_OUTPUT = "decision"
