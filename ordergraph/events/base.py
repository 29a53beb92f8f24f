"""What every event transport shares: the event, this process's fan-out, and the interface.

A transport module (`memory`, `postgres`, `redis`) imports only this one; the package's
`__init__` picks a transport by the scheme of `EVENTS_URL`.

Two kinds of subscriber: one order's (`subscribe`: a queue of its hints), and the whole shop's
(`subscribe_shop`, for staff: the newest hint of each order that changed, coalesced). Every
process listens on one backend channel that already carries every order's events, so the whole
shop is a second fan-out of that same channel, not a second message per change: what a backend
must do for it is to say, after a reconnect, since when it may have missed something
(`alive_at`), so that whole-shop subscribers re-read what changed meanwhile.
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
from ordergraph.light_queue import LightQueue

log = logging.getLogger(__name__)

SUBSCRIBER_QUEUE_SIZE = 64
# Orders a whole-shop subscriber may have waiting (one hint each, however often they changed)
# before it counts as too slow and is dropped.
SHOP_PENDING_LIMIT = 1024
# How a note event marks its note id in a transport message: "<order id>:<version>:note=<id>".
NOTE_MARK = "note="

# The version of a catch-up hint: "you may have missed something, re-read". Real versions
# start at 1.
CATCH_UP = 0


def _number(text: str) -> bool:
    return text.isascii() and text.isdigit()


@dataclass(frozen=True)
class OrderEvent:
    """The order `order_id` is now at `version`; or, when `note` is set, staff wrote note
    `note` on it (the order itself did not change). Only staff hear note events: a shopper's
    subscription is never woken by one (`Subscriber.notes`)."""

    order_id: str
    version: int
    note: int = 0

    def encode(self) -> str:
        text = f"{self.order_id}:{self.version}"
        return f"{text}:{NOTE_MARK}{self.note}" if self.note else text

    @classmethod
    def decode(cls, payload: str | bytes) -> OrderEvent | None:
        """The event in a transport message, or None for a message that is not one of ours."""
        text = payload.decode(errors="replace") if isinstance(payload, bytes) else payload
        order_id, _, version = text.rpartition(":")
        note = 0
        if version.startswith(NOTE_MARK):
            if not _number(number := version.removeprefix(NOTE_MARK)):
                return None
            note = int(number)
            order_id, _, version = order_id.rpartition(":")
        if not order_id or not _number(version):
            return None
        return cls(order_id, int(version), note)


@dataclass(frozen=True)
class Hint:
    """An event as one subscriber received it; `received` is on the `time.monotonic()` clock,
    so that a reader can tell whether a read of the order started after the change was known."""

    event: OrderEvent
    received: float


def _newest(held: Hint, hint: Hint) -> Hint:
    """Two hints of one order as one: what is newest in either, known since the later."""
    event = OrderEvent(
        hint.event.order_id,
        max(held.event.version, hint.event.version),
        max(held.event.note, hint.event.note),
    )
    return Hint(event, max(held.received, hint.received))


class Subscriber:
    """One subscriber's hints for one order, in a bounded queue; note events only if `notes`.

    When the queue is full the subscriber is too slow: it is marked `overflowed`, gets no more
    hints, `on_overflow` (e.g. closing its socket) is called once, and its iteration ends.
    """

    __slots__ = ("notes", "on_overflow", "order_id", "overflowed", "queue")

    def __init__(
        self,
        order_id: str,
        on_overflow: Callable[[], None] | None = None,
        *,
        notes: bool = False,
    ) -> None:
        self.order_id = order_id
        self.notes = notes
        # Not an asyncio.Queue: an idle subscriber keeps this for as long as it lives.
        self.queue: LightQueue[Hint] = LightQueue(SUBSCRIBER_QUEUE_SIZE)
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


@dataclass(frozen=True)
class ShopNews:
    """What a whole-shop subscriber has to look at: the newest hint of each order that changed
    since it last asked, in the order they first changed; and, when the transport lost its
    connection meanwhile, the Unix time since when changes may have been missed."""

    hints: dict[str, Hint]
    missed_since: float | None = None


class ShopSubscriber:
    """Every order's hints (note events included: it is staff's), coalesced: one pending hint
    per order however often it changes, so a burst is one read per order and a quiet
    subscriber holds nothing.

    More than `SHOP_PENDING_LIMIT` orders waiting means it reads too slowly: as a `Subscriber`
    whose queue is full, it is marked `overflowed`, `on_overflow` is called once and its
    iteration ends.
    """

    __slots__ = ("_missed_since", "_pending", "_waiter", "on_overflow", "overflowed")

    def __init__(self, on_overflow: Callable[[], None] | None = None) -> None:
        self._pending: dict[str, Hint] = {}
        self._missed_since: float | None = None
        # Made only while the subscriber waits (an asyncio.Event costs ten times as much).
        self._waiter: asyncio.Future[None] | None = None
        self.overflowed = False
        self.on_overflow = on_overflow

    def offer(self, hint: Hint) -> None:
        if self.overflowed:
            return
        order_id = hint.event.order_id
        held = self._pending.get(order_id)
        if held is None and len(self._pending) >= SHOP_PENDING_LIMIT:
            self.overflowed = True
            self._pending = {}
            self._wake()
            log.warning("dropping a subscriber of the whole shop: too slow to read")
            if self.on_overflow is not None:
                self.on_overflow()
            return
        self._pending[order_id] = hint if held is None else _newest(held, hint)
        self._wake()

    def missed(self, since: float) -> None:
        """The transport may have lost whatever was published from `since` (a Unix time)."""
        if self.overflowed:
            return
        if self._missed_since is None or since < self._missed_since:
            self._missed_since = since
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __len__(self) -> int:
        return len(self._pending)

    async def __anext__(self) -> ShopNews:
        while not (self.overflowed or self._pending or self._missed_since is not None):
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.overflowed:
            raise StopAsyncIteration
        news = ShopNews(self._pending, self._missed_since)
        self._pending, self._missed_since = {}, None
        return news

    def __aiter__(self) -> ShopSubscriber:
        return self


class Fanout:
    """The subscribers of this process, by order id, and those of the whole shop: one
    transport connection serves them all."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._shop: set[ShopSubscriber] = set()

    def add(self, subscriber: Subscriber) -> None:
        self._subscribers.setdefault(subscriber.order_id, set()).add(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        subscribers = self._subscribers.get(subscriber.order_id)
        if subscribers is not None:
            subscribers.discard(subscriber)
            if not subscribers:
                del self._subscribers[subscriber.order_id]

    def add_shop(self, subscriber: ShopSubscriber) -> None:
        self._shop.add(subscriber)

    def remove_shop(self, subscriber: ShopSubscriber) -> None:
        self._shop.discard(subscriber)

    def deliver(self, event: OrderEvent) -> None:
        hint = Hint(event, time.monotonic())
        for subscriber in self._subscribers.get(event.order_id, ()):
            if subscriber.notes or not event.note:
                subscriber.offer(hint)
        for shop in self._shop:
            shop.offer(hint)

    def deliver_all(self, since: float) -> None:
        """Tell every subscriber to re-read its order, and those of the whole shop to re-read
        what changed from `since` (a Unix time) on: after a transport reconnect, a change may
        have been published while no one was listening."""
        received = time.monotonic()
        for order_id, subscribers in self._subscribers.items():
            hint = Hint(OrderEvent(order_id, CATCH_UP), received)
            for subscriber in subscribers:
                subscriber.offer(hint)
        for shop in self._shop:
            shop.missed(since)

    def __len__(self) -> int:
        return sum(len(s) for s in self._subscribers.values()) + len(self._shop)


class EventTransport:
    """The interface every transport offers, and what they share: this process's `Fanout`.

    A transport delivers what it receives with `self.fanout.deliver(event)` (to the order's
    subscribers and to the whole shop's), calls `self.alive()` whenever its backend connection
    is known to work (a message, a ping answered), and `self.reconnected()` whenever it has
    (re)connected, since anything published while it was away is lost: every subscriber
    re-reads its order, and whole-shop subscribers what changed since `alive_at`.

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
                        self.alive()
                        if (event := OrderEvent.decode(payload)) is not None:
                            self.fanout.deliver(event)

                async def publish(self, event: OrderEvent) -> None:
                    await self.client.send("orders", event.encode())
    """

    name = "memory"

    def __init__(self) -> None:
        self.fanout = Fanout()
        self._listener: asyncio.Task[None] | None = None
        # When the backend connection was last known to work (a Unix time).
        self.alive_at = time.time()

    def alive(self) -> None:
        """The backend connection works now: nothing published before this moment was lost."""
        self.alive_at = time.time()

    def reconnected(self) -> None:
        """Connected (again): what was published since `alive_at` may be lost, so every
        subscriber re-reads."""
        self.fanout.deliver_all(self.alive_at)
        self.alive()

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

    def announcement_sql(self, event: OrderEvent) -> tuple[str, list[Any]] | None:
        """For a transport whose backend is the database itself: an SQL expression (and its
        parameters) that announces `event` when the changing transaction's own statement
        evaluates it, saving that transaction a round trip. None: call `announce`."""
        return None

    async def publish(self, event: OrderEvent) -> None:
        """Send `event` to every process's subscribers now."""
        raise NotImplementedError

    @asynccontextmanager
    async def subscribe(
        self,
        order_id: str,
        on_overflow: Callable[[], None] | None = None,
        *,
        notes: bool = False,
    ) -> AsyncIterator[Subscriber]:
        """Hints of one order; of its notes too when `notes` (staff only)."""
        subscriber = Subscriber(order_id, on_overflow, notes=notes)
        self.fanout.add(subscriber)
        try:
            yield subscriber
        finally:
            self.fanout.remove(subscriber)

    @asynccontextmanager
    async def subscribe_shop(
        self, on_overflow: Callable[[], None] | None = None
    ) -> AsyncIterator[ShopSubscriber]:
        """Hints of every order of the shop, notes included (staff only)."""
        subscriber = ShopSubscriber(on_overflow)
        self.fanout.add_shop(subscriber)
        try:
            yield subscriber
        finally:
            self.fanout.remove_shop(subscriber)

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
