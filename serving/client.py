"""A client of the TF Serving protocol (REST and gRPC) for the taxi model, with timeouts and retries.

Requests are built from `transforms.features` (the only definition of the feature names and
kinds) through the typed `TaxiTrip` row: no JSON is assembled by hand, no feature name is
retyped here. The same client talks to the gateway or straight to a model server (embedded or
TF Serving): missing values travel as the serving sentinels (`features.missing_value`), which
both accept.

The wire names live in `serving/protocol.py`, the protos and tensor conversions in
`serving/tensor_protos.py` (the gateway uses both too).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from core.errors import DataError, MlopsError
from serving.protocol import (
    CLASS_OUTPUT,
    DECISION_OUTPUT,
    DEFAULT_SIGNATURE,
    MODEL_LABEL_HEADER,
    MODEL_VERSION_HEADER,
    PROBABILITY_OUTPUT,
    REQUEST_ID_HEADER,
    REQUEST_ID_METADATA,
    REQUEST_KEY_HEADER,
    REQUEST_KEY_METADATA,
)
from serving.tensor_protos import serving_apis, tensor_from_values, values_from_tensor
from transforms import features
from transforms.features import SERVING_FEATURES, Kind

# Worth another attempt: the server is restarting, overloaded or slow, not refusing the request.
RETRYABLE_HTTP_STATUS = frozenset({429, 502, 503, 504})

_PYTHON_TYPES: dict[Kind, type] = {Kind.FLOAT: float, Kind.INT: int, Kind.STRING: str}


class PredictionError(MlopsError):
    """The server answered with an error; `status` is the HTTP status (or the gRPC code's name)."""

    def __init__(self, message: str, status: int | str | None = None) -> None:
        super().__init__(message)
        self.status = status


class BadPredictionRequest(PredictionError, DataError):
    """The server rejected the request itself (4xx / INVALID_ARGUMENT / NOT_FOUND): retrying cannot help."""


class ServerUnavailable(PredictionError):
    """Every attempt failed with a connection error, a timeout or a retryable status."""


# --- the typed row -------------------------------------------------------------------------------


def _trip_post_init(self: Any) -> None:
    for feature in SERVING_FEATURES:
        value = getattr(self, feature.name)
        if value is None:
            continue
        if feature.kind is Kind.FLOAT and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(self, feature.name, float(value))
            continue
        expected = _PYTHON_TYPES[feature.kind]
        if isinstance(value, bool) or not isinstance(value, expected):
            raise DataError(f"TaxiTrip.{feature.name} must be {expected.__name__} or None, got {value!r}")
        if feature.kind is Kind.FLOAT and math.isnan(value):
            object.__setattr__(self, feature.name, None)  # NaN is the float sentinel for missing
        elif feature.kind is Kind.FLOAT and not math.isfinite(value):
            raise DataError(f"TaxiTrip.{feature.name} must be a finite number, got {value!r}")


def _trip_to_instance(self: Any, *, missing: str = "sentinel") -> dict[str, Any]:
    """The request instance: missing values as serving sentinels (default) or as null."""
    if missing not in ("sentinel", "null"):
        raise ValueError(f"missing must be 'sentinel' or 'null', got {missing!r}")
    instance = {}
    for feature in SERVING_FEATURES:
        value = getattr(self, feature.name)
        if value is None and missing == "sentinel":
            value = features.missing_value(feature.kind)
        instance[feature.name] = value
    return instance


def _trip_missing_required(self: Any) -> list[str]:
    return [f.name for f in SERVING_FEATURES if f.required and getattr(self, f.name) is None]


@classmethod  # type: ignore[misc]
def _trip_from_csv_row(cls: Any, row: Mapping[str, str], *, source: str = "<row>", line: int | None = None) -> Any:
    """Parses the serving columns of one CSV row (extra columns such as `tips` are ignored)."""
    where = f"{source}:{line}" if line is not None else source
    values: dict[str, Any] = {}
    for feature in SERVING_FEATURES:
        if feature.name not in row:
            raise DataError(f"{where}: column {feature.name!r} is missing")
        text = row[feature.name]
        try:
            values[feature.name] = features.parse_value(feature, text if text is not None else "")
        except ValueError as err:
            raise DataError(f"{where}: column {feature.name!r}: {err}, got {text!r:.80}") from None
    trip = cls(**values)
    missing = trip.missing_required()
    if missing:
        raise DataError(f"{where}: required columns {missing} are empty")
    return trip


@classmethod  # type: ignore[misc]
def _trip_from_mapping(cls: Any, values: Mapping[str, Any]) -> Any:
    """A TaxiTrip from a dict of feature values; unknown keys are an error (they would be dropped)."""
    unknown = sorted(set(values) - set(features.SERVING_COLUMNS))
    if unknown:
        raise DataError(f"unknown features {unknown}; the model takes {list(features.SERVING_COLUMNS)}")
    return cls(**values)


# One field per serving feature, typed from its kind: the dataclass follows features.py by construction.
TaxiTrip = dataclasses.make_dataclass(
    "TaxiTrip",
    [(f.name, _PYTHON_TYPES[f.kind] | None, dataclasses.field(default=None)) for f in SERVING_FEATURES],
    frozen=True,
    namespace={
        "__doc__": "One taxi trip as the model sees it at serving time; None marks a missing value.",
        "__post_init__": _trip_post_init,
        "to_instance": _trip_to_instance,
        "missing_required": _trip_missing_required,
        "from_csv_row": _trip_from_csv_row,
        "from_mapping": _trip_from_mapping,
    },
)
TaxiTrip.__module__ = __name__


def read_trips_csv(path: Path, *, limit: int | None = None, key_column: str | None = None) -> Iterator[tuple[Any, str | None]]:
    """Yields (TaxiTrip, request key) per CSV row; bad rows raise DataError with file, line and column.
    A file named .gz, .bz2 or .xz is decompressed as it is read."""
    import io

    from core.compressed import decompressing, refusing_damage

    path = Path(path)
    try:
        raw = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    with raw, refusing_damage(str(path)), io.TextIOWrapper(decompressing(raw, str(path)), encoding="utf-8",
                                                           newline="") as handle:
        yield from _trips_from(path, handle, limit, key_column)


def _trips_from(path: Path, handle: Any, limit: int | None, key_column: str | None) -> Iterator[tuple[Any, str | None]]:
    import csv

    reader = csv.DictReader(handle)
    header = reader.fieldnames or []
    missing = [name for name in features.SERVING_COLUMNS if name not in header]
    if missing:
        raise DataError(f"{path}: missing columns {missing} (the model needs {list(features.SERVING_COLUMNS)})")
    if key_column is not None and key_column not in header:
        raise DataError(f"{path}: request key column {key_column!r} is not in the header {header}")
    for count, row in enumerate(reader):
        if limit is not None and count >= limit:
            return
        line = reader.line_num
        if None in row:
            raise DataError(f"{path}:{line}: more fields than the header has")
        trip = TaxiTrip.from_csv_row(row, source=str(path), line=line)
        yield trip, (row[key_column] if key_column else None)


# --- results ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prediction:
    probability: float | None  # None when the model gave no (or a NaN) probability
    predicted_class: int | None
    # From the gateway: big_tipper | not_big_tipper | refer_to_human | none; None from a bare model server.
    decision: str | None = None


@dataclasses.dataclass(frozen=True)
class PredictResult:
    predictions: list[Prediction]
    request_id: str | None
    model_version: int | None
    label: str | None
    automation: str | None
    attempts: int


def _backoff_sleep(attempt: int, base: float) -> None:
    # Full jitter: clients retrying together do not hit a recovering server in lockstep.
    time.sleep(random.uniform(0, base * (2 ** (attempt - 1))))


def _prediction_from_json(item: Any) -> Prediction:
    if not isinstance(item, Mapping):
        raise PredictionError(f"unexpected prediction {item!r}: expected an object with 'probability' and 'class'")
    probability = item.get(PROBABILITY_OUTPUT)
    probability = float(probability) if isinstance(probability, (int, float)) and math.isfinite(probability) else None
    predicted_class = item.get(CLASS_OUTPUT)
    return Prediction(probability, int(predicted_class) if isinstance(predicted_class, (int, float)) else None, item.get(DECISION_OUTPUT))


# --- REST ----------------------------------------------------------------------------------------


class RestPredictionClient:
    """TF Serving REST predict calls with a keep-alive session, per-attempt timeouts and retries.

    Retries happen on connection errors, timeouts and 429/502/503/504 with jittered exponential
    backoff; the same request id is sent on every attempt so the logs show it was one request.
    """

    def __init__(
        self,
        base_url: str,
        model_name: str = "taxi",
        *,
        timeout: float = 5.0,
        connect_timeout: float = 1.0,
        attempts: int = 3,
        backoff_seconds: float = 0.1,
        signature_name: str = DEFAULT_SIGNATURE,
    ) -> None:
        import requests

        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.signature_name = signature_name
        self._requests = requests
        self._session = requests.Session()

    def __enter__(self) -> "RestPredictionClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def model_url(self, *, version: int | None = None, label: str | None = None) -> str:
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        url = f"{self.base_url}/v1/models/{self.model_name}"
        if version is not None:
            url += f"/versions/{int(version)}"
        elif label is not None:
            url += f"/labels/{label}"
        return url

    def predict(
        self,
        trips: Sequence[Any],
        *,
        request_key: str | None = None,
        request_id: str | None = None,
        version: int | None = None,
        label: str | None = None,
    ) -> PredictResult:
        """Scores `trips` (TaxiTrip rows) in one request; raises BadPredictionRequest or ServerUnavailable."""
        if not trips:
            raise ValueError("predict() needs at least one trip")
        body = {"signature_name": self.signature_name, "instances": [trip.to_instance() for trip in trips]}
        # allow_nan: TF Serving's JSON accepts NaN, the float sentinel for a missing value.
        payload = json.dumps(body, allow_nan=True).encode("utf-8")
        headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: request_id or uuid.uuid4().hex}
        if request_key is not None:
            headers[REQUEST_KEY_HEADER] = request_key
        url = self.model_url(version=version, label=label) + ":predict"
        response, attempts = self._post_with_retries(url, payload, headers)
        document = self._decode(response, url)
        predictions = document.get("predictions")
        if not isinstance(predictions, list) or len(predictions) != len(trips):
            raise PredictionError(f"{url}: expected {len(trips)} predictions, got {str(predictions)[:200]}")
        version_header = response.headers.get(MODEL_VERSION_HEADER)
        return PredictResult(
            predictions=[_prediction_from_json(item) for item in predictions],
            request_id=response.headers.get(REQUEST_ID_HEADER, headers[REQUEST_ID_HEADER]),
            model_version=int(version_header) if version_header and version_header.isdigit() else version,
            label=response.headers.get(MODEL_LABEL_HEADER, label),
            automation=document.get("automation"),
            attempts=attempts,
        )

    def model_status(self) -> dict[str, Any]:
        """`GET /v1/models/{name}` (no retries: it is a health probe)."""
        response = self._session.get(self.model_url(), timeout=(self.connect_timeout, self.timeout))
        return self._decode(response, self.model_url())

    def _post_with_retries(self, url: str, payload: bytes, headers: dict[str, str]) -> tuple[Any, int]:
        """The first non-retryable response and the attempt it came on."""
        last_problem = ""
        for attempt in range(1, self.attempts + 1):
            try:
                response = self._session.post(url, data=payload, headers=headers, timeout=(self.connect_timeout, self.timeout))
            except self._requests.Timeout as err:
                last_problem = f"no answer within {self.timeout}s ({type(err).__name__})"
            except self._requests.ConnectionError as err:
                last_problem = f"connection failed ({err.__class__.__name__}: {str(err)[:200]})"
            else:
                if response.status_code in RETRYABLE_HTTP_STATUS:
                    last_problem = f"HTTP {response.status_code}: {_error_text(response)}"
                else:
                    return response, attempt
            if attempt < self.attempts:
                _backoff_sleep(attempt, self.backoff_seconds)
        raise ServerUnavailable(f"{url}: {self.attempts} attempts failed; last: {last_problem}", status=None)

    def _decode(self, response: Any, url: str) -> dict[str, Any]:
        if response.status_code >= 400:
            message = f"{url}: HTTP {response.status_code}: {_error_text(response)}"
            if 400 <= response.status_code < 500:
                raise BadPredictionRequest(message, status=response.status_code)
            raise PredictionError(message, status=response.status_code)
        try:
            return json.loads(response.content)  # stdlib json: TF Serving may answer NaN
        except ValueError as err:
            raise PredictionError(f"{url}: answer is not JSON ({err}): {response.content[:200]!r}") from None


def _error_text(response: Any) -> str:
    try:
        return str(json.loads(response.content).get("error", response.text[:300]))
    except (ValueError, AttributeError):
        return response.text[:300]


# --- gRPC ----------------------------------------------------------------------------------------


def build_predict_request(
    trips: Sequence[Any], model_name: str, *, signature_name: str = DEFAULT_SIGNATURE,
    version: int | None = None, label: str | None = None,
) -> Any:
    """The PredictRequest for `trips`: one 1-D tensor per serving feature, sentinels for missing values."""
    if version is not None and label is not None:
        raise ValueError("give a version or a label, not both")
    request = serving_apis().predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    elif label is not None:
        request.model_spec.version_label = label
    instances = [trip.to_instance() for trip in trips]
    for feature in SERVING_FEATURES:
        request.inputs[feature.name].CopyFrom(tensor_from_values(feature.kind, [row[feature.name] for row in instances]))
    return request


class GrpcPredictionClient:
    """TF Serving gRPC `PredictionService.Predict` with deadlines and retries.

    Retries on UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED, with the same request id.
    """

    RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")

    def __init__(
        self,
        target: str,
        model_name: str = "taxi",
        *,
        timeout: float = 5.0,
        attempts: int = 3,
        backoff_seconds: float = 0.1,
        signature_name: str = DEFAULT_SIGNATURE,
    ) -> None:
        import grpc

        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.target = target
        self.model_name = model_name
        self.timeout = timeout
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.signature_name = signature_name
        self._grpc = grpc
        self._channel = grpc.insecure_channel(target)
        self._stub = serving_apis().prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def __enter__(self) -> "GrpcPredictionClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def build_request(self, trips: Sequence[Any], *, version: int | None = None, label: str | None = None) -> Any:
        return build_predict_request(trips, self.model_name, signature_name=self.signature_name, version=version, label=label)

    def predict(
        self,
        trips: Sequence[Any],
        *,
        request_key: str | None = None,
        request_id: str | None = None,
        version: int | None = None,
        label: str | None = None,
    ) -> PredictResult:
        """Scores `trips` in one call; raises BadPredictionRequest or ServerUnavailable."""
        if not trips:
            raise ValueError("predict() needs at least one trip")
        request = self.build_request(trips, version=version, label=label)
        request_id = request_id or uuid.uuid4().hex
        metadata = [(REQUEST_ID_METADATA, request_id)]
        if request_key is not None:
            metadata.append((REQUEST_KEY_METADATA, request_key))
        last_problem = ""
        for attempt in range(1, self.attempts + 1):
            try:
                response, call = self._stub.Predict.with_call(request, timeout=self.timeout, metadata=metadata)
            except self._grpc.RpcError as err:
                code = err.code()
                if code.name not in self.RETRYABLE:
                    cls = BadPredictionRequest if code.name in ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION") else PredictionError
                    raise cls(f"{self.target}: {code.name}: {err.details()}", status=code.name) from None
                last_problem = f"{code.name}: {err.details()}"
                if attempt < self.attempts:
                    _backoff_sleep(attempt, self.backoff_seconds)
                continue
            trailing = dict(call.trailing_metadata() or ())
            return PredictResult(
                predictions=self._predictions(response, len(trips)),
                request_id=trailing.get(REQUEST_ID_METADATA, request_id),
                model_version=response.model_spec.version.value if response.model_spec.HasField("version") else None,
                label=trailing.get("x-model-label", label),
                automation=trailing.get("x-automation"),
                attempts=attempt,
            )
        raise ServerUnavailable(f"{self.target}: {self.attempts} attempts failed; last: {last_problem}")

    def _predictions(self, response: Any, count: int) -> list[Prediction]:
        outputs = response.outputs
        if PROBABILITY_OUTPUT not in outputs:
            raise PredictionError(f"{self.target}: the response has no {PROBABILITY_OUTPUT!r} output (outputs: {sorted(outputs)})")
        probabilities = values_from_tensor(outputs[PROBABILITY_OUTPUT], PROBABILITY_OUTPUT)
        classes = values_from_tensor(outputs[CLASS_OUTPUT], CLASS_OUTPUT) if CLASS_OUTPUT in outputs else [None] * count
        decisions = (
            [d.decode("utf-8") for d in values_from_tensor(outputs[DECISION_OUTPUT], DECISION_OUTPUT)]
            if DECISION_OUTPUT in outputs else [None] * count
        )
        if len(probabilities) != count:
            raise PredictionError(f"{self.target}: expected {count} predictions, got {len(probabilities)}")
        return [
            Prediction(float(p) if math.isfinite(p) else None, int(c) if c is not None else None, d)
            for p, c, d in zip(probabilities, classes, decisions)
        ]
