"""`--enable_batching` for the embedded server: concurrent Predict calls on one signature of one
version run as one TensorFlow call, as TF Serving's batching session does.

`--batching_parameters_file` is TF Serving's text `BatchingParameters`
(servables/tensorflow/session_bundle_config.proto); unset fields take TF Serving's defaults. A
worker takes the oldest waiting call, waits up to `batch_timeout_micros` for more calls on the same
signature until `max_execution_batch_size` rows are there, concatenates their inputs along the
first dimension, runs once and hands each caller its rows of every output. A call larger than
`max_batch_size` is refused ("Task size N is larger than maximum input batch size M") unless
`enable_large_batch_splitting` cuts it into execution-size pieces. A merged call that fails is
retried call by call, so one bad request never fails its neighbours.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

from core.errors import DataError
from serving.status import Code, ServingError, invalid

Arrays = Mapping[str, np.ndarray]
RunBatch = Callable[[Arrays], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's defaults where the file is silent (SharedBatchScheduler / BatchingSession options)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise DataError(f"batching parameter {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise DataError(f"batching parameter batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}")
        if self.max_execution_batch_size is not None and not 1 <= self.max_execution_batch_size <= self.max_batch_size:
            raise DataError(f"batching parameter max_execution_batch_size must be in 1..max_batch_size "
                            f"({self.max_batch_size}), got {self.max_execution_batch_size}")

    @property
    def execution_batch_size(self) -> int:
        if self.enable_large_batch_splitting and self.max_execution_batch_size is not None:
            return self.max_execution_batch_size
        return self.max_batch_size


def batching_parameters_class() -> type:
    """tensorflow.serving.BatchingParameters, which the tensorflow-serving-api wheel does not ship."""
    F = descriptor_pb2.FieldDescriptorProto
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="mlops_serving/batching_parameters.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    message = file_proto.message_type.add(name="BatchingParameters")
    fields = [("max_batch_size", 1, "Int64Value"), ("batch_timeout_micros", 2, "Int64Value"),
              ("max_enqueued_batches", 3, "Int64Value"), ("num_batch_threads", 4, "Int64Value"),
              ("thread_pool_name", 5, "StringValue"), ("enable_large_batch_splitting", 8, "BoolValue"),
              ("max_execution_batch_size", 9, "Int64Value")]
    for name, number, wrapper in fields:
        message.field.add(name=name, number=number, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                          type_name=f".google.protobuf.{wrapper}")
    message.field.add(name="allowed_batch_sizes", number=6, type=F.TYPE_INT64, label=F.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
    pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def read_batching_parameters(path: Path | None) -> BatchingOptions:
    """The options of a `--batching_parameters_file` (None: TF Serving's defaults); DataError names the problem."""
    if path is None:
        return BatchingOptions()
    try:
        parameters = text_format.Parse(Path(path).read_text(), batching_parameters_class()())
    except OSError as err:
        raise DataError(f"cannot read --batching_parameters_file {path}: {err}") from None
    except text_format.ParseError as err:
        raise DataError(f"--batching_parameters_file {path} is not a BatchingParameters text proto: {err}") from None
    chosen: dict[str, Any] = {}
    for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
                  "enable_large_batch_splitting", "max_execution_batch_size"):
        if parameters.HasField(field):
            chosen[field] = getattr(parameters, field).value
    try:
        return BatchingOptions(**chosen)
    except DataError as err:
        raise DataError(f"--batching_parameters_file {path}: {err}") from None


@dataclasses.dataclass(eq=False)
class _Task:
    key: Any
    inputs: Arrays
    rows: int
    run: RunBatch
    enqueued: float = dataclasses.field(default_factory=time.monotonic)
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    outputs: dict[str, np.ndarray] | None = None
    error: BaseException | None = None


class BatchScheduler:
    """The server's batch threads and queue, shared by every servable (TF Serving's SharedBatchScheduler)."""

    def __init__(self, options: BatchingOptions) -> None:
        self.options = options
        self._queue: collections.deque[_Task] = collections.deque()
        self._queued_rows = 0
        self._ready = threading.Condition()
        self._stopped = False
        self._threads = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def run(self, key: Any, inputs: Arrays, run: RunBatch) -> dict[str, np.ndarray]:
        """`run(inputs)`'s answer, computed together with other callers' inputs of the same `key`."""
        rows = _batch_rows(inputs)
        if rows is None:  # scalars or inputs of different lengths: nothing to merge along
            return run(inputs)
        if rows > self.options.max_batch_size:
            raise invalid(f"Task size {rows} is larger than maximum input batch size {self.options.max_batch_size}")
        piece = self.options.execution_batch_size
        if rows > piece:  # large batch splitting: the pieces are batched like any other call
            parts = [self._submit(_Task(key, {k: v[start:start + piece] for k, v in inputs.items()}, min(piece, rows - start), run))
                     for start in range(0, rows, piece)]
            outputs = [self._wait(task) for task in parts]
            return {alias: np.concatenate([part[alias] for part in outputs]) for alias in outputs[0]}
        return self._wait(self._submit(_Task(key, inputs, rows, run)))

    def stop(self) -> None:
        with self._ready:
            self._stopped = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join(5.0)

    def _submit(self, task: _Task) -> _Task:
        with self._ready:
            piece = self.options.execution_batch_size
            if -(-(self._queued_rows + task.rows) // piece) > self.options.max_enqueued_batches:
                raise ServingError(Code.UNAVAILABLE, "The batch scheduling queue to which this task was submitted is full")
            self._queue.append(task)
            self._queued_rows += task.rows
            self._ready.notify()
        return task

    @staticmethod
    def _wait(task: _Task) -> dict[str, np.ndarray]:
        task.done.wait()
        if task.error is not None:
            raise task.error
        assert task.outputs is not None
        return task.outputs

    def _work(self) -> None:
        timeout = self.options.batch_timeout_micros / 1e6
        piece = self.options.execution_batch_size
        while True:
            with self._ready:
                while not self._queue and not self._stopped:
                    self._ready.wait()
                if self._stopped:
                    return
                first = self._queue[0]
                # Wait for company until the oldest call's timeout, unless a full batch is already there.
                while not self._stopped:
                    waiting = sum(task.rows for task in self._queue if task.key == first.key)
                    remaining = first.enqueued + timeout - time.monotonic()
                    if waiting >= piece or remaining <= 0 or not self._queue or self._queue[0] is not first:
                        break
                    self._ready.wait(remaining)
                if not self._queue or self._queue[0] is not first:
                    continue  # another worker took it meanwhile
                batch, rows = [], 0
                for task in list(self._queue):
                    if task.key == first.key and rows + task.rows <= piece:
                        batch.append(task)
                        rows += task.rows
                for task in batch:
                    self._queue.remove(task)
                self._queued_rows -= rows
            self._execute(batch)

    @staticmethod
    def _execute(batch: list[_Task]) -> None:
        if len(batch) > 1:
            try:
                merged = {alias: np.concatenate([task.inputs[alias] for task in batch]) for alias in batch[0].inputs}
                outputs = batch[0].run(merged)
                total = sum(task.rows for task in batch)
                if all(array.ndim and array.shape[0] == total for array in outputs.values()):
                    start = 0
                    for task in batch:
                        task.outputs = {alias: array[start:start + task.rows] for alias, array in outputs.items()}
                        start += task.rows
                        task.done.set()
                    return
            except Exception:  # noqa: BLE001 - retried call by call below, so each caller gets its own error
                pass
        for task in batch:
            if task.done.is_set():
                continue
            try:
                task.outputs = task.run(task.inputs)
            except BaseException as err:  # noqa: BLE001 - handed to the waiting caller
                task.error = err
            task.done.set()


def _batch_rows(inputs: Arrays) -> int | None:
    sizes = {array.shape[0] if array.ndim else None for array in inputs.values()}
    if len(sizes) != 1 or None in sizes:
        return None
    return sizes.pop()
