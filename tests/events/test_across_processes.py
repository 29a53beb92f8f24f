"""Live updates across processes: two real `ordergraph serve` processes share the test
database; the shopper's socket is held by process A while Stripe's webhook lands on process B.
Every test runs once with `EVENTS_URL=postgres://...` and once with `redis://...`."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from ordergraph.models import Order
from tests.conftest import BACKEND, Harness
from tests.utils.helpers import checked_out_order, make_product, run_ordergraph
from tests.utils.live import (
    GRAPHQL_WS,
    PROTOCOLS,
    REDIS_CHANNEL,
    TRANSPORT_WS,
    Cluster,
    Follower,
    RawSocket,
    ServerProcess,
    eventually,
    kill_postgres_listeners,
    kill_redis_listeners,
    redis_events_url,
    two_processes,
    unique,
)

__all__ = ["redis_events_url"]  # a fixture, used by name

pytestmark = pytest.mark.skipif(
    BACKEND != "postgres", reason="processes share a PostgreSQL database (ORDERGRAPH_TEST_DB)"
)


cluster = two_processes("")


async def _order_on(app: Harness, process: ServerProcess, owner: str) -> str:
    """Check out through `process`; the order is PENDING_PAYMENT."""
    product = await make_product(unique("TEE"), stock=10)
    on_process = dataclasses.replace(app, url=process.url)
    order_id: str = (await checked_out_order(on_process, app.token(owner), product))["orderId"]
    return order_id


async def _pay_through(app: Harness, process: ServerProcess, order_id: str) -> None:
    """Stripe's signed `checkout.session.completed`, delivered to `process`."""
    order = await Order.get(id=order_id)
    assert order.stripe_checkout_session_id
    app.emulator.webhook_url = f"{process.url}/webhooks/stripe"
    delivery = await app.emulator.complete_session(order.stripe_checkout_session_id)
    assert delivery.status_code == 200


async def test_a_webhook_on_b_reaches_subscribers_on_a_over_both_protocols(
    cluster: Cluster, app: Harness
) -> None:
    owner = unique("alice")
    order_id = await _order_on(app, cluster.a, owner)
    token, staff = app.token(owner), app.token(unique("clerk"), staff=True)
    async with (
        Follower(cluster.a.url, token, order_id, TRANSPORT_WS) as modern,
        Follower(cluster.a.url, token, order_id, GRAPHQL_WS) as legacy,
        Follower(cluster.b.url, staff, order_id, TRANSPORT_WS) as back_office,
    ):
        followers = (modern, legacy, back_office)
        for follower in followers:
            assert (await follower.next())["status"] == "PENDING_PAYMENT"

        await _pay_through(app, cluster.b, order_id)

        for follower in followers:
            confirmed = (await follower.until("PAYMENT_CONFIRMED"))[-1]
            assert (confirmed["id"], confirmed["paymentStatus"]) == (order_id, "PAID")
            assert confirmed["history"][-1]["status"] == "PAYMENT_CONFIRMED"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_stranger_is_refused(cluster: Cluster, app: Harness, protocol: str) -> None:
    order_id = await _order_on(app, cluster.a, unique("alice"))
    async with Follower(cluster.a.url, app.token(unique("mallory")), order_id, protocol) as f:
        error = await f.refused()
    assert error["extensions"]["code"] == "NOT_FOUND"
    assert order_id not in str(error)


async def test_subscribing_after_the_change_starts_with_the_current_state(
    cluster: Cluster, app: Harness
) -> None:
    owner = unique("alice")
    order_id = await _order_on(app, cluster.a, owner)
    await _pay_through(app, cluster.b, order_id)
    async with Follower(cluster.a.url, app.token(owner), order_id, GRAPHQL_WS) as follower:
        first = await follower.next()
        assert (first["status"], first["paymentStatus"]) == ("PAYMENT_CONFIRMED", "PAID")


async def test_a_dropped_transport_connection_loses_no_final_state(
    cluster: Cluster, app: Harness, database_url: str
) -> None:
    owner = unique("alice")
    order_id = await _order_on(app, cluster.a, owner)
    async with Follower(cluster.a.url, app.token(owner), order_id, TRANSPORT_WS) as follower:
        assert (await follower.next())["status"] == "PENDING_PAYMENT"

        # Both processes lose their listener; the payment lands while they reconnect.
        if cluster.transport == "redis":
            assert await kill_redis_listeners(REDIS_CHANNEL) == 2
        else:
            assert await kill_postgres_listeners(database_url) == 2
        await _pay_through(app, cluster.b, order_id)

        confirmed = (await follower.until("PAYMENT_CONFIRMED", timeout=20))[-1]
        assert confirmed["paymentStatus"] == "PAID"

    async def ready() -> bool:
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{cluster.a.url}/readyz")
        return response.status_code == 200 and response.json()["transport"] == cluster.transport

    assert await eventually(ready)


async def test_a_change_made_by_the_expiry_command_reaches_subscribers(
    cluster: Cluster, app: Harness
) -> None:
    owner = unique("alice")
    order_id = await _order_on(app, cluster.a, owner)
    async with Follower(cluster.a.url, app.token(owner), order_id, TRANSPORT_WS) as follower:
        assert (await follower.next())["status"] == "PENDING_PAYMENT"
        await Order.filter(id=order_id).update(expires_at=datetime.now(UTC) - timedelta(hours=1))
        returncode, _, stderr = await run_ordergraph("expire-pending", env=cluster.a.env)
        assert returncode == 0, stderr
        assert (await follower.until("CANCELLED"))[-1]["paymentStatus"] == "EXPIRED"


async def test_a_websocket_from_an_origin_not_allowed_is_refused(cluster: Cluster) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await RawSocket.open(cluster.a.url, origin="http://evil.test")
    assert refused.value.response.status_code == 403
    async with await RawSocket.open(cluster.a.url, origin="http://shop.test") as raw:
        assert (await raw.init())["type"] == "connection_ack"
