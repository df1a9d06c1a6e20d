"""Merging concurrent requests into model-server calls: who waits, what is merged, who gets which answer and which error.

The upstream here is a plain coroutine that holds its calls until the test lets them go, so the
test decides exactly what is in flight; the gateway-level test against the real model server is
in tests/serving/gateway/test_upstream_merging.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serving.gateway.upstream_batching import UpstreamBatcher


class RequestRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HeldUpstream:
    """Answers each example with its own `id` (probability) and `id % 2` (class), once the test releases the call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None, list[int]]] = []
        self.gates: list[asyncio.Event] = []
        self.refuse_ids: set[int] = set()
        self.fail_all: Exception | None = None

    async def predict(self, model: str, version: int | None, columns: dict[str, list[Any]]) -> tuple[list[Any], list[Any]]:
        assert len(columns["id"]) == len(columns["twice"]), "every column of a merged call is as long"
        assert columns["twice"] == [2 * i for i in columns["id"]], "columns stay aligned when merged"
        ids = list(columns["id"])
        self.calls.append((model, version, ids))
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if self.fail_all is not None:
            raise self.fail_all
        bad = self.refuse_ids.intersection(ids)
        if bad:
            raise RequestRefused(400, f"row {min(bad)} is bad")
        return [float(i) for i in ids], [i % 2 for i in ids]

    def release_all(self) -> None:
        for gate in self.gates:
            gate.set()


def rows(*ids: int) -> dict[str, list[Any]]:
    """Examples with these ids, as the batcher takes them: columns."""
    return {"id": list(ids), "twice": [2 * i for i in ids]}


def make(upstream: HeldUpstream, *, max_in_flight: int = 1, max_batch_rows: int = 100, seen: list[int] | None = None) -> UpstreamBatcher:
    return UpstreamBatcher(upstream.predict, max_in_flight=max_in_flight, max_batch_rows=max_batch_rows,
                           is_request_error=lambda err: getattr(err, "status", 0) == 400,
                           observe=seen.append if seen is not None else None)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def occupy(batcher: UpstreamBatcher, first_id: int = 1) -> asyncio.Task:
    """Sends one request and lets it reach the (held) model server: its lane is busy from now on."""
    first = asyncio.create_task(batcher.predict("taxi", 1, rows(first_id)))
    await settle()
    return first


async def release_until_done(upstream: HeldUpstream, tasks: list[asyncio.Task]) -> None:
    while not all(task.done() for task in tasks):
        upstream.release_all()
        await settle()


def test_a_lone_request_goes_at_once_and_alone():
    async def scenario() -> None:
        upstream = HeldUpstream()
        seen: list[int] = []
        batcher = make(upstream, seen=seen)
        task = asyncio.create_task(batcher.predict("taxi", 1, rows(7, 8)))
        await settle()
        assert upstream.calls == [("taxi", 1, [7, 8])]  # sent before anything was released: no waiting
        upstream.release_all()
        assert await task == ([7.0, 8.0], [1, 0])
        assert seen == [1]
        assert batcher.waiting == 0

    asyncio.run(scenario())


def test_requests_that_arrive_while_the_model_server_is_busy_go_out_as_one_call_and_each_gets_its_own_rows():
    async def scenario() -> None:
        upstream = HeldUpstream()
        seen: list[int] = []
        batcher = make(upstream, max_in_flight=1, seen=seen)
        first = await occupy(batcher)
        queued = [asyncio.create_task(batcher.predict("taxi", 1, rows(*ids))) for ids in ([2, 3], [4], [5, 6, 7])]
        await settle()
        assert len(upstream.calls) == 1 and batcher.waiting == 3
        await release_until_done(upstream, [first, *queued])
        assert upstream.calls == [("taxi", 1, [1]), ("taxi", 1, [2, 3, 4, 5, 6, 7])]
        assert await first == ([1.0], [1])
        assert [await task for task in queued] == [([2.0, 3.0], [0, 1]), ([4.0], [0]), ([5.0, 6.0, 7.0], [1, 0, 1])]
        assert seen == [1, 3]
        assert batcher.waiting == 0

    asyncio.run(scenario())


def test_a_merged_call_never_exceeds_max_batch_rows_but_a_larger_request_still_goes_alone():
    async def scenario() -> None:
        upstream = HeldUpstream()
        batcher = make(upstream, max_in_flight=1, max_batch_rows=4)
        first = await occupy(batcher, 0)
        sizes = {10: 2, 20: 2, 30: 1, 40: 6, 50: 1}
        queued = [asyncio.create_task(batcher.predict("taxi", 1, rows(*range(start, start + n)))) for start, n in sizes.items()]
        await settle()
        await release_until_done(upstream, [first, *queued])
        assert [ids for _, _, ids in upstream.calls] == [[0], [10, 11, 20, 21], [30], [40, 41, 42, 43, 44, 45], [50]]
        for task, (start, n) in zip(queued, sizes.items()):
            assert (await task)[0] == [float(i) for i in range(start, start + n)]

    asyncio.run(scenario())


def test_up_to_max_in_flight_calls_go_in_parallel_before_anything_waits():
    async def scenario() -> None:
        upstream = HeldUpstream()
        batcher = make(upstream, max_in_flight=2)
        tasks = [asyncio.create_task(batcher.predict("taxi", 1, rows(i))) for i in range(5)]
        await settle()
        assert [ids for _, _, ids in upstream.calls] == [[0], [1]]
        assert batcher.waiting == 3
        await release_until_done(upstream, tasks)
        assert sorted(i for _, _, ids in upstream.calls for i in ids) == [0, 1, 2, 3, 4]
        assert len(upstream.calls) <= 4  # the three that waited went out in at most two calls
        assert [(await task)[0] for task in tasks] == [[float(i)] for i in range(5)]

    asyncio.run(scenario())


def test_each_model_version_has_its_own_lane():
    async def scenario() -> None:
        upstream = HeldUpstream()
        batcher = make(upstream, max_in_flight=1)
        tasks = [asyncio.create_task(batcher.predict("taxi", version, rows(i))) for i, version in enumerate((1, 2, None), 1)]
        tasks.append(asyncio.create_task(batcher.predict("other", 1, rows(9))))
        await settle()
        # Nothing waits: every (model, version) had a free slot, and nothing was merged across them.
        assert sorted((m, str(v), ids) for m, v, ids in upstream.calls) == [
            ("other", "1", [9]), ("taxi", "1", [1]), ("taxi", "2", [2]), ("taxi", "None", [3])]
        await release_until_done(upstream, tasks)

    asyncio.run(scenario())


def test_a_refused_merged_call_is_retried_one_request_at_a_time_so_only_the_bad_request_fails():
    async def scenario() -> None:
        upstream = HeldUpstream()
        upstream.refuse_ids = {5}
        seen: list[int] = []
        batcher = make(upstream, max_in_flight=1, seen=seen)
        first = await occupy(batcher)
        good_before = asyncio.create_task(batcher.predict("taxi", 1, rows(2, 3)))
        bad = asyncio.create_task(batcher.predict("taxi", 1, rows(4, 5)))
        good_after = asyncio.create_task(batcher.predict("taxi", 1, rows(6)))
        await settle()
        await release_until_done(upstream, [first, good_before, bad, good_after])
        assert await good_before == ([2.0, 3.0], [0, 1])
        assert await good_after == ([6.0], [0])
        with pytest.raises(RequestRefused, match="row 5 is bad"):
            await bad
        assert [ids for _, _, ids in upstream.calls] == [[1], [2, 3, 4, 5, 6], [2, 3], [4, 5], [6]]
        assert seen == [1, 1, 1]  # the refused merged call is not counted as served

    asyncio.run(scenario())


def test_a_failure_that_is_not_the_requests_fault_reaches_every_request_of_the_call_once():
    async def scenario() -> None:
        upstream = HeldUpstream()
        batcher = make(upstream, max_in_flight=1)
        first = await occupy(batcher)
        queued = [asyncio.create_task(batcher.predict("taxi", 1, rows(i))) for i in (2, 3)]
        await settle()
        upstream.fail_all = RequestRefused(503, "model server is unavailable")
        await release_until_done(upstream, [first, *queued])
        for task in (first, *queued):
            with pytest.raises(RequestRefused, match="unavailable"):
                await task
        assert len(upstream.calls) == 2  # not retried one by one: it would fail the same way, slower
        # The lane is free again: the next request goes at once.
        upstream.fail_all = None
        later = asyncio.create_task(batcher.predict("taxi", 1, rows(4)))
        await settle()
        assert upstream.calls[-1][2] == [4]
        upstream.release_all()
        assert await later == ([4.0], [0])

    asyncio.run(scenario())


def test_a_waiting_request_whose_caller_gave_up_is_not_sent():
    async def scenario() -> None:
        upstream = HeldUpstream()
        batcher = make(upstream, max_in_flight=1)
        first = await occupy(batcher)
        abandoned = asyncio.create_task(batcher.predict("taxi", 1, rows(2)))
        kept = asyncio.create_task(batcher.predict("taxi", 1, rows(3)))
        await settle()
        abandoned.cancel()
        await release_until_done(upstream, [first, kept])
        assert [ids for _, _, ids in upstream.calls] == [[1], [3]]
        assert await kept == ([3.0], [1])

    asyncio.run(scenario())


def test_limits_below_one_are_refused():
    with pytest.raises(ValueError, match="max_in_flight and max_batch_rows must be >= 1"):
        make(HeldUpstream(), max_in_flight=0)
