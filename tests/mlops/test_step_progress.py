"""The pipeline's `[n/7]` lines: the time the run waited for a step, and the step's own beside it
when they differ (a step in a process of its own, transform waiting for its job beside validation)."""

from __future__ import annotations

import re
import time

from mlops.pipeline import StepProgress
from mlops.step_context import StepOutcome


def outcome(seconds: float, cached: bool = False) -> StepOutcome:
    return StepOutcome("transform", {}, {}, cached, 7, seconds, "transformed rows {'train': 3}")


def test_a_step_that_waited_says_both_times():
    lines: list[str] = []
    tracker = StepProgress(lines.append)
    started = tracker.start("transform")
    tracker.done(outcome(0.5), started - 22.0)
    assert lines[0] == "[1/7] transform running ..."
    assert lines[1].startswith("[1/7] transform done in 22.") and lines[1].endswith(
        "s (0.5s in the step): transformed rows {'train': 3}"), lines[1]


def test_a_step_that_did_not_wait_says_one_time():
    lines: list[str] = []
    tracker = StepProgress(lines.append)
    tracker.start("transform")
    tracker.done(outcome(3.0, cached=True), time.time() - 3.2)
    assert re.fullmatch(r"\[1/7\] transform reused in 3\.\ds: transformed rows \{'train': 3\}", lines[1]), lines[1]
