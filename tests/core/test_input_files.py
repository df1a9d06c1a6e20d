"""A CSV input named by its file or by the folder holding it (as TFX's CsvExampleGen input_base)."""

from __future__ import annotations

import pytest

from core.errors import DataError
from core.input_files import csv_files


def test_a_file_is_itself(tmp_path):
    trips = tmp_path / "trips.tsv"  # a file is read whatever its name: the header decides
    trips.write_text("a,b\n1,2\n")
    assert csv_files(trips) == (trips,)
    assert csv_files(str(trips)) == (trips,)


@pytest.mark.parametrize("name", ["data.csv", "trips.CSV", "trips.csv.gz", "trips.csv.bz2", "trips.csv.xz"])
def test_a_folder_holding_one_csv_is_that_csv(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    (tmp_path / "README.md").write_text("exported on Monday\n")
    (tmp_path / ".trips.csv.swp").write_bytes(b"")  # an editor's, hidden
    (tmp_path / "old.csv").mkdir()  # a folder, whatever its name
    assert csv_files(tmp_path) == (tmp_path / name,)


def test_a_folder_with_several_csvs_is_read_in_name_order(tmp_path):
    for name in ("part-2.csv", "part-10.csv", "part-1.csv.gz", "notes.txt", ".part-3.csv"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "part-0.csv").write_bytes(b"")  # in a sub-folder: not read
    assert csv_files(tmp_path) == tuple(tmp_path / name for name in ("part-1.csv.gz", "part-10.csv", "part-2.csv"))
    assert csv_files(tmp_path / "part-2.csv") == (tmp_path / "part-2.csv",)


def test_a_folder_without_a_csv_says_what_it_holds(tmp_path):
    (tmp_path / "trips.parquet").write_bytes(b"")
    message = str(pytest.raises(DataError, csv_files, tmp_path).value)
    assert "without a CSV file" in message and "trips.parquet" in message and ".csv.gz" in message
    message = str(pytest.raises(DataError, csv_files, tmp_path / "empty").value)
    assert "no such file or folder" in message


def test_what_is_neither_a_file_nor_a_folder_is_refused(tmp_path):
    import os

    fifo = tmp_path / "trips.csv"
    os.mkfifo(fifo)
    assert "not a regular file or a folder" in str(pytest.raises(DataError, csv_files, fifo).value)
