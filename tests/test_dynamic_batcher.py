"""The KServe front's server-side batching: concurrent requests share one run, each gets its own
rows back, no request is split, errors reach every waiting request."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from handlers.dynamic_batcher import DynamicBatcher


class Model:
    """Doubles its input; records each batch's size and whether two runs ever overlapped."""

    def __init__(self, seconds: float = 0.02, fail: bool = False):
        self.sizes: list[int] = []
        self.seconds, self.fail = seconds, fail
        self.running = threading.Lock()
        self.overlapped = False

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if not self.running.acquire(blocking=False):
            self.overlapped = True
            self.running.acquire()
        try:
            time.sleep(self.seconds)
            if self.fail:
                raise RuntimeError("onnxruntime failed")
            self.sizes.append(len(images))
            return images * 2
        finally:
            self.running.release()


def rows(outputs: np.ndarray, start: int, stop: int) -> np.ndarray:
    return outputs[start:stop]


async def submit_all(batcher: DynamicBatcher, requests: list[np.ndarray], stagger: float = 0.0):
    async def one(i, images):
        await asyncio.sleep(stagger * i)
        return await batcher.run(images)
    return await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))


def test_concurrent_requests_share_runs_and_get_their_own_rows():
    model = Model()
    batcher = DynamicBatcher(model, rows, max_images=64)
    requests = [np.full((1 + i % 3, 2), i, np.float32) for i in range(12)]
    answers = asyncio.run(submit_all(batcher, requests))
    for request, answer in zip(requests, answers):
        np.testing.assert_array_equal(answer, request * 2)
    assert sum(model.sizes) == sum(len(r) for r in requests)
    assert len(model.sizes) < len(requests)  # batched: the first runs alone, the rest queue behind it
    assert not model.overlapped and batcher.batches == len(model.sizes)


def test_no_batch_exceeds_max_images_and_no_request_is_split():
    model = Model()
    batcher = DynamicBatcher(model, rows, max_images=4)
    requests = [np.full((n, 1), n, np.float32) for n in (3, 3, 6, 1, 2)]
    answers = asyncio.run(submit_all(batcher, requests))
    for request, answer in zip(requests, answers):
        np.testing.assert_array_equal(answer, request * 2)
    assert 6 in model.sizes  # larger than max_images: runs alone, whole
    assert all(size <= 4 for size in model.sizes if size != 6)


def test_max_delay_waits_for_late_requests():
    eager, patient = Model(seconds=0.0), Model(seconds=0.0)
    requests = [np.ones((1, 1), np.float32) for _ in range(4)]
    asyncio.run(submit_all(DynamicBatcher(eager, rows), requests, stagger=0.01))
    asyncio.run(submit_all(DynamicBatcher(patient, rows, max_delay=0.2), requests, stagger=0.01))
    assert eager.sizes == [1, 1, 1, 1]
    assert patient.sizes == [4]


def test_an_error_reaches_every_request_of_the_batch_and_the_batcher_goes_on():
    model = Model(fail=True)
    batcher = DynamicBatcher(model, rows)

    async def scenario():
        results = await asyncio.gather(*(batcher.run(np.ones((1, 1), np.float32)) for _ in range(3)),
                                       return_exceptions=True)
        model.fail = False
        return results, await batcher.run(np.ones((1, 1), np.float32))

    results, after = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) for r in results)
    np.testing.assert_array_equal(after, [[2.0]])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        DynamicBatcher(Model(), rows, max_images=0)
    with pytest.raises(ValueError):
        DynamicBatcher(Model(), rows, max_delay=-1)
