"""Ingest's fast paths against the reference rules they replace, on generated input.

RowEncoder writes protobuf's wire format by hand and builds canonical_row's text itself; the
split is an md5 of that text, so one character of difference would move rows between splits.
CsvLineParser splits and parses lines without the csv module and parse_value where it can. Each
is checked here against the slow definition (and TFRecordBatchSink's framing against Beam's): row_to_example / canonical_row, and
split_csv_line + parse_cells (CsvLineParser._parse_reference; test_dirty_properties.py also
compares the two on its generated taxi lines).
"""

from __future__ import annotations

import csv
import io
import math
import struct
from typing import Any

import pytest
import tensorflow as tf
from hypothesis import HealthCheck, example, given, settings
from apache_beam.io.tfrecordio import _TFRecordUtil
from hypothesis import strategies as st

from beam_jobs import ingest
from beam_jobs.example_codec import SOURCE_LINE_KEY, RowEncoder, canonical_row, row_to_example
from beam_jobs.tfrecord_batches import tfrecord_frame
from tests.beam_jobs.test_dirty_properties import BAD_CELLS
from transforms.features import FEATURES_BY_NAME, FLOAT32_MAX, INT64_MAX, INT64_MIN, RAW_COLUMNS, Kind

NAMES = (*RAW_COLUMNS, SOURCE_LINE_KEY)
ENCODER = RowEncoder(NAMES)

FLOATS = st.one_of(
    st.floats(min_value=-FLOAT32_MAX, max_value=FLOAT32_MAX),  # what ingest can produce
    st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 1e-40, 1.17549435e-38, FLOAT32_MAX, -FLOAT32_MAX, 0.1, 41.8781, -87.6298]),
)
INTS = st.one_of(st.integers(min_value=INT64_MIN, max_value=INT64_MAX),
                 st.sampled_from([0, 1, 127, 128, 16383, 16384, 2**28 - 1, 2**28, 2**42 - 1, 2**42, -1, INT64_MIN]))
TEXTS = st.one_of(st.text(st.characters(exclude_categories=("Cs",)), max_size=200),
                  st.sampled_from(["", '"', "\\", "a\"b\\c", "\x00\x1f\x7f", "Credit Card", "🚕 Taxi", "é" * 70]))
BY_KIND = {Kind.FLOAT: FLOATS, Kind.INT: INTS, Kind.STRING: TEXTS}


def _kind(name: str) -> Kind:
    return Kind.INT if name == SOURCE_LINE_KEY else FEATURES_BY_NAME[name].kind


ROWS = st.fixed_dictionaries({name: st.one_of(st.none(), BY_KIND[_kind(name)]) for name in NAMES})


def _bytes_of_message(serialized: bytes) -> bytes:
    """A parsed Example in protobuf's deterministic form: equal messages give equal bytes (NaN included)."""
    return tf.train.Example.FromString(serialized).SerializeToString(deterministic=True)


def _assert_encodes_like_the_reference(row: dict[str, Any]) -> None:
    text, serialized = ENCODER.encode([row[name] for name in NAMES])
    # Byte for byte protobuf's deterministic form (clean takes such records' bytes as they are).
    assert serialized == row_to_example(row).SerializeToString(deterministic=True)
    if all(row[name] is None for name in NAMES):
        assert serialized == row_to_example(row).SerializeToString() == b""
    assert text == canonical_row(row)


@settings(max_examples=1500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(row=ROWS)
@example(row={name: None for name in NAMES})
def test_encoded_examples_and_texts_equal_the_protobuf_and_json_reference(row):
    _assert_encodes_like_the_reference(row)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 3.5e38, -1e39, 1e-50])
def test_floats_outside_float32_are_stored_as_protobuf_stores_them(value):
    """Not values ingest produces (parse_value refuses them), but the encoder must not differ there either."""
    row = {name: None for name in NAMES}
    row["fare"] = value
    text, serialized = ENCODER.encode([row[name] for name in NAMES])
    # Byte for byte protobuf's deterministic form (clean takes such records' bytes as they are).
    assert serialized == row_to_example(row).SerializeToString(deterministic=True)
    try:
        expected = canonical_row(row)
    except OverflowError:  # beyond float32: canonical_row refuses, the Example holds an infinity
        assert struct.unpack("<f", struct.pack("<f", math.copysign(math.inf, value)))[0] == tf.train.Example.FromString(
            serialized).features.feature["fare"].float_list.value[0]
        return
    assert text == expected


def test_a_row_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match="expected 19 values"):
        ENCODER.encode([None] * 18)


# --- CsvLineParser: the fast line path against the reference rules ---

PARSER_COLUMNS = tuple(reversed(RAW_COLUMNS))


def _line(cells: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(cells)
    return buffer.getvalue().encode("utf-8")


@settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells=st.lists(st.one_of(BAD_CELLS, st.text(max_size=6), st.sampled_from([" 12 ", "+5", "-7", "12.0", "\t3.5",
                                                                                  "1e5", "  ", "x y", "\x1c4"])),
                      min_size=len(RAW_COLUMNS) - 1, max_size=len(RAW_COLUMNS) + 1),
       joiner=st.sampled_from([",", ", ", ",\r", ',"']))
def test_arbitrary_cells_parse_as_the_reference_rules_parse_them(cells, joiner):
    """Cells of any text, joined by the csv module or naively (quotes, carriage returns, spaces)."""
    parser = ingest.CsvLineParser(PARSER_COLUMNS)
    surrogate_free = [cell.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace") for cell in cells]
    for raw in (_line(surrogate_free), joiner.join(surrogate_free).encode("utf-8", errors="surrogatepass")):
        raw = raw.replace(b"\n", b" ")
        assert parser.parse(7, raw) == parser._parse_reference(7, raw), raw


# --- TFRecordBatchSink's framing against Beam's TFRecord writer ---


@settings(max_examples=300, deadline=None, database=None)
@given(record=st.one_of(st.binary(max_size=300), st.binary(min_size=70_000, max_size=70_100)))
def test_records_are_framed_as_beams_tfrecord_writer_frames_them(record):
    written = io.BytesIO()
    _TFRecordUtil.write_record(written, record)
    assert tfrecord_frame(record) == written.getvalue()
