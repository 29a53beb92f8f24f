"""`LightQueue`: what a subscriber needs of `asyncio.Queue` (FIFO, a bound, a consumer that
waits), and a consumer cancelled while it waits leaves the queue usable."""

from __future__ import annotations

import asyncio

import pytest

from ordergraph.light_queue import LightQueue


async def test_items_come_out_in_order_and_the_bound_refuses_one_more() -> None:
    queue: LightQueue[int] = LightQueue(maxsize=3)
    assert queue.empty() and queue.qsize() == 0
    for n in range(3):
        queue.put_nowait(n)
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait(3)
    assert queue.qsize() == 3
    assert [await queue.get() for _ in range(3)] == [0, 1, 2]
    assert queue.empty()
    queue.put_nowait(4)  # room again
    assert await queue.get() == 4


async def test_a_waiting_consumer_is_woken_and_a_cancelled_one_loses_nothing() -> None:
    queue: LightQueue[str] = LightQueue()
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("first")
    assert await asyncio.wait_for(waiting, 1) == "first"

    cancelled = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    queue.put_nowait("second")
    assert await asyncio.wait_for(queue.get(), 1) == "second"
