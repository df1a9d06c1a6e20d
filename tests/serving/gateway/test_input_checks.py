"""The gateway's input checks on their own (no servers): both request formats, and the column fast path.

Most columns are checked with C-level calls and list comprehensions (`_check_common_column`);
anything unusual is checked value by value (`_check_values`), which also writes the error
messages. The fast path must give exactly what the value-by-value check gives, or step aside.
"""

from __future__ import annotations

import math
import random

import pytest

from serving.gateway.errors import GatewayError
from serving.gateway.inputs import (
    _CHECKS,
    _FLOAT,
    _INT,
    JSON_NAN,
    _check_columns,
    _check_common_column,
    _check_values,
    check_inputs,
    check_instances,
)
from tests.serving.gateway.helpers import instances, real_trips

# Values a client can send for any feature, valid or not: the fast path must agree on all of them.
_FLOATS = [0.0, 1.5, -3.25, 12.0, 1e300, -1e39, 3.4028234663852886e38, math.nan, math.inf, -math.inf, None, 7, -1, 2**70, True, "1.5", ""]
_INTS = [0, 7, 1400269500, -1, -2, 2**63 - 1, -(2**63), 2**63, 3.0, 3.5, math.nan, None, False, "7"]
_STRINGS = ["Cash", "Flash Cab", "", None, "Café", "bad \udcff text", 1, 0.5, {"b64": "eA=="}, ["x"]]


def _values_for(kind: int) -> list:
    return _FLOATS if kind == _FLOAT else _INTS if kind == _INT else _STRINGS


def _value_by_value(name, kind, required, sentinel, values):
    try:
        return _check_values(name, kind, required, sentinel, values)
    except GatewayError as err:
        return err.http_status, err.message


def _same(left, right) -> bool:
    """Equal, with NaN equal to NaN and the JSON_NAN fragment equal only to itself."""
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(_same(a, b) for a, b in zip(left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_same(left[key], right[key]) for key in left)
    if isinstance(left, tuple) and isinstance(right, tuple):
        return len(left) == len(right) and all(_same(a, b) for a, b in zip(left, right))
    if isinstance(left, float) and isinstance(right, float) and math.isnan(left) and math.isnan(right):
        return True
    return type(left) is type(right) and (left is right or left == right)


@pytest.mark.parametrize("name, kind, required, sentinel", _CHECKS, ids=[check[0] for check in _CHECKS])
def test_the_column_fast_path_gives_what_the_value_by_value_check_gives(name, kind, required, sentinel):
    rng = random.Random(f"{name}-fast-path")
    pool = _values_for(kind)
    usual = [value for value in pool if value is None or type(value) is {_FLOAT: float, _INT: int}.get(kind, str)]
    taken = 0
    for _ in range(3000):
        # Mostly the usual types (the fast path's domain), sometimes anything at all.
        source = pool if rng.random() < 0.3 else usual
        values = [rng.choice(source) for _ in range(rng.randint(1, 6))]
        fast = _check_common_column(kind, required, list(values))
        if fast is None:
            continue
        taken += 1
        assert _same(fast, _value_by_value(name, kind, required, sentinel, list(values))), values
    assert taken > 100  # the fast path really was exercised, not just declined


def _outcome(check, *args):
    try:
        checked = check(*args)
    except GatewayError as err:
        return err.http_status, err.message
    return checked.forward, checked.logged, checked.count, checked.missing


def test_a_single_example_checks_as_a_column_of_one_would():
    """Single examples (most serving requests) take their own feature-by-feature path."""
    rng = random.Random("single")
    template = instances(real_trips(1))[0]
    for _ in range(2000):
        instance = {name: rng.choice(_values_for(kind)) if rng.random() < 0.3 else template[name]
                    for name, kind, _required, _sentinel in _CHECKS}
        column = {name: [value] for name, value in instance.items()}
        one = _outcome(check_instances, [instance], 10)
        assert _same(one, _outcome(_check_columns, column, 1)), instance
        assert _same(one, _outcome(check_inputs, column, 10)), instance


def test_rows_and_columns_of_the_same_examples_check_the_same():
    rows = instances(real_trips(40))
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    by_rows, by_columns = check_instances(rows, 100), check_inputs(columns, 100)
    assert by_rows.count == by_columns.count == 40
    assert by_rows.missing == by_columns.missing and by_rows.missing  # real trips have missing values
    for name, *_ in _CHECKS:
        assert _same(by_rows.logged[name], by_columns.logged[name]), name
        assert by_rows.forward[name] == by_columns.forward[name], name


def test_missing_values_are_logged_as_none_and_forwarded_as_the_sentinels():
    rows = instances(real_trips(2))
    rows[0].update(trip_miles=None, dropoff_latitude=math.nan, trip_seconds=-1, pickup_census_tract=None,
                   company="", payment_type="Cash", fare=7)
    checked = check_instances(rows, 10)
    assert checked.logged["trip_miles"][0] is None and checked.forward["trip_miles"][0] is JSON_NAN
    assert checked.logged["dropoff_latitude"][0] is None and checked.forward["dropoff_latitude"][0] is JSON_NAN
    assert checked.logged["trip_seconds"][0] is None and checked.forward["trip_seconds"][0] == -1
    assert checked.logged["pickup_census_tract"][0] is None and checked.forward["pickup_census_tract"][0] == -1
    assert checked.logged["company"][0] is None and checked.forward["company"][0] == ""
    assert checked.forward["fare"][0] == 7.0 and type(checked.forward["fare"][0]) is float  # an int for a float
    for name in ("trip_miles", "dropoff_latitude", "trip_seconds", "pickup_census_tract", "company"):
        assert checked.missing[name] >= 1


@pytest.mark.parametrize(
    "change, words",
    [
        ({"trip_start_hour": 3.5}, ["instance 1", "'trip_start_hour'", "integer"]),
        ({"fare": math.inf}, ["instance 1", "'fare'", "finite"]),
        ({"fare": None}, ["instance 1", "'fare'", "required"]),
        ({"company": "bad \udcff text"}, ["instance 1", "'company'", "not valid text"]),
        ({"trip_start_timestamp": 2**64}, ["instance 1", "'trip_start_timestamp'", "64-bit"]),
        ({"fare": 1e39}, ["instance 1", "'fare'", "float32"]),  # the model's tensor would hold inf
        ({"trip_miles": -3.5e38}, ["instance 1", "'trip_miles'", "float32"]),
    ],
)
def test_a_bad_value_is_named_by_instance_and_feature_in_both_formats(change, words):
    rows = instances(real_trips(3))
    rows[1].update(change)
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    for check, given in ((check_instances, rows), (check_inputs, columns)):
        with pytest.raises(GatewayError) as caught:
            check(given, 10)
        assert caught.value.http_status == 400
        for word in words:
            assert word in caught.value.message, caught.value.message


def test_columnar_inputs_name_missing_and_unknown_features_and_limits():
    columns = {name: [row[name] for row in instances(real_trips(3))] for name in instances(real_trips(1))[0]}
    del columns["fare"]
    columns["tips"] = [1.0, 2.0, 3.0]
    with pytest.raises(GatewayError, match=r"missing features \['fare'\].*unknown features \['tips'\]"):
        check_inputs(columns, 10)
    with pytest.raises(GatewayError) as caught:
        check_inputs({name: [row[name] for row in instances(real_trips(5))] for name in columns if name != "tips"} | {"fare": [1.0] * 5}, 4)
    assert caught.value.http_status == 413 and "5" in caught.value.message and "4" in caught.value.message
    with pytest.raises(GatewayError, match="no examples"):
        check_inputs({name: [] for name, *_ in _CHECKS}, 10)
