"""Records stored in protobuf's deterministic form: a row's content taken from its bytes, checked.

Clean needs each row's content (dedupe.content_bytes: its Example without the source line, in
protobuf's deterministic form, map entries sorted by key): to digest it, twice (the second read
that counts copies, and the first), and to write the rows it keeps. Parsing a record and
serializing it again costs ~8 us a row in Python. Ingest already writes every record in that form
(example_codec.RowEncoder), so per batch, from the Arrow columns the batch decoder made of it, each
row's deterministic serialization is rebuilt (beam_jobs/example_wire.py: numpy and Arrow kernels)
and compared with the stored bytes. Where the two are equal the record holds exactly those
features with those values, nothing unknown, empty or encoded otherwise; its content is then the
same rebuild without the source line's entry.

Every other row gets None and the caller parses it as before: a record another writer made (other
key order, other encodings), a feature with no value or several, a text of 124 bytes or more, a
feature stored as another kind, a batch the decoder refuses.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_jobs.example_codec import SOURCE_LINE_KEY
from beam_jobs.example_decoder import ExampleBatchDecoder
from beam_jobs.example_wire import ExampleWire, binary_values
from transforms.features import Kind

_MOST_SKIPPED = 63


class CanonicalContents:
    """`contents(records)`: per record, its content bytes when it is stored in the deterministic
    form of what it holds (see the module docstring), else None. `kinds`: the features a record may
    hold, and the kind each must be stored as (the source line an int among them)."""

    def __init__(self, kinds: Mapping[str, Kind], left_out: str = SOURCE_LINE_KEY) -> None:
        self._kinds = dict(kinds)
        self._left_out = left_out
        self._wire = ExampleWire(self._kinds)
        self._decoder: ExampleBatchDecoder | None = None
        # Records of another writer fail the check in every batch: after a batch with none in the
        # form, the next 1, 3, 7 ... 63 batches are not rebuilt (their rows are parsed, as any
        # other), then one is tried again.
        self._misses = 0
        self._skipped = 0

    def __getstate__(self) -> dict[str, Any]:
        # The decoder is made where the contents are taken (a worker), not pickled with a DoFn.
        return {**self.__dict__, "_decoder": None}

    def contents(self, records: Sequence[bytes], batch: pa.RecordBatch | None = None) -> list[bytes | None]:
        """`batch`: the records as ExampleBatchDecoder.for_features(kinds) decodes them, when the
        caller has it; otherwise they are decoded here."""
        if self._skipped:
            self._skipped -= 1
            return [None] * len(records)
        contents = self._contents(records, batch)
        if any(content is not None for content in contents):
            self._misses = 0
        elif records:
            self._misses += 1
            self._skipped = min(2 ** self._misses, _MOST_SKIPPED + 1) - 1
        return contents

    def _contents(self, records: Sequence[bytes], batch: pa.RecordBatch | None) -> list[bytes | None]:
        if batch is None:
            if self._decoder is None:
                self._decoder = ExampleBatchDecoder.for_features(self._kinds)
            try:
                batch = self._decoder.decode(records)
            except RuntimeError:  # bytes that are no Example, a feature stored as two kinds
                return [None] * len(records)
        if batch.num_columns == 0:  # no record holds a feature it knows
            return [None] * len(records)
        entries = self._wire.entries(batch)
        rebuilt, _ = self._wire.examples(entries)
        contents, content_sizes = self._wire.examples(entries, left_out=self._left_out)
        # A row without features (or with the source line only) is left to the caller: protobuf
        # writes an Example whose features were set, then emptied, as two bytes, not none.
        same = entries.makeable & (content_sizes > 0)
        same &= pc.equal(rebuilt, pa.array(records, type=pa.large_binary())).fill_null(False).to_numpy(
            zero_copy_only=False)
        answer: list[bytes | None] = [None] * len(records)
        for row, content in zip(np.flatnonzero(same).tolist(), binary_values(contents.filter(pa.array(same)))):
            answer[row] = content
        return answer
