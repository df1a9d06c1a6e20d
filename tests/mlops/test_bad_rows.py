"""A few bad rows do not stop a day's training; a broken feed does, at validate, with a report.

Real Beam, TFDV and MLMD through the step functions (ingest -> clean -> validate), no training.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import DataError, RejectedRowsError
from mlops import steps
from tests.conftest import write_csv
from tests.monitoring import browser
from tests.mlops.test_pipeline import SMALL_WINDOW, small_config

pytestmark = pytest.mark.slow

IMPOSSIBLE = [  # (column, value): each makes its row impossible; clean rejects or nulls it
    ("fare", "-4.25"), ("trip_miles", "-2"), ("trip_start_hour", "25"), ("trip_start_month", "13"),
    ("pickup_latitude", "991"), ("trip_seconds", "-60"), ("trip_start_day", "0"), ("tips", "-1"),
    ("dropoff_longitude", "0"),
]


def validate_up_to(config, csv: Path, run_id: str) -> tuple[steps.StepContext, dict[str, steps.StepOutcome]]:
    ctx = steps.open_run(config, run_id)
    ingested = steps.ingest(ctx, csv, *SMALL_WINDOW)
    cleaned = steps.clean(ctx, ingested.outputs["examples"])
    done = {"ingest": ingested, "clean": cleaned}
    done["validate"] = steps.validate(ctx, ingested.outputs["examples"], cleaned.outputs["cleaned"],
                                      cleaned.outputs["rejected"])
    return ctx, done


def in_window(taxi_rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in taxi_rows if "1356998400" <= r["trip_start_timestamp"] < "1372636800"][:3000]


def test_nine_impossible_rows_are_rejected_and_the_run_goes_on(tmp_path, taxi_rows):
    rows = in_window(taxi_rows)
    bad_lines = {}
    for offset, (column, value) in enumerate(IMPOSSIBLE):
        index = 100 + 37 * offset
        rows[index] = dict(rows[index], **{column: value})
        bad_lines[index + 2] = column  # line 1 is the header
    csv = write_csv(tmp_path / "nine_bad.csv", rows)

    _, done = validate_up_to(small_config(tmp_path), csv, "few-bad-rows")

    validated = done["validate"]
    assert validated.results["num_anomalies"] == 0
    rejected = validated.results["rejected"]
    assert rejected["ok"] and rejected["rows_judged"] == len(rows)
    assert rejected["rows_rejected"] == sum(done["clean"].results["rejected_by_reason"].values())
    assert "rows rejected" in validated.summary and "out_of_range" in validated.summary
    clean_dir = Path(done["clean"].outputs["rejected"].uri)
    lines = {r["line"]: r["feature"] for r in _records(clean_dir)}
    nulled = {"trip_miles"}  # on_invalid=NULL: the value goes, the row stays
    assert {line: column for line, column in bad_lines.items() if column not in nulled}.items() <= lines.items()
    cleaned_page = Path(validated.outputs["cleaned_statistics"].properties["report"])
    raw_page = Path(validated.outputs["statistics"].properties["report"])
    if browser.available():
        for page, title in ((cleaned_page, "Cleaned data statistics"), (raw_page, "Raw data statistics")):
            loaded = browser.load(page)
            assert title in loaded.dom and loaded.script_errors == "" and not loaded.console_errors
            assert loaded.images > 5 and loaded.decoded == loaded.images
        shown = browser.load(cleaned_page).dom
        assert "rows rejected" in shown and "out_of_range" in shown  # the rejected rows, above the features


def test_a_broken_feed_stops_at_validate_with_the_reason_counts_and_lines(tmp_path, taxi_rows):
    rows = [dict(r, fare="-" + r["fare"]) if i % 3 == 0 and r["fare"] and float(r["fare"]) > 0 else r
            for i, r in enumerate(in_window(taxi_rows))]
    first_bad_line = 2 + next(i for i, r in enumerate(rows) if r["fare"].startswith("-"))
    csv = write_csv(tmp_path / "broken.csv", rows)
    config = small_config(tmp_path)

    with pytest.raises(RejectedRowsError) as caught:
        validate_up_to(config, csv, "broken-feed")
    message = str(caught.value)
    assert "out_of_range" in message and "7.00% | over the limit" in message
    assert f"line {first_bad_line}: fare=-" in message  # examples of the rejected rows, with their lines
    assert "rejected" in message and "clean" in message  # where every rejected row is

    # A re-run reuses the recorded verdict and fails the same way: nothing is trained on the feed.
    with pytest.raises(RejectedRowsError) as again:
        validate_up_to(config, csv, "broken-feed-again")
    assert str(again.value).split("Every rejected row")[0] == message.split("Every rejected row")[0]


def test_the_limits_are_the_configs(tmp_path, taxi_rows):
    rows = [dict(r, fare="-" + r["fare"]) if i % 3 == 0 and r["fare"] else r for i, r in enumerate(in_window(taxi_rows))]
    csv = write_csv(tmp_path / "broken.csv", rows)
    config = small_config(tmp_path)
    lenient = config.replace(data=type(config.data)(**{**config.data.__dict__, "max_rejected_share": 0.5,
                                                       "max_rejected_share_by_reason": {"out_of_range": 0.5}}))
    _, done = validate_up_to(lenient, csv, "lenient")
    assert done["validate"].results["rejected"]["ok"]
    assert done["validate"].results["rejected"]["by_reason"]["out_of_range"]["share"] > 0.3


def _records(folder: Path) -> list[dict]:
    import json

    return [json.loads(line) for path in sorted(folder.rglob("rejected-*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]


def test_ones_own_csv_in_the_config_is_not_held_to_the_shipped_files_checksum(tmp_path, taxi_rows):
    own = write_csv(tmp_path / "my_trips.csv", in_window(taxi_rows)[:500])
    config = small_config(tmp_path)
    config = config.replace(data=type(config.data)(**{**config.data.__dict__, "csv_path": own}))
    ingested = steps.ingest(steps.open_run(config, "own-csv"), own, *SMALL_WINDOW)
    assert ingested.results["rows_read"] == 500


def test_a_modified_shipped_file_is_refused(tmp_path, taxi_rows, monkeypatch):
    shipped = tmp_path / "data" / "taxi" / "data.csv"
    shipped.parent.mkdir(parents=True)
    write_csv(shipped, taxi_rows[:-1])  # one row short: truncated
    # The project's own copy stays untouched: this copy stands in for it.
    monkeypatch.setattr(steps, "shipped_file", lambda name: shipped)
    config = small_config(tmp_path)
    config = config.replace(data=type(config.data)(**{**config.data.__dict__, "csv_path": shipped}))
    with pytest.raises(DataError, match="does not match the shipped data's") as refused:
        steps.ingest(steps.open_run(config, "truncated"), shipped, *SMALL_WINDOW)
    assert str(shipped) in str(refused.value) and "data.csv_path" in str(refused.value)


def test_a_folder_of_shards_is_one_dataset_reused_while_its_files_stay_the_same(tmp_path, taxi_rows):
    import shutil

    rows = in_window(taxi_rows)[:600]
    shards = tmp_path / "export"
    shards.mkdir()
    write_csv(shards / "part-1.csv", rows[:300])
    write_csv(shards / "part-2.csv", rows[300:], columns=sorted(rows[0], reverse=True))
    config = small_config(tmp_path)

    first = steps.ingest(steps.open_run(config, "shards"), shards, *SMALL_WINDOW)
    assert first.results["rows_read"] == 600 and not first.cached
    ctx = steps.open_run(config, "shards-registered")
    raw, rows_counted = steps.register_csv(ctx, shards)
    assert raw.uri == str(shards.resolve()) and rows_counted == 600
    assert raw.properties["files"] == ["part-1.csv", "part-2.csv"]

    # The same files elsewhere are the same data: the ingest is reused.
    moved = tmp_path / "moved"
    shutil.copytree(shards, moved)
    again = steps.ingest(steps.open_run(config, "shards-moved"), moved, *SMALL_WINDOW)
    assert again.cached and again.cached_from == first.execution_id

    # One file changed (a row fewer): another dataset, ingested again.
    write_csv(moved / "part-2.csv", rows[300:-1])
    changed = steps.ingest(steps.open_run(config, "shards-changed"), moved, *SMALL_WINDOW)
    assert not changed.cached and changed.results["rows_read"] == 599
    assert steps.register_csv(ctx, moved)[0].properties["sha256"] != raw.properties["sha256"]
