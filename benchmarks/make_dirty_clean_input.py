"""A dirty input for clean's old-vs-new equality check (docs/SCALE.md, "Clean in flat memory").

    python benchmarks/make_dirty_clean_input.py TAXI_CSV ROWS OUT_DIR

Writes OUT_DIR/dirty.csv (the first ROWS rows of TAXI_CSV, with every 7th to 97th row broken in
one of the ways clean handles: a required value missing, values outside their ranges for REJECT and
NULL features, copies of earlier rows), runs ingest on it into OUT_DIR/ingest, and adds to each
split a file of records no CSV gives (data-extra-*.tfrecord.gz): production rows with an observed
label and no tips (kept), one with neither (rejected), an observed label out of range, and records
clean's decoder refuses (garbage, a wrong kind, two values, NaN, non-UTF-8 text, an unknown
feature), spread through batches of good rows. Then run the old and new clean on OUT_DIR/ingest/examples
and compare with benchmarks/compare_clean_outputs.py.
"""

from __future__ import annotations

import csv
import datetime
import sys
from pathlib import Path

import tensorflow as tf

from beam_jobs.example_codec import SOURCE_LINE_KEY, SPLITS, split_dir
from beam_jobs.ingest import ingest_csv
from transforms.features import FARE_KEY, OBSERVED_LABEL_KEY, PAYMENT_TYPE_KEY, TIPS_KEY

UTC = datetime.timezone.utc

# (every how many rows, column, value): REJECT (fare, hour, latitude, trip seconds), NULL (community
# area, miles), required missing (fare, payment type, tips).
BREAKS = ((7, "pickup_community_area", "99"), (11, FARE_KEY, "-3.5"), (13, "trip_miles", "900.5"),
          (17, "trip_start_hour", "25"), (19, "pickup_latitude", "991"), (23, PAYMENT_TYPE_KEY, ""),
          (29, FARE_KEY, ""), (31, TIPS_KEY, ""), (37, "trip_seconds", "0"), (41, "dropoff_community_area", "0"))
COPY_EVERY = 97


def dirty_csv(source: Path, rows: int, out: Path) -> None:
    with source.open(newline="") as handle, out.open("w", newline="") as written:
        reader = csv.DictReader(handle)
        writer = csv.DictWriter(written, fieldnames=reader.fieldnames, lineterminator="\n")
        writer.writeheader()
        earlier = []
        for index, row in zip(range(rows), reader):
            for every, column, value in BREAKS:
                if index % every == every - 1:
                    row[column] = value
            writer.writerow(row)
            earlier.append(row)
            if index % COPY_EVERY == COPY_EVERY - 1:
                writer.writerow(earlier[index // 2])  # an exact copy, lines apart


def _feature(example: tf.train.Example, name: str) -> tf.train.Feature:
    """The example's feature `name`, emptied (made if absent)."""
    features = example.features.feature
    if name in features:
        del features[name]
    return features[name]


def extra_records(good: list[bytes]) -> list[bytes]:
    """Odd records spread through good ones, so batches hold both."""
    records = []
    for index, serialized in enumerate(good):
        example = tf.train.Example.FromString(serialized)
        line = 10_000_000 + index
        _feature(example, SOURCE_LINE_KEY).int64_list.value.append(line)
        # Content of its own (an in-range start time no CSV row has), so it is not a copy of its source.
        _feature(example, "trip_start_timestamp").int64_list.value.append(2_000_000_000 + index)
        case = index % 23
        if case == 1:  # production row: observed label, no tips -> kept
            _feature(example, TIPS_KEY)
            del example.features.feature[TIPS_KEY]
            _feature(example, OBSERVED_LABEL_KEY).int64_list.value.append(index % 2)
        elif case == 2:  # neither tips nor observed label -> missing_required
            _feature(example, TIPS_KEY)
            del example.features.feature[TIPS_KEY]
        elif case == 3:  # observed label out of range -> out_of_range
            _feature(example, OBSERVED_LABEL_KEY).int64_list.value.append(5)
        elif case == 4:  # wrong kind -> unparseable
            _feature(example, "trip_seconds").float_list.value.append(3.0)
        elif case == 5:  # two values -> unparseable
            example.features.feature["trip_start_month"].int64_list.value.append(3)
        elif case == 6:  # NaN -> unparseable
            _feature(example, FARE_KEY).float_list.value.append(float("nan"))
        elif case == 7:  # not UTF-8 -> unparseable
            _feature(example, PAYMENT_TYPE_KEY).bytes_list.value.append(b"\xff\xfe")
        elif case == 8:  # unknown feature -> unparseable
            _feature(example, "surge").float_list.value.append(1.0)
        elif case == 9:  # an empty optional feature, an empty Feature: kept, read as missing
            _feature(example, "company").bytes_list.SetInParent()
            _feature(example, "dropoff_census_tract").SetInParent()
        elif case == 10:  # a huge integer in a ranged feature -> out_of_range
            _feature(example, "trip_seconds").int64_list.value.append(2**62)
        records.append(example.SerializeToString())
        if index % 500 == 499:
            records.append(b"not an example \xff")
    return records


def main(source: Path, rows: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    dirty_csv(source, rows, out / "dirty.csv")
    ingest_csv(out / "dirty.csv", out / "ingest", start=datetime.datetime(2000, 1, 1, tzinfo=UTC),
               end=datetime.datetime(2030, 1, 1, tzinfo=UTC), max_unparseable_fraction=1.0)
    for split in SPLITS:
        folder = split_dir(out / "ingest" / "examples", split)
        files = sorted(str(path) for path in folder.glob("data-*.tfrecord.gz"))
        good = [record.numpy() for record in tf.data.TFRecordDataset(files, compression_type="GZIP").take(5000)]
        with tf.io.TFRecordWriter(str(folder / "data-extra-00000-of-00001.tfrecord.gz"), "GZIP") as writer:
            for record in extra_records(good):
                writer.write(record)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
