"""`transforms/synth.py`: seeded, duplicate-free, parseable rows with the sample's distributions."""

from __future__ import annotations

import csv
import gzip
import statistics
from pathlib import Path

import pytest

from core.errors import DataError
from mlops.cli import main
from transforms import features
from transforms.synth import read_csv_rows, write_synth_csv

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "taxi" / "data.csv"
ROWS = 20_000


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synth_csv(SAMPLE, tmp_path_factory.mktemp("synth") / "big.csv", ROWS, seed=7).path


def _values(rows, name: str) -> list[float]:
    return [float(row[name]) for row in rows if row[name] != ""]


def test_n_rows_with_the_taxi_header(synthetic: Path) -> None:
    with open(synthetic, newline="") as handle:
        reader = csv.reader(handle)
        assert tuple(next(reader)) == features.RAW_COLUMNS
        assert sum(1 for _ in reader) == ROWS


def test_no_row_is_an_exact_copy_of_another(synthetic: Path) -> None:
    lines = synthetic.read_text().splitlines()[1:]
    assert len(set(lines)) == len(lines) == ROWS


def test_every_cell_parses_as_its_feature(synthetic: Path) -> None:
    for row in read_csv_rows(synthetic):
        for feature in features.RAW_FEATURES:
            features.parse_value(feature, row[feature.name])  # raises ValueError on a bad cell


def test_distributions_stay_close_to_the_sample(synthetic: Path) -> None:
    sample, made = list(read_csv_rows(SAMPLE)), list(read_csv_rows(synthetic))
    for name in (features.FARE_KEY, features.TIPS_KEY, features.TRIP_MILES_KEY, features.TRIP_SECONDS_KEY,
                 features.HOUR_KEY, features.PICKUP_COORDINATES[0]):
        # Medians closely; means loosely: a few 100-mile trips drawn more or less often move them.
        assert statistics.median(_values(made, name)) == pytest.approx(statistics.median(_values(sample, name)), rel=0.05), name
        assert statistics.fmean(_values(made, name)) == pytest.approx(statistics.fmean(_values(sample, name)), rel=0.1), name

    def label_rate(rows) -> float:
        return statistics.fmean(features.is_big_tipper(float(r["tips"]), float(r["fare"])) for r in rows)

    assert label_rate(made) == pytest.approx(label_rate(sample), abs=0.01)

    def missing_share(rows, name: str) -> float:
        return statistics.fmean(row[name] == "" for row in rows)

    for name in (features.COMPANY_KEY, features.PICKUP_COORDINATES[0], "dropoff_community_area"):
        assert missing_share(made, name) == pytest.approx(missing_share(sample, name), abs=0.01), name
    payment_types = {row[features.PAYMENT_TYPE_KEY] for row in made}
    assert payment_types <= {row[features.PAYMENT_TYPE_KEY] for row in sample}
    assert len(payment_types) >= 3


def test_timestamps_keep_the_rows_hour_and_weekday(synthetic: Path) -> None:
    import datetime as dt

    sample_hours = {int(r["trip_start_timestamp"]) // 3600 % 168 for r in read_csv_rows(SAMPLE)}
    for row in read_csv_rows(synthetic):
        # Moved by whole weeks at most: the hour of the week is one the sample has.
        assert int(row["trip_start_timestamp"]) // 3600 % 168 in sample_hours
        assert dt.datetime(2013, 1, 1, tzinfo=dt.timezone.utc).timestamp() <= int(row["trip_start_timestamp"])


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = write_synth_csv(SAMPLE, tmp_path / "a.csv.gz", 3000, seed=3).path.read_bytes()
    again = write_synth_csv(SAMPLE, tmp_path / "b.csv.gz", 3000, seed=3).path.read_bytes()
    other = write_synth_csv(SAMPLE, tmp_path / "c.csv.gz", 3000, seed=4).path.read_bytes()
    assert first == again != other
    assert gzip.decompress(first).decode().count("\n") == 3001


def test_a_sample_without_the_columns_is_a_data_error_naming_them(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("fare,tips\n1,2\n")
    with pytest.raises(DataError, match="trip_start_timestamp"):
        write_synth_csv(bad, tmp_path / "out.csv", 10)
    assert not (tmp_path / "out.csv").exists()


def test_the_cli_writes_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.csv"
    assert main(["data", "synth", "--rows", "50", "--out", str(out), "--seed", "1", "--sample", str(SAMPLE)]) == 0
    assert out.read_text().count("\n") == 51
    assert "wrote 50 rows" in capsys.readouterr().out
