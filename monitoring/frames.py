"""Feature rows as typed pandas DataFrames, the form every monitoring check takes.

Columns follow transforms/features.py: FLOAT -> float64 (NaN = missing), INT -> nullable Int64
(<NA> = missing), STRING -> object (None = missing), the same types `serving.prediction_log`
reads the gateway's logs into, so a check behaves the same on logs, on training Examples and on
rows built in a notebook.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from core.errors import DataError
from transforms.features import FEATURES_BY_NAME, SERVING_COLUMNS, Kind, parse_value


def typed_frame(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] = SERVING_COLUMNS) -> pd.DataFrame:
    """Rows (feature name -> value, None = missing) as a DataFrame with the declared kinds."""
    frame = pd.DataFrame.from_records(list(rows), columns=list(columns))
    return with_feature_types(frame, columns)


def with_feature_types(frame: pd.DataFrame, columns: Sequence[str] = SERVING_COLUMNS) -> pd.DataFrame:
    """`frame` with each feature column cast to its kind; DataError names a column that does not fit."""
    frame = frame.copy()
    for name in columns:
        if name not in frame.columns:
            raise DataError(f"column {name!r} is missing (expected the features of transforms/features.py)")
        kind = FEATURES_BY_NAME[name].kind
        try:
            if kind is Kind.FLOAT:
                frame[name] = pd.to_numeric(frame[name], errors="raise").astype("float64")
            elif kind is Kind.INT:
                numbers = pd.to_numeric(frame[name], errors="raise")
                fractional = numbers.notna() & (numbers.astype("float64") % 1 != 0)
                if fractional.any():
                    raise ValueError(f"value {numbers[fractional].iloc[0]!r} is not an integer")
                frame[name] = numbers.astype("Int64")
            else:
                frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
        except (ValueError, TypeError) as err:
            raise DataError(f"column {name!r} must hold {kind.value} values: {err}") from None
    return frame


def frame_from_csv_rows(rows: Iterable[Mapping[str, str]], columns: Sequence[str] = SERVING_COLUMNS) -> pd.DataFrame:
    """CSV rows (all strings, '' = missing) parsed with the rules of transforms/features.py."""
    parsed = []
    for line, row in enumerate(rows, start=2):
        values = {}
        for name in columns:
            text = row.get(name, "")
            try:
                values[name] = parse_value(FEATURES_BY_NAME[name], text)
            except ValueError as err:
                raise DataError(f"CSV line {line}: column {name!r}: {err}, got {text!r:.80}") from None
        parsed.append(values)
    return typed_frame(parsed, columns)


def read_examples_frame(examples_dir: Path, split: str = "train", columns: Sequence[str] = SERVING_COLUMNS) -> pd.DataFrame:
    """The rows of `<examples_dir>/Split-<split>/data-*.tfrecord.gz` (e.g. a model's training data)."""
    import tensorflow as tf  # only here: the rest of the module must stay cheap to import

    from beam_jobs.example_codec import parse_serialized, split_pattern

    pattern = split_pattern(examples_dir, split)
    files = sorted(glob.glob(pattern))
    if not files:
        raise DataError(f"no {split} examples: nothing matches {pattern}")
    names = tuple(columns)
    try:
        rows = [parse_serialized(record, names)
                for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator()]
    except tf.errors.DataLossError as err:
        raise DataError(f"{pattern}: corrupt or truncated gzip TFRecord: {err.message}") from None
    return typed_frame(rows, columns)
