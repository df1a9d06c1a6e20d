"""How many rows the run rejected, and whether that is a few bad rows or a broken feed.

Ingest and clean reject rows one by one, each with a reason, and the run goes on: one bad row in a
daily feed should not stop the day's model. A feed that is mostly broken should, so validation
compares the share of rejected rows, per reason and overall, with limits from the config
(`[data] max_rejected_share` and `max_rejected_share_by_reason`) and fails the run above them, with
a report that says which reason, how many rows, and shows some of them.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from beam_jobs.source_lines import line_in

# How many rejected rows the report quotes per reason that is over its limit.
EXAMPLES_PER_REASON = 3


@dataclasses.dataclass(frozen=True)
class ReasonShare:
    reason: str
    rows: int
    share: float  # of the rows judged
    limit: float | None  # None: only the overall limit applies

    @property
    def exceeded(self) -> bool:
        return self.limit is not None and self.share > self.limit


@dataclasses.dataclass(frozen=True)
class RejectedShares:
    """The rejected rows of a run against their limits."""

    rows_judged: int  # rows that reached a verdict: in the window or unreadable (their window is unknown)
    rows_rejected: int
    limit: float  # on all reasons together
    by_reason: tuple[ReasonShare, ...]
    examples: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)  # reason -> rejected records

    @property
    def share(self) -> float:
        return self.rows_rejected / self.rows_judged if self.rows_judged else 0.0

    @property
    def overall_exceeded(self) -> bool:
        return self.share > self.limit

    @property
    def ok(self) -> bool:
        return not self.overall_exceeded and not any(reason.exceeded for reason in self.by_reason)

    def to_json(self) -> dict[str, Any]:
        return {
            "rows_judged": self.rows_judged, "rows_rejected": self.rows_rejected, "share": round(self.share, 6),
            "limit": self.limit, "ok": self.ok,
            "by_reason": {r.reason: {"rows": r.rows, "share": round(r.share, 6), "limit": r.limit, "exceeded": r.exceeded}
                          for r in self.by_reason},
        }

    def format(self) -> str:
        """A plain-text table, one line per reason, with examples of the reasons over their limit."""
        lines = [f"{self.rows_rejected} of {self.rows_judged} rows rejected ({self.share:.2%}; limit {self.limit:.2%})"
                 f" -> {'ok' if self.ok else 'TOO MANY'}"]
        if self.by_reason:
            width = max(len("reason"), *(len(r.reason) for r in self.by_reason))
            lines.append(f"{'reason':<{width}} | {'rows':>8} | {'share':>7} | {'limit':>7} | verdict")
            for r in self.by_reason:
                limit = f"{r.limit:.2%}" if r.limit is not None else "-"
                lines.append(f"{r.reason:<{width}} | {r.rows:>8} | {r.share:>7.2%} | {limit:>7} | "
                             f"{'over the limit' if r.exceeded else 'ok'}")
        for reason, records in self.examples.items():
            lines.append(f"e.g. {reason}:")
            lines.extend(f"  {describe(record)}" for record in records)
        return "\n".join(lines) + "\n"


def describe(record: Mapping[str, Any]) -> str:
    """One rejected record as people read it: where it came from and why."""
    where = line_in(record.get("file"), record["line"]) if record.get("line") is not None else "a record"
    return f"{where}: {record.get('detail') or record.get('reason')}"


def judge_rejected_shares(
    rows_judged: int,
    rejected_by_reason: Mapping[str, int],
    *,
    max_share: float,
    max_share_by_reason: Mapping[str, float],
) -> RejectedShares:
    """The shares of `rows_judged` rejected per reason and overall, against their limits."""
    if rows_judged < 0 or any(count < 0 for count in rejected_by_reason.values()):
        raise ValueError(f"row counts cannot be negative: {rows_judged}, {dict(rejected_by_reason)}")
    rejected = sum(rejected_by_reason.values())
    if rejected > rows_judged:
        raise ValueError(f"{rejected} rows rejected of only {rows_judged} judged")
    by_reason = tuple(
        ReasonShare(reason, count, count / rows_judged if rows_judged else 0.0, max_share_by_reason.get(reason))
        for reason, count in sorted(rejected_by_reason.items()) if count
    )
    return RejectedShares(rows_judged, rejected, max_share, by_reason)


def with_examples(shares: RejectedShares, rejected_dirs: Sequence[Path]) -> RejectedShares:
    """The shares with the rejected records of the smallest line numbers for every reason over its limit
    (or every reason when only the overall limit is passed), from the rejected-*.jsonl files below
    `rejected_dirs`. Only done for a failed run; it holds a few records per reason, however many there are."""
    if shares.ok:
        return shares
    wanted = {r.reason for r in shares.by_reason if r.exceeded} or {r.reason for r in shares.by_reason}
    smallest: dict[str, list[tuple[tuple[str, int, int], dict[str, Any]]]] = {reason: [] for reason in sorted(wanted)}
    for order, record in enumerate(_records(rejected_dirs)):
        found = smallest.get(record.get("reason"))
        if found is None:
            continue
        line = record.get("line")
        # By file (several files are read in name order), then line; a record without a line last.
        bisect.insort(found, ((record.get("file") or "", line if line is not None else 1 << 62, order), record),
                      key=lambda entry: entry[0])
        del found[EXAMPLES_PER_REASON:]  # the smallest, in order
    examples = {reason: [record for _, record in found] for reason, found in smallest.items() if found}
    return dataclasses.replace(shares, examples=examples)


def _records(rejected_dirs: Iterable[Path]) -> Iterator[dict[str, Any]]:
    for directory in rejected_dirs:
        for path in sorted(Path(directory).rglob("rejected-*.jsonl")):
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        yield json.loads(line)
