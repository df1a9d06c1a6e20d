"""Where a CSV input is: a file, or a folder holding one (TFX's CsvExampleGen takes a folder,
`input_base`, so a user coming from it points at the folder; the same setting works here).

A folder must hold exactly one CSV (plain or compressed, by its name): ingest reads one file, with
line numbers a user can open it at. Several are refused with their names rather than read in an
order the user did not choose.
"""

from __future__ import annotations

from pathlib import Path

from core.compressed import READABLE_SUFFIXES
from core.errors import DataError

CSV_SUFFIXES = (".csv", *(f".csv{suffix}" for suffix in READABLE_SUFFIXES))


def csv_file(path: Path | str) -> Path:
    """`path` when it is a file; the one CSV file inside when it is a folder (its hidden files and
    files of other kinds left aside). DataError naming what was found otherwise."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (expected a CSV of taxi trips, or a folder holding one)")
    if not path.is_dir():
        raise DataError(f"{path}: not a regular file or a folder (expected a CSV of taxi trips)")
    entries = sorted(entry for entry in path.iterdir() if not entry.name.startswith("."))
    found = [entry for entry in entries if entry.is_file() and entry.name.lower().endswith(CSV_SUFFIXES)]
    if len(found) == 1:
        return found[0]
    if not found:
        seen = ", ".join(entry.name for entry in entries[:10]) or "nothing"
        raise DataError(f"{path}: a folder without a CSV file (looked for names ending in {', '.join(CSV_SUFFIXES)}; "
                        f"found: {seen})")
    names = ", ".join(entry.name for entry in found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
    raise DataError(f"{path}: a folder with {len(found)} CSV files ({names}); ingest reads one file: name the one "
                    f"to read, or join them into one (with a single header row)")
