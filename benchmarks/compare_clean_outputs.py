"""Are two clean runs' outputs the same? (docs/SCALE.md, "Clean in flat memory")

    python benchmarks/compare_clean_outputs.py OLD_CLEAN_DIR NEW_CLEAN_DIR

Compares, per split, the multiset of cleaned Examples (every feature's name, kind and values:
files, their order and the Examples' bytes may differ), the multiset of rejected records (parsed
JSON), and clean_result.json. Exit status 0 when all are equal.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import tensorflow as tf

from beam_jobs.example_codec import SPLITS, split_dir, split_pattern


def cleaned_examples(root: Path, split: str) -> tuple[collections.Counter, int]:
    files = sorted(tf.io.gfile.glob(split_pattern(root / "cleaned", split)))
    examples: collections.Counter = collections.Counter()
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(8192):
        for record in batch.numpy():
            stored = tf.train.Example.FromString(record).features.feature
            key = []
            for name, feature in stored.items():
                kind = feature.WhichOneof("kind")
                key.append((name, kind, tuple(getattr(feature, kind).value) if kind else ()))
            examples[tuple(sorted(key))] += 1
    return examples, len(files)


def rejected_records(root: Path, split: str) -> collections.Counter:
    records: collections.Counter = collections.Counter()
    for path in sorted(split_dir(root / "rejected", split).glob("rejected-*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            records.update(json.dumps(json.loads(line), sort_keys=True) for line in lines if line.strip())
    return records


def main(old: Path, new: Path) -> bool:
    equal = True
    for split in SPLITS:
        (old_rows, old_files), (new_rows, new_files) = cleaned_examples(old, split), cleaned_examples(new, split)
        same = old_rows == new_rows
        print(f"{split}: cleaned old {sum(old_rows.values())} rows ({old_files} files), "
              f"new {sum(new_rows.values())} rows ({new_files} files): {'same multiset' if same else 'DIFFERENT'}")
        old_rejected, new_rejected = rejected_records(old, split), rejected_records(new, split)
        same_rejected = old_rejected == new_rejected
        print(f"{split}: rejected old {sum(old_rejected.values())}, new {sum(new_rejected.values())}: "
              f"{'same' if same_rejected else 'DIFFERENT'}")
        equal &= same and same_rejected
    old_result, new_result = (json.loads((root / "clean_result.json").read_text()) for root in (old, new))
    print("clean_result.json", "same" if old_result == new_result else f"DIFFERENT: {old_result} vs {new_result}")
    equal &= old_result == new_result
    print("ALL EQUAL" if equal else "NOT EQUAL")
    return equal


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(0 if main(Path(sys.argv[1]), Path(sys.argv[2])) else 1)
