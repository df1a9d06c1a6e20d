"""The gateway's input checks: a predict body (REST rows or columns, gRPC tensors as columns)
against `transforms.features.SERVING_FEATURES`, before anything is forwarded.

Hot path, tuned; change it only with `benchmarks/gateway_benchmark.py` at hand:
- a single example (most serving requests) is checked feature by feature (`_check_one`);
- columns of the usual shape are checked with C-level calls and list comprehensions
  (`_check_common_column`); anything else is checked value by value (`_check_values`), which also
  writes the error messages;
- a body with NaN tokens is still parsed by orjson (`check_predict_body`: the NaN mark).

Refusals are `InvalidRequest` (or `RequestTooLarge` for too many examples), naming the example and the feature.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import orjson

from serving.gateway.errors import GatewayError, InvalidRequest, RequestTooLarge
from serving.protocol import DEFAULT_SIGNATURE
# What a tensor holds (float32, int64): one definition, shared with the CSV parsers.
from transforms.features import FLOAT32_MAX, INT64_MAX, INT64_MIN, SERVING_FEATURES, Kind, fit_problem

_FEATURE_NAMES = frozenset(feature.name for feature in SERVING_FEATURES)
_BODY_KEYS = frozenset({"signature_name", "instances", "inputs"})
_SENTINELS = {Kind.FLOAT: float("nan"), Kind.INT: -1, Kind.STRING: ""}




@dataclass(slots=True)
class CheckedInstances:
    """Validated examples as columns (feature name -> one value per example).

    `forward` carries the serving sentinels for the model (a missing float is `JSON_NAN`, which
    orjson writes as the NaN token TF Serving expects); `logged` carries None for a missing value.
    A column with nothing to change is the same list in both, and the caller's own list.
    """

    forward: dict[str, list[Any]]
    logged: dict[str, list[Any]]
    count: int
    missing: dict[str, int]


# orjson writes a float NaN as null, which TF Serving rejects; a Fragment is written verbatim.
JSON_NAN = orjson.Fragment(b"NaN")
_FLOAT, _INT, _STRING = 0, 1, 2
# Plain ints for kinds on the hot path: hashing an Enum member runs Python code.
_CHECKS = tuple(
    (f.name, {Kind.FLOAT: _FLOAT, Kind.INT: _INT, Kind.STRING: _STRING}[f.kind], f.required,
     JSON_NAN if f.kind is Kind.FLOAT else _SENTINELS[f.kind])
    for f in SERVING_FEATURES
)
_INFINITIES = (math.inf, -math.inf)


def check_instances(instances: Any, max_instances: int, *, marked_nan: bool = False) -> CheckedInstances:
    """Checks row-format instances against `features.SERVING_FEATURES`; InvalidRequest or RequestTooLarge names the problem.

    `marked_nan`: the body was parsed with NaN tokens as `_NAN_MARK` strings (`check_predict_body`).
    """
    if not isinstance(instances, list):
        raise InvalidRequest(f"'instances' must be a list of objects (one per example), got {type(instances).__name__}")
    if not instances:
        raise InvalidRequest("'instances' is empty: send at least one example")
    if len(instances) > max_instances:
        raise RequestTooLarge(f"too many instances: {len(instances)} in one request, the limit is {max_instances}")
    feature_count = len(_FEATURE_NAMES)
    for index, instance in enumerate(instances):
        if type(instance) is not dict:
            raise InvalidRequest(f"instance {index}: expected an object of feature values, got {type(instance).__name__}")
        if len(instance) != feature_count or not _FEATURE_NAMES.issuperset(instance):
            raise InvalidRequest(f"instance {index}: {_feature_name_problems(instance)}")
    if len(instances) == 1:
        return _check_one(_unmarked_row(instances[0]) if marked_nan else instances[0])
    columns = {name: [instance[name] for instance in instances] for name, *_ in _CHECKS}
    return _check_columns(_unmarked_columns(columns) if marked_nan else columns, len(instances))


def check_inputs(inputs: Any, max_instances: int, *, marked_nan: bool = False) -> CheckedInstances:
    """Checks columnar `inputs` ({feature: [values...]}, REST `inputs` or gRPC tensors) like `check_instances`."""
    if not isinstance(inputs, dict):
        raise InvalidRequest(f"'inputs' must be an object mapping each feature to a list of values, got {type(inputs).__name__}")
    lengths = {}
    for name, values in inputs.items():
        if type(values) is not list:
            raise InvalidRequest(f"inputs[{name!r}] must be a list (one value per example), got {type(values).__name__}")
        lengths[name] = len(values)
    if len(set(lengths.values())) > 1:
        raise InvalidRequest(f"all inputs must have the same number of values, got {lengths}")
    if len(inputs) != len(_FEATURE_NAMES) or not _FEATURE_NAMES.issuperset(inputs):
        raise InvalidRequest(f"inputs: {_feature_name_problems(inputs)}")
    count = next(iter(lengths.values()))
    if not count:
        raise InvalidRequest("'inputs' holds no examples: send at least one value per feature")
    if count > max_instances:
        raise RequestTooLarge(f"too many instances: {count} in one request, the limit is {max_instances}")
    if marked_nan:
        inputs = _unmarked_columns(inputs)
    if count == 1:
        return _check_one({name: values[0] for name, values in inputs.items()})
    return _check_columns(inputs, count)


# A NaN token of a predict body, as `check_predict_body` hands it to orjson, and as it comes back.
_NAN_MARK_JSON = b'"\\u0000NaN"'
_NAN_MARK = "\x00NaN"


def _unmarked_row(instance: dict[str, Any]) -> dict[str, Any]:
    return {name: math.nan if value == _NAN_MARK else value for name, value in instance.items()}


def _unmarked_columns(columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {name: [math.nan if value == _NAN_MARK else value for value in values] if _NAN_MARK in values else values
            for name, values in columns.items()}


def _feature_name_problems(given: dict[str, Any]) -> str:
    parts = []
    absent = sorted(_FEATURE_NAMES.difference(given))
    extra = sorted(set(given).difference(_FEATURE_NAMES))
    if absent:
        parts.append(f"missing features {absent} (send null for a missing value)")
    if extra:
        parts.append(f"unknown features {extra}")
    return "; ".join(parts)


def _check_columns(columns: dict[str, list[Any]], count: int) -> CheckedInstances:
    forward: dict[str, list[Any]] = {}
    logged: dict[str, list[Any]] = {}
    missing: dict[str, int] = {}
    for name, kind, required, sentinel in _CHECKS:
        checked = _check_common_column(kind, required, columns[name])
        if checked is None:
            checked = _check_values(name, kind, required, sentinel, columns[name])
        forward[name], logged[name], absent = checked
        if absent:
            missing[name] = absent
    return CheckedInstances(forward, logged, count, missing)


_NONE = type(None)
_FLOAT_KINDS, _INT_KINDS, _STRING_KINDS = frozenset({float, _NONE}), frozenset({int, _NONE}), frozenset({str, _NONE})


def _check_common_column(kind: int, required: bool, values: list[Any]) -> tuple[list[Any], list[Any], int] | None:
    """(forwarded, logged, missing) for a column of the usual shape, with C-level calls and list
    comprehensions; None for anything else (an int for a float, a wrong type, a bad value, a
    required feature missing), which `_check_values` then takes value by value and names.
    """
    kinds = set(map(type, values))
    if kind == _FLOAT:
        if not kinds <= _FLOAT_KINDS:
            return None
        if _NONE not in kinds and math.isfinite(sum(values)):  # NaN or an infinity makes the sum NaN or infinite
            if values and not -FLOAT32_MAX <= min(values) <= max(values) <= FLOAT32_MAX:
                return None
            return values, values, 0
        if math.inf in values or -math.inf in values:
            return None
        logged = [None if value is None or value != value else value for value in values]  # NaN is missing
        present = [value for value in logged if value is not None]
        if present and not -FLOAT32_MAX <= min(present) <= max(present) <= FLOAT32_MAX:
            return None
        forward = [JSON_NAN if value is None else value for value in logged]
    elif kind == _INT:
        if not kinds <= _INT_KINDS:
            return None
        present = values if _NONE not in kinds else [value for value in values if value is not None]
        if present and not (INT64_MIN <= min(present) and max(present) <= INT64_MAX):
            return None
        if _NONE not in kinds and -1 not in values:
            return values, values, 0
        logged = [None if value is None or value == -1 else value for value in values]
        forward = values if _NONE not in kinds else [-1 if value is None else value for value in values]
    else:
        if not kinds <= _STRING_KINDS:
            return None
        forward = values if _NONE not in kinds else [value or "" for value in values]
        if not all(map(str.isascii, forward)):  # non-ASCII text is checked for lone surrogates one by one
            return None
        if "" not in forward:
            return values, values, 0
        logged = [value or None for value in values]
    missing = logged.count(None)
    if missing and required:
        return None
    return forward, logged, missing


def _check_values(name: str, kind: int, required: bool, sentinel: Any, values: list[Any]) -> tuple[list[Any], list[Any], int]:
    """One feature's values one by one: (forwarded values, logged values, how many are missing)."""
    forward: list[Any] = []
    logged: list[Any] = []
    missing = 0
    for index, value in enumerate(values):
        value = _checked_value(index, name, kind, value)
        if value is None:
            if required:
                raise _required(index, name)
            missing += 1
            forward.append(sentinel)
        else:
            forward.append(value)
        logged.append(value)
    return forward, logged, missing


def _check_one(instance: dict[str, Any]) -> CheckedInstances:
    """A single example (the usual serving request), feature by feature: no column machinery to pay for."""
    forward: dict[str, list[Any]] = {}
    logged: dict[str, list[Any]] = {}
    missing: dict[str, int] = {}
    for name, kind, required, sentinel in _CHECKS:
        value = _checked_value(0, name, kind, instance[name])
        if value is None:
            if required:
                raise _required(0, name)
            missing[name] = 1
            forward[name], logged[name] = [sentinel], [None]
        else:
            forward[name] = logged[name] = [value]
    return CheckedInstances(forward, logged, 1, missing)


def _checked_value(index: int, name: str, kind: int, value: Any) -> Any:
    """The value as it is forwarded (an int for a float becomes a float), None when it is missing;
    InvalidRequest naming the example and the feature when it is invalid."""
    kind_of_value = type(value)
    if kind == _FLOAT:
        if kind_of_value is float:
            if value != value:  # NaN: the float sentinel for missing
                return None
            if value in _INFINITIES:
                raise InvalidRequest(f"instance {index}: feature {name!r} must be a finite number, got {value}")
            if not -FLOAT32_MAX <= value <= FLOAT32_MAX:
                raise InvalidRequest(f"instance {index}: feature {name!r} {fit_problem(Kind.FLOAT, value)}")
        elif kind_of_value is int:
            if not INT64_MIN <= value <= INT64_MAX:
                raise InvalidRequest(f"instance {index}: feature {name!r} is out of range, got {value!r:.80}")
            return float(value)
        elif value is not None:
            raise InvalidRequest(f"instance {index}: feature {name!r} must be a number or null, got {value!r:.80}")
    elif kind == _INT:
        if kind_of_value is float and value.is_integer():
            value, kind_of_value = int(value), int
        if kind_of_value is int:
            if value == -1:
                return None
            if not INT64_MIN <= value <= INT64_MAX:
                raise InvalidRequest(f"instance {index}: feature {name!r} must fit in a 64-bit integer, got {value!r:.80}")
        elif value is not None:
            raise InvalidRequest(f"instance {index}: feature {name!r} must be an integer or null, got {value!r:.80}")
    elif kind_of_value is str:
        if not value:
            return None
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequest(f"instance {index}: feature {name!r} is not valid text (a lone "
                                     f"surrogate escape), got {value!r:.80}") from None
    elif value is not None:
        raise InvalidRequest(f"instance {index}: feature {name!r} must be a string or null, got {value!r:.80}")
    return value


def _required(index: int, name: str) -> InvalidRequest:
    return InvalidRequest(f"instance {index}: feature {name!r} is required and may not be missing (null, NaN or sentinel)")


def parse_json(raw: bytes) -> Any:
    """A request body as JSON; InvalidRequest naming what is wrong with it."""
    if b"NaN" not in raw and b"Infinity" not in raw:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(raw)  # accepts NaN/Infinity tokens (orjson does not), as TF Serving does
    except json.JSONDecodeError as err:
        raise InvalidRequest(f"malformed JSON in the request body: {err}") from None
    except UnicodeDecodeError as err:
        raise InvalidRequest(f"malformed JSON in the request body: not UTF-8 text at byte {err.start}") from None
    except ValueError:  # Python refuses to parse integers of more than 4,300 digits
        raise InvalidRequest("malformed JSON in the request body: a number is too long (over 4,300 digits)") from None
    except RecursionError:
        raise InvalidRequest("malformed JSON in the request body: nested too deeply") from None


# --- the model server ---------------------------------------------------------------------------


def check_predict_body(raw: bytes, max_instances: int) -> tuple[CheckedInstances, bool]:
    """The checked examples of a predict body, and whether it was columnar.

    TF Serving clients send a missing float as the NaN token, which orjson refuses; the standard
    library's parser takes it, at 2-3x orjson's cost per value. So each NaN token goes to orjson
    as the string `_NAN_MARK`, which the checks turn back into NaN. A NaN inside a string cannot
    be mistaken for a token: the inserted quotes break that string apart, orjson refuses the
    body, and the exact parser reads it. No client string can equal the mark: it holds a NUL,
    which JSON can only carry as the escape the guard looks for. A body the checks refuse is
    read again by the exact parser, so the error names values as the client wrote them.
    """
    if b"NaN" in raw and b"Infinity" not in raw and b"\\u0000" not in raw:
        try:
            body = orjson.loads(raw.replace(b"NaN", _NAN_MARK_JSON))
        except orjson.JSONDecodeError:
            pass
        else:
            try:
                return _checked_body(body, max_instances, marked_nan=True)
            except GatewayError:
                pass
    return _checked_body(parse_json(raw), max_instances)


def _checked_body(body: Any, max_instances: int, marked_nan: bool = False) -> tuple[CheckedInstances, bool]:
    if not isinstance(body, dict):
        raise InvalidRequest(f"the request body must be a JSON object with 'instances' or 'inputs', got {type(body).__name__}")
    unknown = set(body) - _BODY_KEYS
    if unknown:
        raise InvalidRequest(f"unknown keys {sorted(unknown)} in the request body; expected 'instances' or 'inputs' and optional 'signature_name'")
    signature = body.get("signature_name", DEFAULT_SIGNATURE)
    if signature != DEFAULT_SIGNATURE:
        raise InvalidRequest(f"signature_name {signature!r} is not served by the gateway; use {DEFAULT_SIGNATURE!r}")
    if ("instances" in body) == ("inputs" in body):
        raise InvalidRequest("the request body needs exactly one of 'instances' (rows) or 'inputs' (columns)")
    if "instances" in body:
        return check_instances(body["instances"], max_instances, marked_nan=marked_nan), False
    return check_inputs(body["inputs"], max_instances, marked_nan=marked_nan), True
