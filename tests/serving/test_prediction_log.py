"""The Parquet prediction log: layout and schema (the monitoring contract), flushing, back-pressure,
atomic files, retry after a failed write, and readers that name what is wrong."""

from __future__ import annotations

import datetime as dt
import math
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.errors import DataError
from serving import log_writer
from serving import prediction_log as plog
from serving.prediction_log import Feedback, LoggedRequest
from tests.fixtures.polling import poll_until
from transforms.features import SERVING_COLUMNS, SERVING_FEATURES, Kind

DAY_1 = dt.datetime(2016, 3, 1, 23, 59, 59, tzinfo=dt.timezone.utc)
DAY_2 = dt.datetime(2016, 3, 2, 0, 0, 1, tzinfo=dt.timezone.utc)


def _us(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def _instance(fare: float | None = 12.5, company: str | None = "Flash Cab") -> dict:
    values = {Kind.FLOAT: 1.5, Kind.INT: 7, Kind.STRING: "Cash"}
    row = {feature.name: values[feature.kind] for feature in SERVING_FEATURES}
    row.update(fare=fare, company=company)
    return row


def _columns(rows: list[dict]) -> dict[str, list]:
    return {feature.name: [row[feature.name] for row in rows] for feature in SERVING_FEATURES}


def _request(request_id: str, count: int, when: dt.datetime = DAY_1, **fields) -> LoggedRequest:
    values = dict(
        request_id=request_id, timestamp_us=_us(when), model_name="taxi", model_version=3, label="stable",
        policy="blue_green", automation="full", features=_columns([_instance() for _ in range(count)]),
        probabilities=[0.25] * count, classes=[0] * count, decisions=["not_big_tipper"] * count,
        latency_ms=1.5, status_code=200, is_shadow=False,
    )
    values.update(fields)
    return LoggedRequest(**values)


@pytest.fixture
def writer(tmp_path):
    writer = log_writer.open_request_log(tmp_path, capacity_rows=100, flush_rows=50, flush_seconds=60.0, retry_seconds=0.05)
    yield writer
    writer.close()


def test_rows_follow_the_architecture_schema_and_partitions(writer, tmp_path):
    assert writer.try_put(_request("r1", 3, DAY_1))
    assert writer.try_put(_request("r2", 2, DAY_2, features=_columns([_instance(fare=None, company=None), _instance()]),
                                   probabilities=[None, 0.9], classes=[None, 1], decisions=["refer_to_human", "big_tipper"],
                                   label="canary", model_version=4, is_shadow=True))
    writer.close()
    partitions = sorted(p.name for p in (tmp_path / "requests").iterdir())
    assert partitions == ["date=2016-03-01", "date=2016-03-02"]
    files = list((tmp_path / "requests").rglob("*.parquet"))
    assert all(f.name.startswith("part-") and len(f.stem.split("-")) == 3 for f in files)
    assert pq.read_schema(files[0]).names == plog.REQUEST_SCHEMA.names
    schema = pq.read_schema(files[0])
    assert schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert schema.field("instance_index").type == pa.int32() and schema.field("status_code").type == pa.int32()
    for feature in SERVING_FEATURES:
        expected = {Kind.FLOAT: pa.float64(), Kind.INT: pa.int64(), Kind.STRING: pa.string()}[feature.kind]
        assert schema.field(feature.name).type == expected, feature.name

    frame = plog.read_prediction_logs(tmp_path)
    assert frame["request_id"].tolist() == ["r1"] * 3 + ["r2"] * 2
    assert frame["instance_index"].tolist() == [0, 1, 2, 0, 1]
    assert frame["timestamp"].iloc[0] == DAY_1 and frame["timestamp"].iloc[4] == DAY_2
    shadow = frame[frame["request_id"] == "r2"]
    assert shadow["is_shadow"].all() and shadow["label"].tolist() == ["canary"] * 2
    assert math.isnan(shadow["fare"].iloc[0]) and shadow["company"].iloc[0] is None  # missing stays missing
    assert shadow["probability"].isna().tolist() == [True, False]
    assert shadow["predicted_class"].isna().tolist() == [True, False]
    assert list(frame.columns) == plog.REQUEST_SCHEMA.names
    assert set(SERVING_COLUMNS) <= set(frame.columns)


def test_reader_windows_filters_and_drops_shadow_rows(writer, tmp_path):
    writer.try_put(_request("a", 1, DAY_1))
    writer.try_put(_request("b", 1, DAY_2))
    writer.try_put(_request("c", 1, DAY_2, is_shadow=True))
    writer.try_put(_request("d", 1, DAY_2, model_name="other"))
    writer.flush()
    assert plog.read_prediction_logs(tmp_path, start=DAY_2)["request_id"].tolist() == ["b", "c", "d"]
    assert plog.read_prediction_logs(tmp_path, end=DAY_2)["request_id"].tolist() == ["a"]
    assert plog.read_prediction_logs(tmp_path, "2016-03-01", "2016-03-02")["request_id"].tolist() == ["a"]
    assert plog.read_prediction_logs(tmp_path, dt.date(2016, 3, 2), None, include_shadow=False,
                                     model_name="taxi")["request_id"].tolist() == ["b"]
    empty = plog.read_prediction_logs(tmp_path, start=dt.datetime(2020, 1, 1))
    assert len(empty) == 0 and list(empty.columns) == plog.REQUEST_SCHEMA.names
    assert len(plog.read_prediction_logs(tmp_path / "never-written")) == 0


def test_a_flush_happens_every_n_rows_and_after_t_seconds(tmp_path):
    by_rows = log_writer.open_request_log(tmp_path / "rows", capacity_rows=100, flush_rows=10, flush_seconds=3600.0)
    try:
        for index in range(4):
            by_rows.try_put(_request(f"r{index}", 3))  # the 4th brings 12 rows: over 10
        poll_until(lambda: by_rows.rows_written == 12, "12 rows written", interval=0.02)
        assert by_rows.files_written == 1
    finally:
        by_rows.close()
    by_time = log_writer.open_request_log(tmp_path / "time", capacity_rows=100, flush_rows=100, flush_seconds=0.2)
    try:
        by_time.try_put(_request("late", 1))
        poll_until(lambda: by_time.rows_written == 1, "the row written by time", interval=0.02)
    finally:
        by_time.close()


def test_a_full_queue_refuses_instead_of_dropping_and_close_writes_everything(tmp_path):
    writer = log_writer.open_request_log(tmp_path, capacity_rows=10, flush_rows=10, flush_seconds=3600.0)
    blocker = tmp_path / "requests" / "date=2016-03-01"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory")  # every write fails until it is removed
    try:
        assert writer.try_put(_request("a", 6))
        assert writer.try_put(_request("b", 4))  # 10 rows: full, and the writer cannot write them
        assert not writer.try_put(_request("c", 1))  # refused, so the caller waits (back-pressure)
        assert not writer.put(_request("c", 1), timeout=0.2)
        assert writer.pending_rows == 10
        poll_until(lambda: writer.write_failures >= 1, "a failed write", interval=0.02)
        blocker.unlink()  # the disk recovers: the kept rows are written on the next retry
        assert writer.put(_request("c", 1), timeout=30)
    finally:
        writer.close()
    frame = plog.read_prediction_logs(tmp_path)
    assert frame.groupby("request_id").size().to_dict() == {"a": 6, "b": 4, "c": 1}
    assert not [p for p in (tmp_path / "requests").rglob(".*")], "temp files left behind"
    with pytest.raises(log_writer.LogWriterClosed):
        writer.try_put(_request("d", 1))


def test_an_entry_larger_than_the_queue_still_gets_in_when_it_is_empty(tmp_path):
    writer = log_writer.open_request_log(tmp_path, capacity_rows=5, flush_rows=5, flush_seconds=3600.0)
    assert writer.try_put(_request("big", 8))
    writer.close()
    assert len(plog.read_prediction_logs(tmp_path)) == 8


def test_readers_skip_temp_files_and_name_broken_ones(writer, tmp_path):
    writer.try_put(_request("ok", 2))
    writer.flush()
    partition = tmp_path / "requests" / "date=2016-03-01"
    (partition / ".part-123-abcdef12.parquet.tmp").write_bytes(b"half a file")
    assert len(plog.read_prediction_logs(tmp_path)) == 2  # hidden temp files are not part of the log

    broken = partition / "part-1-deadbeef.parquet"
    broken.write_bytes(b"PAR1 garbage")
    with pytest.raises(DataError, match="part-1-deadbeef.parquet: not a readable Parquet file"):
        plog.read_prediction_logs(tmp_path)
    broken.unlink()

    good = next(partition.glob("part-*.parquet"))
    pq.write_table(pq.read_table(good).drop(["decision"]), partition / "part-2-deadbeef.parquet")
    with pytest.raises(DataError, match=r"part-2-deadbeef.parquet: missing columns \['decision'\]"):
        plog.read_prediction_logs(tmp_path)
    (partition / "part-2-deadbeef.parquet").unlink()

    shutil.copytree(partition, tmp_path / "requests" / "date=yesterday")
    with pytest.raises(DataError, match="date=yesterday: unexpected entry"):
        plog.read_prediction_logs(tmp_path)
    shutil.rmtree(tmp_path / "requests" / "date=yesterday")
    with pytest.raises(DataError, match="end .* must be after start"):
        plog.read_prediction_logs(tmp_path, start=DAY_2, end=DAY_1)
    with pytest.raises(DataError, match="ISO date"):
        plog.read_prediction_logs(tmp_path, start="last tuesday")


def test_feedback_rows_and_the_join(tmp_path):
    requests_log = log_writer.open_request_log(tmp_path)
    feedback_log = log_writer.open_feedback_log(tmp_path)
    requests_log.try_put(_request("r1", 2))
    requests_log.try_put(_request("r1", 2, is_shadow=True, label="shadow"))
    feedback_log.try_put(Feedback("r1", 1, _us(DAY_1), 0, None, "api"))
    feedback_log.try_put(Feedback("r1", 1, _us(DAY_2), 1, None, "audit"))  # a later correction wins
    feedback_log.try_put(Feedback("r1", 0, _us(DAY_2), None, "big_tipper", "reviewer"))
    requests_log.close()
    feedback_log.close()
    feedback = plog.read_feedback(tmp_path)
    assert feedback.columns.tolist() == plog.FEEDBACK_SCHEMA.names and len(feedback) == 3
    joined = plog.join_feedback(plog.read_prediction_logs(tmp_path), feedback).set_index("instance_index")
    assert len(joined) == 2  # shadow copies are not joined
    assert joined.loc[1, "ground_truth"] == 1 and joined.loc[1, "feedback_source"] == "audit"
    assert joined.loc[0, "human_decision"] == "big_tipper" and joined["ground_truth"].isna().loc[0]
