"""`LightEvent`: what uvicorn's WebSocket protocol needs of `asyncio.Event` (its "writable"
flag): set, clear, every waiter woken, and a waiter cancelled while it waits leaves nothing."""

from __future__ import annotations

import asyncio

import pytest

from ordergraph.light_event import LightEvent


async def test_waiters_wait_until_it_is_set_and_then_pass_at_once() -> None:
    event = LightEvent()
    assert not event.is_set()
    waiting = [asyncio.create_task(event.wait()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert not any(task.done() for task in waiting)
    event.set()
    assert await asyncio.wait_for(asyncio.gather(*waiting), 1) == [True, True, True]
    assert event.is_set()
    assert await asyncio.wait_for(event.wait(), 1) is True  # set: no waiting

    event.clear()
    late = asyncio.create_task(event.wait())
    await asyncio.sleep(0.01)
    assert not late.done()
    event.set()
    assert await asyncio.wait_for(late, 1) is True


async def test_a_cancelled_waiter_is_forgotten() -> None:
    event = LightEvent()
    cancelled = asyncio.create_task(event.wait())
    kept = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert event._waiters is not None and len(event._waiters) == 1
    event.set()
    assert await asyncio.wait_for(kept, 1) is True
    assert event._waiters is None
