"""An asyncio micro-batcher: requests arriving within a short window share one inference call.

Requests wait in a bounded queue; one collector task takes the first, keeps taking more for up to
``window`` seconds or until ``max_batch`` are in hand, and runs ``process(items)`` in a worker thread
so the event loop keeps accepting requests meanwhile. A full queue refuses at once (``QueueFull``),
which the server answers with 503 and ``Retry-After``.

Batches run one at a time, always in the same thread (a pool of one, started by ``start``): the
allocator then keeps one batch's working set, where a shared pool would hand batches to whichever of
its threads is free and each of them would grow its own arena to the batch's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class QueueFull(Exception):
    """The batcher's queue holds ``queue_size`` requests already."""


class ShuttingDown(Exception):
    """The batcher was closed before the request ran."""


class Batcher:
    """Collect requests into batches for ``process`` (a blocking function: list of items -> list of results).

    Args:
        process: runs a batch in a worker thread; returns one result per item, or raises for the batch.
        max_batch: largest batch.
        window: seconds to wait for more requests after the first of a batch.
        queue_size: most requests waiting (not counting the batch running).
    """

    def __init__(
        self,
        process: Callable[[list[Any]], Sequence[Any]],
        max_batch: int = 8,
        window: float = 0.005,
        queue_size: int = 64,
    ) -> None:
        for name, value in (("max_batch", max_batch), ("queue_size", queue_size)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if window < 0:
            raise ValueError(f"the batch window must be >= 0 seconds, got {window}")
        self.process, self.max_batch, self.window = process, max_batch, window
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future]] = asyncio.Queue(queue_size)
        self.batches = 0  # batches run so far
        self._task: asyncio.Task | None = None
        self._running: asyncio.Task | None = None
        self._worker: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segformer-batches")
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def close(self) -> None:
        """Stop collecting; requests still queued fail with ``ShuttingDown``, the running batch finishes."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._running is not None:
            await self._running
        if self._worker is not None:
            self._worker.shutdown()
            self._worker = None
        while not self.queue.empty():
            _, future = self.queue.get_nowait()
            if not future.done():
                future.set_exception(ShuttingDown("the server is shutting down"))

    async def submit(self, item: Any) -> Any:
        """The result of ``item``, once its batch ran; ``QueueFull`` at once when the queue is full."""
        if self._task is None:
            raise ShuttingDown("the server is shutting down")
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((item, future))
        except asyncio.QueueFull:
            raise QueueFull(f"{self.queue.maxsize} requests are waiting already") from None
        return await future

    async def _take(self) -> list[tuple[Any, asyncio.Future]]:
        """The next batch: the first waiting request and those arriving within the window."""
        batch = [await self.queue.get()]
        deadline = time.monotonic() + self.window
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and self.queue.empty():
                break
            try:
                batch.append(
                    self.queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self.queue.get(), remaining)
                )
            except (asyncio.QueueEmpty, TimeoutError):
                break
        return batch

    async def _collect(self) -> None:
        while True:
            batch = [(item, future) for item, future in await self._take() if not future.cancelled()]
            if batch:  # shielded: closing the batcher lets the running batch finish and answer
                self._running = asyncio.get_running_loop().create_task(self._run(batch))
                await asyncio.shield(self._running)

    async def _run(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._worker, self.process, [item for item, _ in batch]
            )
        except Exception as e:  # the batch failed: every request in it gets the error
            results = [e] * len(batch)
        self.batches += 1
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
