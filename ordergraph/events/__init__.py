"""Order events: a hint that an order changed, for whoever follows it live.

An event carries only the order id and its version. Subscribers re-read the order, so a lost
or repeated hint never shows a wrong state, only a late one. The transport is chosen by
`EVENTS_URL`:

- `memory://` delivers within this process (one process, or tests);
- `postgres://...` is LISTEN/NOTIFY on the service's own database (`events.postgres`);
- `redis://...` is Redis pub/sub (`events.redis`).

Whatever the transport, each process holds one backend connection and fans the hints out to
its own subscribers (`Fanout`): those of one order, each with a bounded queue, and those of
the whole shop (staff), each holding at most one pending hint per order.

A staff note is announced as a note event (`OrderEvent.note`): it carries the note's id, never
its text, and reaches only staff (`subscribe(..., notes=True)` and `subscribe_shop`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from ordergraph.events.base import (
    CATCH_UP,
    SHOP_PENDING_LIMIT,
    SUBSCRIBER_QUEUE_SIZE,
    EventTransport,
    Fanout,
    Hint,
    OrderEvent,
    ShopNews,
    ShopSubscriber,
    Subscriber,
    reconnect_delays,
    split_channel,
)
from ordergraph.events.memory import MemoryTransport
from ordergraph.settings import EVENTS_SCHEMES

__all__ = [
    "CATCH_UP",
    "SHOP_PENDING_LIMIT",
    "SUBSCRIBER_QUEUE_SIZE",
    "EventTransport",
    "Fanout",
    "Hint",
    "MemoryTransport",
    "OrderEvent",
    "ShopNews",
    "ShopSubscriber",
    "Subscriber",
    "announce",
    "announcement_sql",
    "current_transport",
    "reconnect_delays",
    "running",
    "split_channel",
    "transport_for",
    "use_transport",
]


def transport_for(url: str) -> EventTransport:
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryTransport()
    if scheme in ("postgres", "postgresql"):
        from ordergraph.events.postgres import PostgresTransport

        return PostgresTransport(url)
    if scheme in ("redis", "rediss"):
        from ordergraph.events.redis import RedisTransport

        return RedisTransport(url)
    raise ValueError(f"EVENTS_URL must start with one of {', '.join(EVENTS_SCHEMES)}, not {url!r}")


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


def announcement_sql(event: OrderEvent) -> tuple[str, list[Any]] | None:
    """An SQL expression that does what `announce` does, for the caller's own statement (see
    `EventTransport.announcement_sql`), or None when the transport cannot."""
    return _transport.announcement_sql(event)
