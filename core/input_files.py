"""Where a CSV input is: a file, or a folder of CSV files (TFX's CsvExampleGen takes a folder,
`input_base`, so a user coming from it points at the folder; the same setting works here).

A folder's CSV files (plain or compressed, by their names; hidden files, sub-folders and files of
other kinds left aside) are read in the order of their names, each with its own header, as one
input: a city's export comes in shards. A rejected line (and a batch prediction) is then named by
its file and its line in that file (beam_jobs/source_lines.py).
"""

from __future__ import annotations

from pathlib import Path

from core.compressed import READABLE_SUFFIXES
from core.errors import DataError

CSV_SUFFIXES = (".csv", *(f".csv{suffix}" for suffix in READABLE_SUFFIXES))


def csv_files(path: Path | str) -> tuple[Path, ...]:
    """(`path`,) when it is a file; the CSV files inside, in name order, when it is a folder.
    DataError naming what was found when there is no CSV."""
    path = Path(path)
    if path.is_file():
        return (path,)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (expected a CSV of taxi trips, or a folder of them)")
    if not path.is_dir():
        raise DataError(f"{path}: not a regular file or a folder (expected a CSV of taxi trips)")
    entries = sorted(entry for entry in path.iterdir() if not entry.name.startswith("."))
    found = tuple(entry for entry in entries if entry.is_file() and entry.name.lower().endswith(CSV_SUFFIXES))
    if not found:
        seen = ", ".join(entry.name for entry in entries[:10]) or "nothing"
        raise DataError(f"{path}: a folder without a CSV file (looked for names ending in {', '.join(CSV_SUFFIXES)}; "
                        f"found: {seen})")
    return found

