"""Order events through PostgreSQL LISTEN/NOTIFY on the service's own database.

`announce` runs `pg_notify` on the connection of the transaction that changes the order, so
PostgreSQL itself delivers the event exactly when that transaction commits, in commit order,
and never for a rollback. Each process listens on one dedicated connection (not one of the
ORM's pool, which would hand it back and lose the LISTEN). A listener that dies (server
restart, terminated backend, network) is noticed by asyncpg's termination callback or by a
ping, replaced with backoff, and then every subscriber is told to re-read its order, since
notifications sent while nobody listened are gone; the whole shop's subscribers re-read what
changed since the last ping the old listener answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg
from tortoise.connection import get_connection

from ordergraph.db import is_postgres
from ordergraph.db.sql import fetch
from ordergraph.events.base import EventTransport, OrderEvent, reconnect_delays, split_channel

log = logging.getLogger(__name__)

DEFAULT_CHANNEL = "ordergraph_orders"
APPLICATION_NAME = "ordergraph-events"
PING_SECONDS = 5.0
TIMEOUT_SECONDS = 5.0

_FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class PostgresTransport(EventTransport):
    name = "postgres"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.dsn, self.channel = split_channel(url, DEFAULT_CHANNEL)
        self._connection: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._lock = asyncio.Lock()  # one query at a time on the listener connection

    async def start(self) -> None:
        database = get_connection("default")
        if not is_postgres(database):
            raise RuntimeError(
                "EVENTS_URL=postgres://... needs a PostgreSQL DATABASE_URL: the notification "
                "is sent by the transaction that changes the order"
            )
        await self._connect()
        assert self._connection is not None
        ours = await self._connection.fetchval("SELECT current_database()")
        _, rows = await database.execute_query("SELECT current_database() AS name")
        if rows[0]["name"] != ours:
            await self.stop()
            raise RuntimeError(
                f"EVENTS_URL names database {ours!r} but DATABASE_URL is {rows[0]['name']!r}: "
                "LISTEN must be on the database whose transactions send the notifications"
            )
        self.listen_in_background(self._watch())

    async def stop(self) -> None:
        await super().stop()
        await self._close_connection()

    async def announce(self, event: OrderEvent) -> None:
        """Inside a transaction the ORM's connection is the transaction's, so PostgreSQL holds
        the notification until that transaction commits, and drops it on a rollback."""
        await self.publish(event)

    def announcement_sql(self, event: OrderEvent) -> tuple[str, list[Any]]:
        return "pg_notify(?, ?)", [self.channel, event.encode()]

    async def publish(self, event: OrderEvent) -> None:
        expression, params = self.announcement_sql(event)
        await fetch(get_connection("default"), f"SELECT {expression}", *params)

    async def ping(self) -> bool:
        listener = self._connection
        if listener is None or self._lost.is_set() or listener.is_closed():
            return False
        asked = time.time()
        try:
            async with self._lock:
                await listener.fetchval("SELECT 1", timeout=TIMEOUT_SECONDS)
        except _FAILURES:
            return False
        if listener is self._connection:
            self.alive_at = max(self.alive_at, asked)
        return True

    async def _connect(self) -> None:
        listener = await asyncpg.connect(
            self.dsn,
            timeout=TIMEOUT_SECONDS,
            server_settings={"application_name": APPLICATION_NAME},
        )
        try:
            await listener.add_listener(self.channel, self._on_notification)
        except BaseException:
            listener.terminate()
            raise
        listener.add_termination_listener(self._on_termination)
        self._lost.clear()
        self._connection = listener

    async def _close_connection(self) -> None:
        listener, self._connection = self._connection, None
        if listener is not None and not listener.is_closed():
            try:
                await asyncio.wait_for(listener.close(), TIMEOUT_SECONDS)
            except _FAILURES:
                listener.terminate()

    def _on_notification(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        event = OrderEvent.decode(payload)
        if event is None:
            log.warning("ignoring a notification on %s that is not an order event", channel)
            return
        self.alive()
        self.fanout.deliver(event)

    def _on_termination(self, connection: Any) -> None:
        if connection is self._connection:
            self._lost.set()

    async def _watch(self) -> None:
        """Ping the listener; once it is gone, replace it and have subscribers catch up."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), PING_SECONDS)
            if not self._lost.is_set() and await self.ping():
                continue
            log.warning("lost the PostgreSQL listener for order events; reconnecting")
            await self._close_connection()
            await self._reconnect()
            self.reconnected()

    async def _reconnect(self) -> None:
        for delay in reconnect_delays():
            try:
                await self._connect()
            except _FAILURES as exc:
                log.warning("PostgreSQL listener: %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
            else:
                log.info("PostgreSQL listener for order events is back")
                return
