"""Order events: a hint that an order changed, for whoever follows it live.

An event carries only the order id and its version. Subscribers re-read the order, so a lost
or repeated hint never shows a wrong state, only a late one. The transport is chosen by
`EVENTS_URL`:

- `memory://` delivers within this process (one process, or tests);
- `postgres://...` is LISTEN/NOTIFY on the service's own database (`events_postgres`);
- `redis://...` is Redis pub/sub (`events_redis`).

Whatever the transport, each process holds one backend connection and fans the hints out to
its own subscribers (`Fanout`), each of which has a bounded queue.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ordergraph.db import after_commit
from ordergraph.settings import EVENTS_SCHEMES

log = logging.getLogger(__name__)

SUBSCRIBER_QUEUE_SIZE = 64

# The version of a catch-up hint: "you may have missed something, re-read". Real versions
# start at 1.
CATCH_UP = 0


@dataclass(frozen=True)
class OrderEvent:
    order_id: str
    version: int

    def encode(self) -> str:
        return f"{self.order_id}:{self.version}"

    @classmethod
    def decode(cls, payload: str | bytes) -> OrderEvent | None:
        """The event in a transport message, or None for a message that is not one of ours."""
        text = payload.decode(errors="replace") if isinstance(payload, bytes) else payload
        order_id, _, version = text.rpartition(":")
        if not order_id or not version.isdigit():
            return None
        return cls(order_id, int(version))


@dataclass(frozen=True)
class Hint:
    """An event as one subscriber received it; `received` is on the `time.monotonic()` clock,
    so that a reader can tell whether a read of the order started after the change was known."""

    event: OrderEvent
    received: float


class Subscription:
    """One subscriber's hints for one order, in a bounded queue.

    When the queue is full the subscriber is too slow: it is marked `overflowed`, gets no more
    hints, `on_overflow` (e.g. closing its socket) is called once, and its iteration ends.
    """

    def __init__(self, order_id: str, on_overflow: Callable[[], None] | None = None) -> None:
        self.order_id = order_id
        self.queue: asyncio.Queue[Hint] = asyncio.Queue(SUBSCRIBER_QUEUE_SIZE)
        self.overflowed = False
        self.on_overflow = on_overflow

    def offer(self, hint: Hint) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(hint)
        except asyncio.QueueFull:
            self.overflowed = True
            log.warning("dropping a subscriber of order %s: too slow to read", self.order_id)
            if self.on_overflow is not None:
                self.on_overflow()

    async def __anext__(self) -> Hint:
        if self.overflowed:
            raise StopAsyncIteration
        return await self.queue.get()

    def __aiter__(self) -> Subscription:
        return self


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
        hint = Hint(event, time.monotonic())
        for subscription in self._subscribers.get(event.order_id, ()):
            subscription.offer(hint)

    def deliver_all(self) -> None:
        """Tell every subscriber to re-read its order: after a transport reconnect, a change
        may have been published while no one was listening."""
        received = time.monotonic()
        for order_id, subscribers in self._subscribers.items():
            hint = Hint(OrderEvent(order_id, CATCH_UP), received)
            for subscription in subscribers:
                subscription.offer(hint)

    def __len__(self) -> int:
        return sum(len(s) for s in self._subscribers.values())


class EventTransport:
    """The interface every transport offers, and what they share: this process's `Fanout`.

    A transport delivers what it receives with `self.fanout.deliver(event)`, and calls
    `self.fanout.deliver_all()` whenever it has (re)connected, since anything published while
    it was away is lost.
    """

    name = "memory"

    def __init__(self) -> None:
        self.fanout = Fanout()
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the backend connection; until `stop`, keep it open."""

    async def stop(self) -> None:
        """Stop listening; a transport then closes its connections."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with suppress(asyncio.CancelledError):
                await listener

    def listen_in_background(self, listen: Coroutine[Any, Any, None]) -> None:
        """Run the loop that keeps the backend connection (and reconnects it) until `stop`."""
        self._listener = asyncio.create_task(listen, name=f"ordergraph-events-{self.name}")

    async def announce(self, event: OrderEvent) -> None:
        """Called inside the transaction that changes the order: deliver at commit, never on a
        rollback. By default, publish after commit; a transport whose backend is the database
        itself can instead let the database hold the message until commit."""
        after_commit(lambda: self.publish(event))

    async def publish(self, event: OrderEvent) -> None:
        """Send `event` to every process's subscribers now."""
        raise NotImplementedError

    @asynccontextmanager
    async def subscribe(
        self, order_id: str, on_overflow: Callable[[], None] | None = None
    ) -> AsyncIterator[Subscription]:
        subscription = Subscription(order_id, on_overflow)
        self.fanout.add(subscription)
        try:
            yield subscription
        finally:
            self.fanout.remove(subscription)

    async def ping(self) -> bool:
        """Whether the backend answers now (for `/readyz`)."""
        return True


class MemoryTransport(EventTransport):
    async def publish(self, event: OrderEvent) -> None:
        self.fanout.deliver(event)


def transport_for(url: str) -> EventTransport:
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryTransport()
    if scheme in ("postgres", "postgresql"):
        from ordergraph.events_postgres import PostgresTransport

        return PostgresTransport(url)
    if scheme in ("redis", "rediss"):
        from ordergraph.events_redis import RedisTransport

        return RedisTransport(url)
    raise ValueError(f"EVENTS_URL must start with one of {', '.join(EVENTS_SCHEMES)}, not {url!r}")


def split_channel(url: str, default: str) -> tuple[str, str]:
    """Take our `channel` parameter out of a transport URL: (URL for the client, channel)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    channel = next((value for key, value in query if key == "channel"), "") or default
    rest = urlencode([(key, value) for key, value in query if key != "channel"])
    return urlunsplit(parts._replace(query=rest)), channel


def reconnect_delays(first: float = 0.1, cap: float = 5.0) -> Iterator[float]:
    """Exponential backoff with jitter, so that many processes do not reconnect in step."""
    delay = first
    while True:
        yield delay * random.uniform(0.5, 1.0)
        delay = min(delay * 2, cap)


_transport: EventTransport = MemoryTransport()


def use_transport(transport: EventTransport) -> EventTransport:
    """Install `transport` for this process; returns the one it replaces."""
    global _transport
    previous, _transport = _transport, transport
    return previous


def current_transport() -> EventTransport:
    return _transport


@asynccontextmanager
async def running(url: str) -> AsyncIterator[EventTransport]:
    """Start the transport `url` names and install it until the block ends.

    For the app's lifespan and for commands that change orders (`expire-pending`), so that
    every change reaches subscribers whichever process makes it.
    """
    transport = transport_for(url)
    await transport.start()
    previous = use_transport(transport)
    try:
        yield transport
    finally:
        use_transport(previous)
        await transport.stop()


async def announce(event: OrderEvent) -> None:
    """Tell subscribers of `event` once the surrounding transaction commits."""
    await _transport.announce(event)
