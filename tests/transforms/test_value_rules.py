"""The one definition of what a value of each kind may be (transforms/features.py), as every reader of
raw values (ingest, batch prediction, monitoring, the gateway) applies it."""

from __future__ import annotations

import math
import struct

import pytest

from transforms.features import (FEATURES_BY_NAME, FLOAT32_MAX, INT64_MAX, INT64_MIN, Kind, fit_problem, parse_value)

FARE = FEATURES_BY_NAME["fare"]  # float
SECONDS = FEATURES_BY_NAME["trip_seconds"]  # int
COMPANY = FEATURES_BY_NAME["company"]  # string


@pytest.mark.parametrize("text, expected", [
    ("12.5", 12.5), (" 7 ", 7.0), ("-0", -0.0), ("3.4028234663852886e38", FLOAT32_MAX), ("1e-50", 1e-50), ("", None),
])
def test_floats_that_fit_a_float32_parse(text, expected):
    assert parse_value(FARE, text) == expected


@pytest.mark.parametrize("text, says", [
    ("1e39", "does not fit a float32"), ("-3.5e38", "does not fit a float32"), ("1e400", "finite"),
    ("nan", "finite"), ("-inf", "finite"), ("12,5", "a finite number"), ("1_000", "a finite number"),
    ("١٢", "a finite number"), ("0x10", "a finite number"),
])
def test_floats_that_do_not_fit_or_parse_say_why(text, says):
    with pytest.raises(ValueError, match=says):
        parse_value(FARE, text)


def test_every_float_that_parses_can_be_stored_as_a_float32():
    for text in ("3.4028234663852886e38", "-3.4028234663852886e38", "3.4028235e38"):
        try:
            value = parse_value(FARE, text)
        except ValueError:
            continue
        struct.pack("<f", value)  # what tf.train.Example does; raises OverflowError if it does not fit


@pytest.mark.parametrize("text, expected", [
    ("12", 12), ("12.0", 12), ("-1", -1), (str(INT64_MAX), INT64_MAX), (str(INT64_MIN), INT64_MIN), ("", None),
])
def test_integers_that_fit_an_int64_parse(text, expected):
    assert parse_value(SECONDS, text) == expected


@pytest.mark.parametrize("text, says", [
    (str(INT64_MAX + 1), "does not fit a 64-bit integer"), (str(INT64_MIN - 1), "does not fit a 64-bit integer"),
    ("1e30", "does not fit a 64-bit integer"), ("12.5", "an integer"), ("1e400", "an integer"), ("nan", "an integer"),
    ("9" * 5000, "an integer"), ("1_0", "an integer"), ("٣", "an integer"),
])
def test_integers_that_do_not_fit_or_parse_say_why(text, says):
    with pytest.raises(ValueError, match=says):
        parse_value(SECONDS, text)


def test_text_must_be_utf8():
    assert parse_value(COMPANY, " Taxi Affiliation Services ") == "Taxi Affiliation Services"
    assert parse_value(COMPANY, "Flash Cab 🚕") == "Flash Cab 🚕"
    undecodable = b"Flash \xff Cab".decode("utf-8", errors="surrogateescape")
    with pytest.raises(ValueError, match="UTF-8"):
        parse_value(COMPANY, undecodable)


def test_fit_problem_by_kind():
    assert fit_problem(Kind.FLOAT, 1.0) is None
    assert fit_problem(Kind.FLOAT, math.inf) is not None
    assert "float32" in fit_problem(Kind.FLOAT, -1e39)
    assert fit_problem(Kind.INT, INT64_MAX) is None
    assert "64-bit" in fit_problem(Kind.INT, INT64_MAX + 1)
    assert fit_problem(Kind.STRING, "anything") is None
