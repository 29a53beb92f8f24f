"""The event transports against real backends: what reaches a subscriber, when (at commit,
never for a rollback, in commit order), and what happens when the backend connection drops.
Each test runs on `memory://`, on PostgreSQL LISTEN/NOTIFY and on Redis pub/sub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from ordergraph import events
from ordergraph.db import transaction
from ordergraph.domain.errors import BusinessError
from ordergraph.domain.order_state import change_order, lock_order
from ordergraph.events import CATCH_UP, EventTransport, MemoryTransport, OrderEvent, Subscriber
from ordergraph.events import redis as events_redis
from ordergraph.events.postgres import PostgresTransport
from ordergraph.events.redis import RedisTransport
from ordergraph.models import Order, OrderStatus, PaymentStatus
from tests.conftest import BACKEND, PG_ADMIN_DSN, Harness
from tests.utils.helpers import checked_out_order, make_product
from tests.utils.live import (
    REDIS_URL,
    kill_postgres_listeners,
    kill_redis_listeners,
    redis_events_url,
)

__all__ = ["redis_events_url"]  # a fixture, used by name

KINDS = ("memory", "postgres", "redis")


@pytest.fixture(params=KINDS)
async def transport(
    request: pytest.FixtureRequest, app: Harness, database_url: str
) -> AsyncIterator[EventTransport]:
    kind = request.param
    made: EventTransport
    if kind == "memory":
        made = MemoryTransport()
    elif kind == "postgres":
        if BACKEND != "postgres":
            pytest.skip("needs PostgreSQL (run with ORDERGRAPH_TEST_DB=postgres)")
        made = PostgresTransport(database_url)
    else:
        made = RedisTransport(request.getfixturevalue("redis_events_url"))
    await made.start()
    try:
        yield made
    finally:
        await made.stop()


async def _next(subscription: Subscriber, timeout: float = 5.0) -> OrderEvent:
    return (await asyncio.wait_for(anext(subscription), timeout)).event


async def _nothing(subscription: Subscriber, seconds: float = 0.3) -> bool:
    await asyncio.sleep(seconds)
    return subscription.queue.empty()


async def test_a_hint_reaches_the_subscribers_of_its_order_only(
    transport: EventTransport,
) -> None:
    async with (
        transport.subscribe("o1") as first,
        transport.subscribe("o1") as second,
        transport.subscribe("o2") as other,
    ):
        await transport.publish(OrderEvent("o1", 2))
        assert await _next(first) == OrderEvent("o1", 2)
        assert await _next(second) == OrderEvent("o1", 2)
        assert await _nothing(other)
    assert len(transport.fanout) == 0


async def test_announce_delivers_at_commit_and_never_for_a_rollback(
    transport: EventTransport,
) -> None:
    async with transport.subscribe("o1") as subscription:
        async with transaction():
            await transport.announce(OrderEvent("o1", 2))
            assert await _nothing(subscription)
        assert await _next(subscription) == OrderEvent("o1", 2)

        with pytest.raises(RuntimeError):
            async with transaction():
                await transport.announce(OrderEvent("o1", 3))
                raise RuntimeError("roll back")
        async with transaction():
            with pytest.raises(RuntimeError):
                async with transaction(savepoint=True):  # rolled back on its own
                    await transport.announce(OrderEvent("o1", 4))
                    raise RuntimeError("roll back the savepoint")
            await transport.announce(OrderEvent("o1", 5))
        assert await _next(subscription) == OrderEvent("o1", 5)
        assert await _nothing(subscription)


async def test_an_order_change_is_announced_once_at_commit_and_a_lost_race_never(
    transport: EventTransport, app: Harness
) -> None:
    """Through `change_order`, which on PostgreSQL sends the notification from the change's
    own statement: a change that loses the version race, caught and committed, tells no one."""
    product = await make_product("TEE-EVENTS", stock=5)
    order_id = (await checked_out_order(app, app.token("alice"), product))["orderId"]
    stale = await Order.get(id=order_id)
    previous = events.use_transport(transport)
    try:
        async with transport.subscribe(order_id) as subscription:
            async with transaction():
                order = await lock_order(order_id)
                assert order is not None
                await change_order(
                    order, payment_status=PaymentStatus.PROCESSING, reason="t", actor="t"
                )
                assert await _nothing(subscription)
            assert await _next(subscription) == OrderEvent(order_id, 2)

            async with transaction():
                with pytest.raises(BusinessError):
                    await change_order(stale, status=OrderStatus.CANCELLED, reason="t", actor="t")
            assert await _nothing(subscription)
    finally:
        events.use_transport(previous)
    assert (await Order.get(id=order_id)).version == 2


async def test_hints_arrive_in_commit_order(transport: EventTransport) -> None:
    async with transport.subscribe("o1") as subscription:
        for version in range(2, 12):
            async with transaction():
                await transport.announce(OrderEvent("o1", version))
        assert [(await _next(subscription)).version for _ in range(10)] == list(range(2, 12))


async def test_a_message_that_is_not_an_event_is_ignored(transport: EventTransport) -> None:
    async with transport.subscribe("o1") as subscription:
        await _send_raw(transport, "not an order event")
        await transport.publish(OrderEvent("o1", 2))
        assert await _next(subscription) == OrderEvent("o1", 2)


async def _send_raw(transport: EventTransport, payload: str) -> None:
    if isinstance(transport, PostgresTransport):
        connection = await asyncpg.connect(transport.dsn)
        try:
            await connection.execute("SELECT pg_notify($1, $2)", transport.channel, payload)
        finally:
            await connection.close()
    elif isinstance(transport, RedisTransport):
        client = Redis.from_url(transport.url)
        try:
            await client.publish(transport.channel, payload)
        finally:
            await client.aclose()


@pytest.mark.parametrize("transport", ["postgres", "redis"], indirect=True)
async def test_a_dropped_connection_is_replaced_and_every_subscriber_catches_up(
    transport: EventTransport,
) -> None:
    assert await transport.ping()
    async with transport.subscribe("o1") as first, transport.subscribe("o2") as second:
        assert await _drop_listener(transport) >= 1
        # Whatever was published while no one listened is gone: every subscriber re-reads.
        assert await _next(first, timeout=15) == OrderEvent("o1", CATCH_UP)
        assert await _next(second) == OrderEvent("o2", CATCH_UP)
        assert await transport.ping()
        await transport.publish(OrderEvent("o1", 7))
        assert await _next(first) == OrderEvent("o1", 7)


async def _drop_listener(transport: EventTransport) -> int:
    if isinstance(transport, RedisTransport):
        return await kill_redis_listeners(transport.channel)
    assert isinstance(transport, PostgresTransport)
    return await kill_postgres_listeners(transport.dsn)


@pytest.mark.skipif(BACKEND != "sqlite", reason="the SQLite run's refusal")
async def test_postgres_events_need_a_postgres_database(app: Harness) -> None:
    with pytest.raises(RuntimeError, match="PostgreSQL DATABASE_URL"):
        await PostgresTransport("postgres://root@127.0.0.1:5432/test").start()


@pytest.mark.skipif(BACKEND != "postgres", reason="needs PostgreSQL")
async def test_postgres_events_must_listen_on_the_service_database(app: Harness) -> None:
    other = PostgresTransport(PG_ADMIN_DSN)
    with pytest.raises(RuntimeError, match="LISTEN must be on the database"):
        await other.start()
    assert not await other.ping()


async def test_redis_down_at_start_is_waited_for_and_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(events_redis, "FIRST_CONNECT_SECONDS", 0.2)
    nowhere = RedisTransport(f"{REDIS_URL.rsplit(':', 1)[0]}:1/0")
    await nowhere.start()
    try:
        assert not await nowhere.ping()
    finally:
        await nowhere.stop()
