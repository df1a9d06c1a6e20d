"""The rejected rows a failed run's report quotes: the first ones by where they came from (file,
then line, as the input was read), whatever the order of the records and however many there are."""

from __future__ import annotations

import json
import random
from pathlib import Path

from validation.rejected import EXAMPLES_PER_REASON, describe, judge_rejected_shares, with_examples


def _write(folder: Path, records: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(3):  # the records spread over shards, as Beam writes them
        part = records[index::3]
        (folder / f"rejected-0000{index}-of-00003.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))


def _failed(records: int) -> object:
    return judge_rejected_shares(records * 2, {"out_of_range": records}, max_share=0.01, max_share_by_reason={})


def test_the_first_lines_of_the_first_files_are_quoted(tmp_path):
    records = [{"file": f"part-{file}.csv", "line": line, "reason": "out_of_range", "detail": "fare=-4"}
               for file in (2, 1, 3) for line in range(40, 1, -1)]
    random.Random(3).shuffle(records)
    _write(tmp_path / "clean", records)

    quoted = with_examples(_failed(len(records)), [tmp_path / "clean"]).examples["out_of_range"]

    assert len(quoted) == EXAMPLES_PER_REASON
    assert [(r["file"], r["line"]) for r in quoted] == [("part-1.csv", 2), ("part-1.csv", 3), ("part-1.csv", 4)]
    assert describe(quoted[0]) == "part-1.csv line 2: fare=-4"


def test_one_files_lines_are_quoted_by_number_and_a_record_without_a_line_last(tmp_path):
    records = [{"line": line, "reason": "out_of_range", "detail": "fare=-4"} for line in (90, 7, 300, 12)]
    records.append({"line": None, "reason": "out_of_range", "detail": "not a tf.Example"})
    _write(tmp_path / "ingest", records[:2])
    _write(tmp_path / "clean", records[2:])

    quoted = with_examples(_failed(5), [tmp_path / "ingest", tmp_path / "clean"]).examples["out_of_range"]

    assert [r["line"] for r in quoted] == [7, 12, 90]
    assert describe(quoted[0]) == "line 7: fare=-4"
    assert describe(records[-1]) == "a record: not a tf.Example"
