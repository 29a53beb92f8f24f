"""What every event transport shares: the event, this process's fan-out, and the interface.

A transport module (`memory`, `postgres`, `redis`) imports only this one; the package's
`__init__` picks a transport by the scheme of `EVENTS_URL`.
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
        if not order_id or not (version.isascii() and version.isdigit()):
            return None
        return cls(order_id, int(version))


@dataclass(frozen=True)
class Hint:
    """An event as one subscriber received it; `received` is on the `time.monotonic()` clock,
    so that a reader can tell whether a read of the order started after the change was known."""

    event: OrderEvent
    received: float


class Subscriber:
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

    def __aiter__(self) -> Subscriber:
        return self


class Fanout:
    """The subscribers of this process, by order id: one transport connection serves them all."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[Subscriber]] = {}

    def add(self, subscriber: Subscriber) -> None:
        self._subscribers.setdefault(subscriber.order_id, set()).add(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        subscribers = self._subscribers.get(subscriber.order_id)
        if subscribers is not None:
            subscribers.discard(subscriber)
            if not subscribers:
                del self._subscribers[subscriber.order_id]

    def deliver(self, event: OrderEvent) -> None:
        hint = Hint(event, time.monotonic())
        for subscriber in self._subscribers.get(event.order_id, ()):
            subscriber.offer(hint)

    def deliver_all(self) -> None:
        """Tell every subscriber to re-read its order: after a transport reconnect, a change
        may have been published while no one was listening."""
        received = time.monotonic()
        for order_id, subscribers in self._subscribers.items():
            hint = Hint(OrderEvent(order_id, CATCH_UP), received)
            for subscriber in subscribers:
                subscriber.offer(hint)

    def __len__(self) -> int:
        return sum(len(s) for s in self._subscribers.values())


class EventTransport:
    """The interface every transport offers, and what they share: this process's `Fanout`.

    A transport delivers what it receives with `self.fanout.deliver(event)`, and calls
    `self.fanout.deliver_all()` whenever it has (re)connected, since anything published while
    it was away is lost.

    Example:
        A transport for a backend with its own pub/sub (`connect` and `listen` are the
        backend's)::

            class QueueTransport(EventTransport):
                name = "queue"

                async def start(self) -> None:
                    self.client = await connect()
                    self.listen_in_background(self._listen())

                async def _listen(self) -> None:
                    async for payload in self.client.listen("orders"):
                        if (event := OrderEvent.decode(payload)) is not None:
                            self.fanout.deliver(event)

                async def publish(self, event: OrderEvent) -> None:
                    await self.client.send("orders", event.encode())
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
    ) -> AsyncIterator[Subscriber]:
        subscriber = Subscriber(order_id, on_overflow)
        self.fanout.add(subscriber)
        try:
            yield subscriber
        finally:
            self.fanout.remove(subscriber)

    async def ping(self) -> bool:
        """Whether the backend answers now (for `/readyz`)."""
        return True


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
