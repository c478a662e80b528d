"""Dynamic batching: images from concurrent requests are gathered into one model call.

One asyncio task takes the first waiting image, then gathers more until the batch holds `max_batch` images or
`max_wait_s` has passed since the first one, and runs the model on a single worker thread, off the event
loop. While the model runs, new images queue up, so under load the next batch is ready at once: 64 clients
sending one word each cost about one batch of 64. Only one model call runs at a time per model.

The queue is bounded (`max_pending` images waiting): a request that does not fit is refused at once with
QueueFull (the server answers 503) instead of growing memory and latency without limit.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from masterocr.reading import ReadResult, failed

log = logging.getLogger("masterocr.serve")


class QueueFull(RuntimeError):
    """More images are waiting than the batcher accepts."""


@dataclass
class BatchStats:
    batches: int = 0
    images: int = 0
    largest: int = 0


class Batcher:
    """Gathers prepared images into batches for `predict(list_of_prepared) -> list[ReadResult]`."""

    def __init__(self, predict: Callable[[list[Any]], list[ReadResult]], max_batch: int = 64,
                 max_wait_s: float = 0.01, max_pending: int = 1024):
        if max_batch < 1:
            raise ValueError(f"max_batch {max_batch}: must be at least 1")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s {max_wait_s}: must not be negative")
        self.predict = predict
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.max_pending = max(int(max_pending), self.max_batch)
        self.stats = BatchStats()
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="masterocr-model")
        self._task: asyncio.Task | None = None

    @property
    def pending(self) -> int:
        """Images waiting for a model call."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start gathering (call from the event loop that will submit)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="masterocr-batcher")

    async def stop(self) -> None:
        """Stop gathering; images still waiting are answered with an error."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_result(failed("the server is shutting down"))
        self._executor.shutdown(wait=True)

    def check_room(self, count: int) -> None:
        """Raise QueueFull when `count` more images would not fit in the queue."""
        if self.pending + count > self.max_pending:
            raise QueueFull(f"{self.pending} images are waiting to be read (limit {self.max_pending}); "
                            "try again shortly")

    async def submit(self, items: Sequence[Any]) -> list[ReadResult]:
        """Queue the prepared images of one request together and wait for their readings, in order."""
        if not items:
            return []
        if self._task is None:
            raise RuntimeError("the batcher is not running")
        self.check_room(len(items))
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            self._queue.put_nowait((item, future))
        return list(await asyncio.gather(*futures))

    async def _gather(self) -> list[tuple[Any, asyncio.Future]]:
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:  # TimeoutError from 3.11 on; distinct in 3.10
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            live = [(item, future) for item, future in batch if not future.done()]  # drop cancelled requests
            if not live:
                continue
            results = await loop.run_in_executor(self._executor, self._predict_isolated, [i for i, _ in live])
            self.stats.batches += 1
            self.stats.images += len(live)
            self.stats.largest = max(self.stats.largest, len(live))
            for (_, future), result in zip(live, results):
                if not future.done():
                    future.set_result(result)

    def _predict_isolated(self, items: list[Any]) -> list[ReadResult]:
        """predict(items); when the call fails, each image is retried alone, so one image that breaks the
        model costs only its own reading, never the batch (and never the server)."""
        try:
            results = list(self.predict(items))
            if len(results) != len(items):
                raise RuntimeError(f"the model returned {len(results)} readings for {len(items)} images")
            return results
        except Exception as e:  # noqa: BLE001 - any model failure becomes a per-image error
            if len(items) == 1:
                log.exception("model call failed for one image")
                return [failed(f"the model failed on this image ({type(e).__name__}: {e})")]
            log.warning("model call failed for a batch of %d (%s: %s); retrying one by one",
                        len(items), type(e).__name__, e)
            return [self._predict_isolated([item])[0] for item in items]
