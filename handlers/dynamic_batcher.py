"""Server-side batching for an asyncio front: concurrent requests' images run as one batch.

One inference at a time, in its own thread (onnxruntime releases the GIL, so the event loop
keeps reading requests meanwhile): while a batch runs, new requests queue; the next batch takes
everything queued, up to `max_images` (a request is never split). With `max_delay` > 0 a batch
also waits that long after its first request for more, like TorchServe's maxBatchDelay; the
default 0 adds no latency at low load and batches by itself under load. Without this, every
request would run its own onnxruntime call with its own threads and oversubscribe the cores.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class DynamicBatcher:
    """`await batcher.run(images)` -> `split(run(batch), start, stop)` for this request's rows."""

    def __init__(self, run: Callable[[np.ndarray], Any],
                 split: Callable[[Any, int, int], Any], max_images: int = 64, max_delay: float = 0.0):
        if max_images < 1 or max_delay < 0:
            raise ValueError("max_images must be >= 1 and max_delay >= 0")
        self._run, self._split = run, split
        self.max_images, self.max_delay = max_images, max_delay
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._queue: asyncio.Queue = asyncio.Queue()  # binds to the event loop of its first use
        self._worker: asyncio.Task | None = None
        self._carry: tuple[np.ndarray, asyncio.Future] | None = None
        self.batches = 0  # batches run, and the images in them (for the mean batch size)
        self.images = 0

    async def run(self, images: np.ndarray) -> Any:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():  # first call, or after a crash (logged)
            self._worker = loop.create_task(self._serve())
            self._worker.add_done_callback(_log_crash)
        future = loop.create_future()
        await self._queue.put((images, future))
        return await future

    async def _collect(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        """The next batch: the first waiting request, then whatever fits and is queued (or comes
        within max_delay)."""
        batch = [self._carry or await self._queue.get()]
        self._carry = None
        count = len(batch[0][0])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_delay
        while count < self.max_images:
            try:
                if self._queue.empty() and loop.time() < deadline:
                    item = await asyncio.wait_for(self._queue.get(), deadline - loop.time())
                else:
                    item = self._queue.get_nowait()
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            if count + len(item[0]) > self.max_images:
                self._carry = item  # not split, not sent to the back: it leads the next batch
                break
            batch.append(item)
            count += len(item[0])
        return batch

    async def _serve(self) -> None:
        while True:
            batch = await self._collect()
            live = [(images, future) for images, future in batch if not future.cancelled()]
            try:
                if live:
                    await self._run_batch(live)
            except Exception as error:  # noqa: BLE001 - every waiting request gets the error
                for _, future in live:
                    if not future.done():
                        future.set_exception(error)

    async def _run_batch(self, live: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        stacked = live[0][0] if len(live) == 1 else np.concatenate([images for images, _ in live])
        outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, stacked)
        self.batches += 1
        self.images += len(stacked)
        start = 0
        for images, future in live:
            if not future.done():
                future.set_result(self._split(outputs, start, start + len(images)))
            start += len(images)


def _log_crash(task: asyncio.Task) -> None:
    """The worker loop ends only by a bug or at shutdown; say which (the next request restarts it)."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("batching worker stopped: %r (restarted by the next request)", task.exception())
