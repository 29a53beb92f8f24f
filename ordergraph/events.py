"""Order events: a hint that an order changed, for whoever follows it live.

An event carries only the order id and its version. Subscribers re-read the order, so a lost
or repeated hint never shows a wrong state, only a late one. The transport is chosen by
`EVENTS_URL`; `memory://` delivers within this process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from ordergraph.db import after_commit

log = logging.getLogger(__name__)

SUBSCRIBER_QUEUE_SIZE = 64


@dataclass(frozen=True)
class OrderEvent:
    order_id: str
    version: int


class SlowSubscriber(Exception):
    """The subscriber did not keep up and was dropped rather than buffer without bound."""


class Subscription:
    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        self.queue: asyncio.Queue[OrderEvent | None] = asyncio.Queue(SUBSCRIBER_QUEUE_SIZE)
        self.overflowed = False

    def offer(self, event: OrderEvent | None) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True

    async def __anext__(self) -> OrderEvent | None:
        if self.overflowed:
            raise SlowSubscriber(self.order_id)
        return await self.queue.get()

    def __aiter__(self) -> Subscription:
        return self


class EventTransport(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def announce(self, event: OrderEvent) -> None:
        """Called inside the transaction that changes the order: deliver at commit, never on
        rollback (after_commit, or a NOTIFY that the database itself holds until commit)."""
        ...

    async def publish(self, event: OrderEvent) -> None: ...
    def subscribe(self, order_id: str) -> AbstractAsyncContextManager[Subscription]: ...
    async def ping(self) -> bool: ...


class Fanout:
    """The subscribers of this process, by order id: one transport connection serves them all."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[Subscription]] = {}

    def add(self, subscription: Subscription) -> None:
        self._subscribers.setdefault(subscription.order_id, set()).add(subscription)

    def remove(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.order_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.order_id]

    def deliver(self, event: OrderEvent) -> None:
        for subscription in self._subscribers.get(event.order_id, ()):
            subscription.offer(event)

    def deliver_all(self) -> None:
        """Tell every subscriber to re-read its order, e.g. after a transport reconnect."""
        for order_id, subscribers in self._subscribers.items():
            for subscription in subscribers:
                subscription.offer(OrderEvent(order_id, 0))

    def __len__(self) -> int:
        return sum(len(s) for s in self._subscribers.values())


class MemoryTransport:
    def __init__(self) -> None:
        self.fanout = Fanout()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def announce(self, event: OrderEvent) -> None:
        after_commit(lambda: self.publish(event))

    async def publish(self, event: OrderEvent) -> None:
        self.fanout.deliver(event)

    @asynccontextmanager
    async def subscribe(self, order_id: str) -> AsyncIterator[Subscription]:
        subscription = Subscription(order_id)
        self.fanout.add(subscription)
        try:
            yield subscription
        finally:
            self.fanout.remove(subscription)

    async def ping(self) -> bool:
        return True


def transport_for(url: str) -> EventTransport:
    if url.startswith("memory://"):
        return MemoryTransport()
    raise ValueError(f"EVENTS_URL {url!r} is not supported yet; use memory://")


_transport: EventTransport = MemoryTransport()


def use_transport(transport: EventTransport) -> None:
    global _transport
    _transport = transport


def current_transport() -> EventTransport:
    return _transport


async def announce(event: OrderEvent) -> None:
    """Tell subscribers of `event` once the surrounding transaction commits."""
    await _transport.announce(event)
