"""Where a row came from when the input is several CSV files: one int64, its file and its line.

An example's `__source_line` (example_codec.SOURCE_LINE_KEY) is the 1-based line in its CSV. When
the input is a folder of files, the file's index (in name order) is kept above bit 40, so the
number still orders rows as the files are read (first file first), which is what the dedupe keeps
by, and a lone file's lines are the plain line numbers they always were. `SourceFiles` turns such a
number back into what a person looks up: the file's name and the line in it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from core.atomic import write_json

# Beside the splits of examples read from several files: their names, in the order of their indexes.
SOURCE_FILES_FILE = "source_files.json"
# 2^40 lines a file (a terabyte of one-byte lines) and 2^23 files fit an int64.
FILE_SHIFT = 40
_LINE_MASK = (1 << FILE_SHIFT) - 1
_MAX_FILES = 1 << (63 - FILE_SHIFT)


def source_line(file_index: int, line: int) -> int:
    """The number of `line` (1-based) of the input's `file_index`-th file."""
    if not 0 <= line <= _LINE_MASK:
        raise ValueError(f"line {line} is beyond the {_LINE_MASK} lines a file can have")
    if not 0 <= file_index < _MAX_FILES:
        raise ValueError(f"file #{file_index + 1} is beyond the {_MAX_FILES} files an input can have")
    return (file_index << FILE_SHIFT) | line


def file_and_line(number: int) -> tuple[int, int]:
    """(file index, 1-based line in that file) of a source line number."""
    return number >> FILE_SHIFT, number & _LINE_MASK


def line_in(file: str | None, line: int) -> str:
    """"line 17", or "part-2.csv line 17" when the input was several files (`file` given)."""
    return f"{file} line {line}" if file else f"line {line}"


class SourceFiles:
    """The input's file names in the order they were read, to name a source line.

    With one file (or none given), a line is its number, as always; with several, the file's name
    comes with the line in that file."""

    def __init__(self, names: Sequence[str] = ()) -> None:
        self.names = tuple(names)

    @classmethod
    def of_paths(cls, paths: Sequence[str | Path]) -> "SourceFiles":
        """The files' names (what rejected records show), from their paths in reading order."""
        return cls([Path(path).name for path in paths])

    @property
    def several(self) -> bool:
        return len(self.names) > 1

    def place(self, number: int | None) -> dict[str, Any]:
        """The fields of a rejected record that say where its row was: {"line": n}, or with several
        files {"file": name, "line": n in that file}."""
        if number is None or not self.several:
            return {"line": number}
        index, line = file_and_line(number)
        return {"file": self._name(index), "line": line}

    def where(self, number: int) -> str:
        """"line 17", or "part-2.csv line 17" with several files."""
        place = self.place(number)
        return line_in(place.get("file"), place["line"])

    def _name(self, index: int) -> str:
        # A number from elsewhere (a record written before the input changed) still reads.
        return self.names[index] if index < len(self.names) else f"file #{index + 1}"


def write_source_files(examples_dir: Path, names: Sequence[str]) -> None:
    """Keeps the names beside the examples when there are several, for the jobs that read them."""
    if len(names) > 1:
        Path(examples_dir).mkdir(parents=True, exist_ok=True)
        write_json(Path(examples_dir) / SOURCE_FILES_FILE, list(names))


def read_source_files(examples_dir: Path | str) -> tuple[str, ...]:
    """The names write_source_files kept beside the examples, or () for examples of one file."""
    path = Path(examples_dir) / SOURCE_FILES_FILE
    if not path.is_file():
        return ()
    names = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"{path}: expected a JSON list of file names, got {names!r}")
    return tuple(names)
