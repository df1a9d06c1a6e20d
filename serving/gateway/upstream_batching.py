"""Merging concurrent predict requests for one model version into fewer model-server calls.

While `max_in_flight` calls to a model version are already on their way, a new request waits in
that version's queue instead of opening one more; when a call returns, everything that queued up
meanwhile goes out as ONE call (up to `max_batch_rows` examples) and each waiting request gets its
own slice of the answer. Examples travel as columns (feature name -> one value per example), so
merging is one list concatenation per feature. A lone client never waits (nothing is in flight,
so its request goes at once); under load the model server sees a few larger batches instead of
many small requests, which is what both TF Serving's batching and this machine's 2 cores are
best at.

A merged call that the model server refuses with 400 is retried one request at a time, so a bad
request gets its own error and never fails its neighbours. Any other failure (503, timeout, a
broken answer) is the same for every request in the call and is given to each of them.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from typing import Any, Awaitable, Callable

Columns = dict[str, list[Any]]  # feature name -> one value per example; every list as long
Answer = tuple[list[Any], list[Any]]  # (probabilities, classes), one entry per example
PredictCall = Callable[[str, "int | None", Columns], Awaitable[Answer]]
# Called with the number of client requests each model-server call carried.
BatchObserver = Callable[[int], None]


def example_count(columns: Columns) -> int:
    return len(next(iter(columns.values())))


@dataclasses.dataclass(slots=True)
class _Waiting:
    columns: Columns
    count: int
    future: asyncio.Future[Answer]


@dataclasses.dataclass(slots=True)
class _Lane:
    """One model version's calls in flight and the requests waiting for a free slot."""

    in_flight: int = 0
    waiting: collections.deque[_Waiting] = dataclasses.field(default_factory=collections.deque)


class UpstreamBatcher:
    """`await batcher.predict(model, version, columns)` has the same answer and errors as `call(...)`."""

    def __init__(
        self,
        call: PredictCall,
        *,
        max_in_flight: int,
        max_batch_rows: int,
        is_request_error: Callable[[BaseException], bool],
        observe: BatchObserver | None = None,
    ) -> None:
        if max_in_flight < 1 or max_batch_rows < 1:
            raise ValueError(f"max_in_flight and max_batch_rows must be >= 1, got {max_in_flight}, {max_batch_rows}")
        self._call = call
        self._max_in_flight = max_in_flight
        self._max_batch_rows = max_batch_rows
        self._is_request_error = is_request_error
        self._observe = observe
        self._lanes: dict[tuple[str, int | None], _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def predict(self, model: str, version: int | None, columns: Columns) -> Answer:
        key = (model, version)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        if lane.in_flight < self._max_in_flight and not lane.waiting:
            lane.in_flight += 1
            try:
                answer = await self._call(model, version, columns)
            finally:
                lane.in_flight -= 1
                self._dispatch(key, lane)
            if self._observe is not None:
                self._observe(1)
            return answer
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        lane.waiting.append(_Waiting(columns, example_count(columns), future))
        return await future

    @property
    def waiting(self) -> int:
        """Requests queued behind busy model-server calls right now (all versions)."""
        return sum(len(lane.waiting) for lane in self._lanes.values())

    def _dispatch(self, key: tuple[str, int | None], lane: _Lane) -> None:
        """Sends what waits on `key` as merged calls while the lane has free slots."""
        while lane.in_flight < self._max_in_flight and lane.waiting:
            batch: list[_Waiting] = []
            rows = 0
            while lane.waiting:
                head = lane.waiting[0]
                if head.future.done():  # its caller gave up (cancelled): nothing to send
                    lane.waiting.popleft()
                    continue
                if batch and rows + head.count > self._max_batch_rows:
                    break
                batch.append(lane.waiting.popleft())
                rows += head.count
            if not batch:
                break
            lane.in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(key, lane, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not lane.in_flight and not lane.waiting:
            self._lanes.pop(key, None)

    async def _send(self, key: tuple[str, int | None], lane: _Lane, batch: list[_Waiting]) -> None:
        model, version = key
        try:
            merged: Columns = {}
            for name in batch[0].columns:
                column: list[Any] = []
                for item in batch:
                    column += item.columns[name]
                merged[name] = column
            try:
                probabilities, classes = await self._call(model, version, merged)
            except Exception as err:  # noqa: BLE001 - handed to the waiting callers below
                if len(batch) > 1 and self._is_request_error(err):
                    await self._send_one_by_one(model, version, batch)
                else:
                    for item in batch:
                        _settle(item.future, error=err)
                return
            if self._observe is not None:
                self._observe(len(batch))
            start = 0
            for item in batch:
                end = start + item.count
                _settle(item.future, answer=(probabilities[start:end], classes[start:end]))
                start = end
        except BaseException as err:  # cancelled at shutdown: no caller may wait forever
            for item in batch:
                _settle(item.future, error=err if isinstance(err, Exception) else asyncio.CancelledError())
            raise
        finally:
            lane.in_flight -= 1
            self._dispatch(key, lane)

    async def _send_one_by_one(self, model: str, version: int | None, batch: list[_Waiting]) -> None:
        async def one(item: _Waiting) -> None:
            try:
                answer = await self._call(model, version, item.columns)
            except Exception as err:  # noqa: BLE001 - this request's own error
                _settle(item.future, error=err)
            else:
                if self._observe is not None:
                    self._observe(1)
                _settle(item.future, answer=answer)

        await asyncio.gather(*(one(item) for item in batch))

    async def close(self) -> None:
        """Waits for calls already sent (their callers are waiting for them)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _settle(future: asyncio.Future[Answer], *, answer: Answer | None = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(answer)  # type: ignore[arg-type]
