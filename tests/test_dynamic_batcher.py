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
    assert len(model.sizes) < len(requests)  # batched (all 12 are queued before the first run)
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
    asyncio.run(submit_all(DynamicBatcher(eager, rows), requests, stagger=0.1))
    asyncio.run(submit_all(DynamicBatcher(patient, rows, max_delay=1.0), requests, stagger=0.02))
    assert eager.sizes == [1, 1, 1, 1]  # 100 ms apart, nothing queued: each runs at once
    assert patient.sizes == [4]


def test_a_request_too_big_for_the_batch_leads_the_next_one():
    model = Model()
    batcher = DynamicBatcher(model, rows, max_images=4)
    requests = [np.full((n, 1), i, np.float32) for i, n in enumerate((1, 2, 3, 1, 1))]
    asyncio.run(submit_all(batcher, requests))
    # all five are queued before the first run: 1 + 2, and + 3 would be 6 > 4, so the 3 is carried
    # and leads the next batch (with the 1 that fits), never sent behind the last one
    assert model.sizes == [3, 4, 1]


def test_a_cancelled_request_is_left_out_and_the_others_answered():
    model = Model()
    batcher = DynamicBatcher(model, rows)

    async def scenario():
        first = asyncio.ensure_future(batcher.run(np.ones((1, 1), np.float32)))
        await asyncio.sleep(0.005)  # the first batch is running
        doomed = asyncio.ensure_future(batcher.run(np.ones((5, 1), np.float32)))
        kept = asyncio.ensure_future(batcher.run(np.full((2, 1), 3, np.float32)))
        await asyncio.sleep(0)
        doomed.cancel()  # the client went away while queued
        return await first, await kept

    first, kept = asyncio.run(scenario())
    np.testing.assert_array_equal(kept, [[6.0], [6.0]])
    assert model.sizes == [1, 2]


def test_a_failing_split_fails_its_requests_not_the_batcher():
    model = Model(seconds=0.0)
    calls = []

    def split(outputs, start, stop):
        calls.append(start)
        if len(calls) == 1:
            raise IndexError("bad split")
        return outputs[start:stop]

    batcher = DynamicBatcher(model, split)

    async def scenario():
        failed = await asyncio.gather(batcher.run(np.ones((1, 1), np.float32)), return_exceptions=True)
        return failed, await batcher.run(np.ones((1, 1), np.float32))

    failed, after = asyncio.run(scenario())
    assert isinstance(failed[0], IndexError)
    np.testing.assert_array_equal(after, [[2.0]])


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
