"""Batch prediction: every row scored by the real SavedModel through RunInference, or rejected with a reason."""

from __future__ import annotations

import csv
import gzip
import json
import math
import shutil
from pathlib import Path

import pytest

from beam_jobs.batch_predict import (
    PREDICTION_FIELDS,
    PREDICTIONS_DIR,
    REJECTED_DIR,
    RESULT_FILE,
    batch_predict,
    read_predictions,
    run,
)
from core.errors import DataError
from tests.conftest import write_csv
from transforms.features import SERVING_COLUMNS, TIPS_KEY

BEAM_ARGS = ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]
WEIGHT = 1.5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny real SavedModel, in a TF Serving-style version directory named 7."""
    from tests.fixtures.tiny_model import export_tiny_model

    return export_tiny_model(tmp_path_factory.mktemp("models") / "taxi" / "7", weight=WEIGHT)


def expected_probability(row: dict[str, str]) -> float:
    """What the tiny model computes (tests/fixtures/tiny_model.py), from the CSV text alone."""
    fare = float(row["fare"]) if row["fare"].strip() else 0.0
    card = 4.0 if row["payment_type"] == "Credit Card" else 0.0
    return 1.0 / (1.0 + math.exp(-(WEIGHT * (card - 2.0) + 0.01 * fare)))


def test_scores_every_row_with_its_line_number_and_the_models_own_output(tmp_path, taxi_rows, model_dir):
    rows = taxi_rows[:300]
    source = write_csv(tmp_path / "day.csv", rows)

    result = batch_predict(source, model_dir, tmp_path / "out", beam_args=BEAM_ARGS, batch_size=64)

    assert (result.rows_read, result.rows_scored, result.rows_rejected) == (300, 300, 0)
    assert result.model_version == 7
    predictions = read_predictions(tmp_path / "out")
    assert [p["line"] for p in predictions] == list(range(2, 302))  # the header is line 1
    for prediction, row in zip(predictions, rows):
        assert prediction["probability"] == pytest.approx(expected_probability(row), abs=1e-5)
        assert prediction["class"] == int(prediction["probability"] >= 0.5)
        assert prediction["model_version"] == 7
    positives = sum(p["class"] for p in predictions)
    assert result.positive_rate == pytest.approx(positives / 300)
    assert 0 < positives < 300  # the sample has card and cash trips: both classes occur
    written = json.loads((tmp_path / "out" / RESULT_FILE).read_text())
    assert written["rows_scored"] == 300 and written["model_version"] == 7


def test_a_gzip_compressed_day_is_scored_as_the_plain_one(tmp_path, taxi_rows, model_dir):
    source = write_csv(tmp_path / "day.csv", taxi_rows[:300])
    packed = tmp_path / "day.csv.gz"
    packed.write_bytes(gzip.compress(source.read_bytes()))

    plain = batch_predict(source, model_dir, tmp_path / "plain", beam_args=BEAM_ARGS, batch_size=64)
    result = batch_predict(packed, model_dir, tmp_path / "packed", beam_args=BEAM_ARGS, batch_size=64)

    assert (result.rows_read, result.rows_scored, result.rows_rejected) == (300, 300, 0)
    packed_predictions, plain_predictions = read_predictions(tmp_path / "packed"), read_predictions(tmp_path / "plain")
    assert [(p["line"], p["class"]) for p in packed_predictions] == [(p["line"], p["class"]) for p in plain_predictions]
    # RunInference sizes its batches by timing, and a float32 result can move in its last bit with the batch.
    assert [p["probability"] for p in packed_predictions] == pytest.approx([p["probability"] for p in plain_predictions],
                                                                         abs=1e-6)
    assert result.positive_rate == plain.positive_rate


def test_a_day_of_trips_without_the_label_column_is_scored(tmp_path, taxi_rows, model_dir):
    columns = [c for c in taxi_rows[0] if c != TIPS_KEY]
    source = write_csv(tmp_path / "no_tips.csv", taxi_rows[:20], columns)

    result = batch_predict(source, model_dir, tmp_path / "out", beam_args=BEAM_ARGS)

    assert result.rows_scored == 20
    assert [p["probability"] for p in read_predictions(tmp_path / "out")] == pytest.approx(
        [expected_probability(r) for r in taxi_rows[:20]], abs=1e-5)


def test_missing_values_are_scored_not_rejected(tmp_path, taxi_rows, model_dir):
    rows = [dict(r) for r in taxi_rows[:5]]
    rows[0]["fare"] = ""
    rows[1]["company"] = ""
    source = write_csv(tmp_path / "gaps.csv", rows)

    result = batch_predict(source, model_dir, tmp_path / "out", beam_args=BEAM_ARGS)

    assert (result.rows_scored, result.rows_rejected) == (5, 0)
    assert read_predictions(tmp_path / "out")[0]["probability"] == pytest.approx(expected_probability(rows[0]), abs=1e-5)


def _corrupt_day(tmp_path: Path, taxi_rows: list[dict[str, str]]) -> Path:
    """50 rows: line 4 has a fare that is not a number, line 7 has a field missing."""
    source = write_csv(tmp_path / "corrupt.csv", taxi_rows[:50])
    lines = source.read_text().splitlines()
    columns = lines[0].split(",")
    fields = next(csv.reader([lines[3]]))
    fields[columns.index("fare")] = "twelve"
    lines[3] = ",".join(f'"{f}"' if "," in f else f for f in fields)
    lines[6] = lines[6].rsplit(",", 1)[0]
    source.write_text("\n".join(lines) + "\n")
    return source


def test_unparseable_rows_are_rejected_with_line_and_reason_and_the_rest_scored(tmp_path, taxi_rows, model_dir):
    source = _corrupt_day(tmp_path, taxi_rows)

    result = batch_predict(source, model_dir, tmp_path / "out", beam_args=BEAM_ARGS, max_rejected_fraction=0.1)

    assert (result.rows_read, result.rows_scored, result.rows_rejected) == (50, 48, 2)
    assert result.rejected_by_reason == {"unparseable_value": 1, "wrong_field_count": 1}
    rejected = sorted(
        (json.loads(line) for path in (tmp_path / "out" / REJECTED_DIR).glob("rejected-*.jsonl")
         for line in path.read_text().splitlines()),
        key=lambda r: r["line"],
    )
    assert [(r["line"], r["reason"], r["feature"]) for r in rejected] == [
        (4, "unparseable_value", "fare"), (7, "wrong_field_count", None)]
    assert "twelve" in rejected[0]["detail"] and "twelve" in rejected[0]["text"]
    scored_lines = {p["line"] for p in read_predictions(tmp_path / "out")}
    assert scored_lines == set(range(2, 52)) - {4, 7}


def test_values_that_do_not_fit_the_models_tensors_are_rejected_naming_the_feature(tmp_path, taxi_rows, model_dir):
    rows = [dict(r) for r in taxi_rows[:20]]
    rows[2]["fare"] = "1e39"  # beyond float32
    rows[5]["trip_seconds"] = str(2**64)  # beyond int64
    source = write_csv(tmp_path / "overflow.csv", rows)

    result = batch_predict(source, model_dir, tmp_path / "out", beam_args=BEAM_ARGS, max_rejected_fraction=0.2)

    assert (result.rows_read, result.rows_scored, result.rows_rejected) == (20, 18, 2)
    rejected = sorted((json.loads(line) for path in (tmp_path / "out" / REJECTED_DIR).glob("rejected-*.jsonl")
                       for line in path.read_text().splitlines()), key=lambda r: r["line"])
    assert [(r["line"], r["reason"], r["feature"]) for r in rejected] == [
        (4, "unparseable_value", "fare"), (7, "unparseable_value", "trip_seconds")]
    assert "float32" in rejected[0]["detail"] and "64-bit" in rejected[1]["detail"]


def test_too_many_rejected_rows_fail_with_examples_and_publish_no_predictions(tmp_path, taxi_rows, model_dir):
    source = _corrupt_day(tmp_path, taxi_rows)

    with pytest.raises(DataError) as failure:
        batch_predict(source, model_dir, tmp_path / "out", beam_args=BEAM_ARGS)

    message = str(failure.value)
    assert str(source) in message and "2 of 50 rows" in message and "line 4" in message and "twelve" in message
    assert not (tmp_path / "out" / PREDICTIONS_DIR).exists()
    assert not (tmp_path / "out" / RESULT_FILE).exists()
    assert list((tmp_path / "out" / REJECTED_DIR).glob("rejected-*.jsonl"))  # the evidence is kept
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".staging")]


def test_csv_output_has_a_header_and_one_line_per_row(tmp_path, taxi_rows, model_dir):
    source = write_csv(tmp_path / "day.csv", taxi_rows[:10])

    batch_predict(source, model_dir, tmp_path / "out", output_format="csv", beam_args=BEAM_ARGS)

    [written] = list((tmp_path / "out" / PREDICTIONS_DIR).glob("predictions-*.csv"))
    with written.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == PREDICTION_FIELDS
        assert sorted(int(r["line"]) for r in reader) == list(range(2, 12))
    assert [p["probability"] for p in read_predictions(tmp_path / "out")] == pytest.approx(
        [expected_probability(r) for r in taxi_rows[:10]], abs=1e-5)


def test_the_command_line_program_takes_app_and_runner_flags(tmp_path, taxi_rows, model_dir):
    source = write_csv(tmp_path / "day.csv", taxi_rows[:10])

    result = run(["--input", str(source), "--model_dir", str(model_dir), "--output", str(tmp_path / "out"),
                  "--model_version", "12", *BEAM_ARGS])

    assert result.rows_scored == 10 and result.model_version == 12
    assert {p["model_version"] for p in read_predictions(tmp_path / "out")} == {12}


def test_missing_columns_name_the_file_and_the_columns(tmp_path, taxi_rows, model_dir):
    columns = [c for c in taxi_rows[0] if c not in ("fare", "company")]
    source = write_csv(tmp_path / "partial.csv", taxi_rows[:3], columns)

    with pytest.raises(DataError, match=r"partial\.csv: the header is missing 2 column\(s\).*fare, company"):
        batch_predict(source, model_dir, tmp_path / "out", beam_args=BEAM_ARGS)
    assert not (tmp_path / "out").exists()


def test_header_only_and_missing_files_are_data_errors(tmp_path, model_dir):
    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(SERVING_COLUMNS) + "\n")
    with pytest.raises(DataError, match="no data rows"):
        batch_predict(empty, model_dir, tmp_path / "out", beam_args=BEAM_ARGS)
    with pytest.raises(DataError, match="no such file or folder"):
        batch_predict(tmp_path / "absent.csv", model_dir, tmp_path / "out2", beam_args=BEAM_ARGS)


def test_a_model_without_the_example_signature_is_refused(tmp_path, taxi_rows):
    import tensorflow as tf

    class NoExamples(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="fare")])
        def serving_default(self, fare):
            return {"probability": tf.sigmoid(fare), "class": tf.cast(fare > 0, tf.int64)}

    module = NoExamples()
    model_dir = tmp_path / "models" / "3"
    tf.saved_model.save(module, str(model_dir), signatures={"serving_default": module.serving_default})
    source = write_csv(tmp_path / "day.csv", taxi_rows[:3])

    with pytest.raises(DataError, match=r"no 'serving_examples' signature \(it has \['serving_default'\]\)"):
        batch_predict(source, model_dir, tmp_path / "out", beam_args=BEAM_ARGS)


def test_an_unnumbered_model_directory_needs_an_explicit_version(tmp_path, taxi_rows, model_dir):
    source = write_csv(tmp_path / "day.csv", taxi_rows[:3])
    unnumbered = shutil.copytree(model_dir, tmp_path / "exported_model")
    with pytest.raises(DataError, match=r"exported_model.*pass --model_version"):
        batch_predict(source, unnumbered, tmp_path / "out", beam_args=BEAM_ARGS)
    result = batch_predict(source, unnumbered, tmp_path / "out", model_version=4, beam_args=BEAM_ARGS)
    assert result.model_version == 4


def test_an_earlier_runs_outputs_are_not_overwritten(tmp_path, taxi_rows, model_dir):
    source = write_csv(tmp_path / "day.csv", taxi_rows[:3])
    batch_predict(source, model_dir, tmp_path / "out", beam_args=BEAM_ARGS)
    with pytest.raises(FileExistsError, match="already holds"):
        batch_predict(source, model_dir, tmp_path / "out", beam_args=BEAM_ARGS)


@pytest.mark.parametrize("output_format", ["jsonl", "csv"])
def test_a_folder_of_shards_is_scored_with_each_rows_file_and_line(tmp_path, taxi_rows, model_dir, output_format):
    """A day's trips in shards, read in name order, each by its own header (one gzipped, one with
    its columns in another order): each prediction names its file and line there."""
    rows = [dict(row) for row in taxi_rows[:90]]
    rows[40]["fare"] = "lots"  # the second shard's line 12
    shards = tmp_path / "day"
    shards.mkdir()
    write_csv(shards / "part-0.csv", rows[:30], columns=list(SERVING_COLUMNS))
    second = write_csv(tmp_path / "part-1.csv", rows[30:60], columns=list(reversed(SERVING_COLUMNS)))
    (shards / "part-1.csv.gz").write_bytes(gzip.compress(second.read_bytes()))
    write_csv(shards / "part-2.csv", rows[60:], columns=[*SERVING_COLUMNS, TIPS_KEY])
    (shards / "part-3.csv").write_bytes(b"")  # an empty partition: no rows

    result = batch_predict(shards, model_dir, tmp_path / "out", beam_args=BEAM_ARGS, output_format=output_format,
                           max_rejected_fraction=0.05)

    assert (result.rows_read, result.rows_scored, result.rows_rejected) == (90, 89, 1)
    assert result.input_path == str(shards)
    predictions = read_predictions(tmp_path / "out")
    expected = [(name, line) for name in ("part-0.csv", "part-1.csv.gz", "part-2.csv") for line in range(2, 32)]
    expected.remove(("part-1.csv.gz", 12))
    assert [(p["file"], p["line"]) for p in predictions] == expected
    kept = [row for index, row in enumerate(rows) if index != 40]
    assert [p["probability"] for p in predictions] == pytest.approx([expected_probability(r) for r in kept], abs=1e-5)
    if output_format == "csv":
        [written] = (tmp_path / "out" / PREDICTIONS_DIR).glob("predictions-*.csv")
        assert written.read_text().splitlines()[0] == ",".join(("file", *PREDICTION_FIELDS))
    [rejected] = [json.loads(line) for path in (tmp_path / "out" / REJECTED_DIR).glob("*.jsonl")
                  for line in path.read_text().splitlines()]
    assert (rejected["file"], rejected["line"], rejected["feature"]) == ("part-1.csv.gz", 12, "fare")


def test_too_many_bad_rows_in_shards_are_quoted_by_file_and_line(tmp_path, taxi_rows, model_dir):
    shards = tmp_path / "day"
    shards.mkdir()
    for index in range(2):
        rows = [dict(row) for row in taxi_rows[index * 10:(index + 1) * 10]]
        rows[3]["fare"] = "lots"
        write_csv(shards / f"part-{index}.csv", rows, columns=list(SERVING_COLUMNS))

    with pytest.raises(DataError, match=r"e\.g\. part-0\.csv line 5: fare='lots'.*; part-1\.csv line 5: fare="):
        batch_predict(shards, model_dir, tmp_path / "out", beam_args=BEAM_ARGS)
