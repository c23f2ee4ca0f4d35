"""Dynamic micro-batching: concurrent requests' sequences share forward passes.

One `MicroBatcher` per loaded model. Callers `await score(sequences)`; each sequence waits in a
queue with a future of its own. A single task per batcher takes the first waiting sequence,
gathers more for up to `max_wait_ms` (or until `max_batch_tokens` tokens wait), sorts them by
length so rows of similar length share a pass, cuts them into passes whose padded size
(rows x longest row) stays within `max_batch_tokens`, runs each pass on the process's one
forward thread (the event loop keeps serving meanwhile, and queues the next batch) and resolves
every future with its own row. A failed pass fails only the futures of its rows.

One thread, `FORWARD_THREAD`, runs every batcher's passes: torch gives each thread that calls
it an OpenMP team of its own, and the idle teams of other threads then slow the one at work
(here, torch on a second thread ran about 30% slower once a first had used it).

The forward function must give a row the same output whatever else shares its pass (for a
causal model: right padding, pooling at each row's own last token).

A row is whatever the forward function reads, as long as its `len` is its length in tokens:
token id lists for a sequence classifier, `EncodedItem`s (ids and where the response starts)
for an implicit reward model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sized
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

FORWARD_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-forward")
"""Where every forward pass of this process runs (see the module's docstring)."""

Row = TypeVar("Row", bound=Sized)
Forward = Callable[[list[Row]], list[list[float]]]
"""Rows (unpadded, any lengths) → one output row per input row, in order."""
BatchObserver = Callable[[int, int, float], None]
"""Called after each pass with (rows, padded tokens, seconds)."""


@dataclass
class _Waiting(Generic[Row]):
    row: Row
    future: asyncio.Future[list[float]] = field(repr=False)


class MicroBatcher(Generic[Row]):
    def __init__(self, forward: Forward[Row], *, max_wait_ms: float = 5.0,
                 max_batch_tokens: int = 8192, observe: BatchObserver | None = None):
        self._forward = forward
        self._max_wait = max_wait_ms / 1000
        self._max_batch_tokens = max_batch_tokens
        self._observe = observe
        self._queue: asyncio.Queue[_Waiting[Row]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def score(self, sequences: list[Row]) -> list[list[float]]:
        """One output row per sequence, in order; raises what the forward pass raised."""
        queue = self._ensure_running()
        loop = asyncio.get_running_loop()
        waiting = [_Waiting(row, loop.create_future()) for row in sequences]
        for entry in waiting:
            queue.put_nowait(entry)
        return list(await asyncio.gather(*(entry.future for entry in waiting)))

    async def close(self) -> None:
        """Stop the batcher task; sequences still queued fail with CancelledError."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        while self._queue is not None and not self._queue.empty():
            self._queue.get_nowait().future.cancel()

    def _ensure_running(self) -> asyncio.Queue[_Waiting[Row]]:
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self._queue

    async def _run(self) -> None:
        """Until the queue is empty; `score` starts it again (so an idle or evicted model's
        batcher holds no task)."""
        assert self._queue is not None
        while not self._queue.empty():
            batch = await self._gather(self._queue)
            for rows in self.split(batch, self._max_batch_tokens):
                await self._pass(rows)

    async def _gather(self, queue: asyncio.Queue[_Waiting[Row]]) -> list[_Waiting[Row]]:
        batch = [await queue.get()]
        tokens = len(batch[0].row)
        deadline = time.monotonic() + self._max_wait
        while tokens < self._max_batch_tokens:
            if queue.empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    entry = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                entry = queue.get_nowait()
            batch.append(entry)
            tokens += len(entry.row)
        return batch

    @staticmethod
    def split(batch: list[_Waiting[Row]], max_batch_tokens: int) -> list[list[_Waiting[Row]]]:
        """Sorted by length; consecutive rows while rows x longest fits the budget (a row longer
        than the budget goes alone)."""
        passes: list[list[_Waiting[Row]]] = []
        current: list[_Waiting[Row]] = []
        for entry in sorted(batch, key=lambda e: len(e.row)):
            longest = len(entry.row)  # sorted: the newcomer is the longest
            if current and (len(current) + 1) * longest > max_batch_tokens:
                passes.append(current)
                current = []
            current.append(entry)
        if current:
            passes.append(current)
        return passes

    async def _pass(self, rows: list[_Waiting[Row]]) -> None:
        live = [row for row in rows if not row.future.done()]  # a caller may have gone away
        if not live:
            return
        started = time.perf_counter()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                FORWARD_THREAD, self._forward, [row.row for row in live])
        except Exception as exc:  # noqa: BLE001 - handed to exactly the callers of this pass
            for row in live:
                if not row.future.done():
                    row.future.set_exception(exc)
            return
        if self._observe is not None:
            longest = max(len(row.row) for row in live)
            self._observe(len(live), len(live) * longest, time.perf_counter() - started)
        for row, output in zip(live, outputs, strict=True):
            if not row.future.done():
                row.future.set_result(output)
