"""Outgoing webhooks over time, sent by the running service to real receivers on loopback: a
delivery whose retry window has closed is DEAD after its next failure; a redirect is a failure,
never followed; an endless-looking answer is read only up to the limit; a paused endpoint keeps
what it is sent and gets it, in order, once resumed; a deleted one loses its deliveries; one
order's deliveries to one endpoint are never in flight together while other orders' are; and
the delay histogram counts each delivery once.

Metrics are read from this process's registry (the service under test runs in it); a test
compares them before and after, so other tests' counts do not matter.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ordergraph.models import DeliveryStatus, Order, Product, WebhookDelivery
from ordergraph.outgoing_webhooks import endpoints
from ordergraph.outgoing_webhooks.events import wake_sender
from tests.conftest import Harness, Served
from tests.utils.helpers import checked_out_order, make_product
from tests.utils.receivers import Received, Receiver, deliveries_written, receiving

CANCEL = "mutation($id: ID!) { cancelOrder(orderId: $id) { userErrors { code message } } }"
AWAIT_SHIPMENT = (
    "mutation($id: ID!) { markOrderAwaitingShipment(orderId: $id) { userErrors { code } } }"
)


def deliveries(outcome: str) -> float:
    value = REGISTRY.get_sample_value("ordergraph_webhook_deliveries_total", {"outcome": outcome})
    return value or 0.0


def delays() -> tuple[float, float]:
    """The delay histogram's count and sum."""
    count = REGISTRY.get_sample_value("ordergraph_webhook_delivery_delay_seconds_count")
    total = REGISTRY.get_sample_value("ordergraph_webhook_delivery_delay_seconds_sum")
    return count or 0.0, total or 0.0


async def register(app: Harness, url: str, events: list[str] | None = None) -> str:
    endpoint, _ = await endpoints.create_endpoint(
        url, events or ["*"], actor="staff:sam", settings=app.settings
    )
    return str(endpoint.id)


async def place(app: Harness, product: Product, shopper: str = "alice") -> str:
    placed = await checked_out_order(app, app.token(shopper), product)
    return str(placed["orderId"])


async def cancel(app: Harness, order_id: str, shopper: str = "alice") -> None:
    body = await app.gql(CANCEL, {"id": order_id}, token=app.token(shopper))
    assert body["data"]["cancelOrder"]["userErrors"] == [], body


async def pay(app: Harness, order_id: str) -> None:
    order = await Order.get(id=order_id)
    assert order.stripe_checkout_session_id
    delivery = await app.emulator.complete_session(order.stripe_checkout_session_id)
    assert delivery.status_code == 200, delivery.body


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll the async `check` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {check.__name__}")
        await asyncio.sleep(0.02)


def order_of(received: Received) -> str:
    order_id: str = received.event["data"]["order"]["id"]
    return order_id


def by_order(received: list[Received]) -> dict[str, list[str]]:
    types: dict[str, list[str]] = defaultdict(list)
    for r in received:
        types[order_of(r)].append(r.event["type"])
    return dict(types)


async def fail(_: Received) -> int:
    return 500


@pytest.mark.parametrize("window", ["retry_until", "created_at"])
async def test_a_delivery_past_its_retry_window_is_dead_after_its_next_failure(
    app: Harness, window: str
) -> None:
    mug = await make_product("MUG", stock=5)
    dead, retried = deliveries("dead"), deliveries("retried")
    async with receiving(fail) as receiver:
        endpoint_id = await register(app, receiver.url, ["order.created"])
        await place(app, mug)
        await receiver.wait_for(lambda got: len(got) >= 1)
        delivery = await WebhookDelivery.get(endpoint_id=endpoint_id)
        assert delivery.status == DeliveryStatus.PENDING  # failed, to be tried again
        # The window closes: set explicitly (as a replay does), or the default one of a
        # delivery written four days ago (WEBHOOK_RETRY_HOURS is 72). The next attempt is made
        # due at once, rather than at the sender's next pass.
        now = datetime.now(UTC)
        if window == "retry_until":
            closed = {"retry_until": now - timedelta(minutes=1)}
        else:
            closed = {"created_at": now - timedelta(days=4)}
        await WebhookDelivery.filter(id=delivery.id).update(next_attempt_at=now, **closed)
        await wake_sender()

        async def is_dead() -> bool:
            await delivery.refresh_from_db()
            return delivery.status == DeliveryStatus.DEAD

        await until(is_dead)
        await asyncio.sleep(0.3)  # nothing more is tried
        attempts = len(receiver.received)
    await delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DEAD
    assert delivery.attempts == attempts
    assert (delivery.response_status, delivery.last_error) == (500, "HTTP 500")
    assert delivery.delivered_at is None and delivery.claim is None
    assert [r.delivery for r in receiver.received] == [
        (str(delivery.id), n) for n in range(1, attempts + 1)
    ]
    # The failures before the window closed were retried; the one after it was the last.
    assert deliveries("dead") == dead + 1
    assert deliveries("retried") == retried + attempts - 1


@asynccontextmanager
async def redirecting(status: int, location: str) -> AsyncIterator[Receiver]:
    """A receiver that answers every delivery with `status` and a Location header."""

    async def answer(_: Received) -> int:
        return status

    receiver = Receiver(answer=answer)

    async def handle(request: Request) -> Response:
        response = await receiver.handle(request)
        response.headers["Location"] = location
        return response

    async with Served(Starlette(routes=[Route("/hooks", handle, methods=["POST"])])) as base:
        receiver.url = base + "/hooks"
        yield receiver


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_a_failure_and_is_not_followed(app: Harness, status: int) -> None:
    mug = await make_product("MUG", stock=5)
    async with receiving() as elsewhere, redirecting(status, elsewhere.url) as receiver:
        endpoint_id = await register(app, receiver.url, ["order.created"])
        await place(app, mug)

        async def first_outcome() -> WebhookDelivery | None:
            return await WebhookDelivery.get_or_none(
                endpoint_id=endpoint_id, last_error__isnull=False
            )

        # Recorded once the attempt is over: a sender that followed would have done so by now.
        delivery = await until(first_outcome)
        await endpoints.delete_endpoint(endpoint_id)  # no more attempts
    assert delivery.status == DeliveryStatus.PENDING
    assert (delivery.response_status, delivery.last_error) == (status, f"HTTP {status}")
    assert delivery.delivered_at is None
    assert receiver.received[0].delivery == (str(delivery.id), 1)
    assert elsewhere.received == []


async def test_a_huge_answer_is_read_only_up_to_the_limit(app: Harness) -> None:
    """The receiver streams 10 MB slowly: read to its end it would take longer than the
    sender's timeout (2 s), and the attempt would fail. The sender stops reading after a few
    kilobytes: the delivery is DELIVERED on the first attempt, at once."""
    chunk = b"x" * 65536
    chunks = 160  # 10 MiB
    produced = 0
    finished = False
    receiver = Receiver()

    async def body() -> AsyncIterator[bytes]:
        nonlocal produced, finished
        for _ in range(chunks):
            produced += 1
            yield chunk
            await asyncio.sleep(0.02)
        finished = True

    async def handle(request: Request) -> Response:
        await receiver.handle(request)
        return StreamingResponse(body(), status_code=200, media_type="text/plain")

    mug = await make_product("MUG", stock=5)
    async with Served(Starlette(routes=[Route("/hooks", handle, methods=["POST"])])) as base:
        receiver.url = base + "/hooks"
        endpoint_id = await register(app, receiver.url, ["order.created"])
        started = time.monotonic()
        await place(app, mug)

        async def delivered() -> WebhookDelivery | None:
            return await WebhookDelivery.get_or_none(
                endpoint_id=endpoint_id, status=DeliveryStatus.DELIVERED
            )

        delivery = await until(delivered, timeout=5)
        took = time.monotonic() - started
    assert (delivery.attempts, delivery.response_status) == (1, 200)
    assert len(receiver.received) == 1
    assert took < 2, took  # less than the sender's timeout: it did not wait for the body
    assert not finished and produced < chunks  # the sender hung up; the rest was never sent


async def test_a_paused_endpoint_gets_everything_queued_meanwhile_once_resumed_in_order(
    app: Harness,
) -> None:
    mug = await make_product("MUG", stock=10)
    staff = app.token("sam", staff=True)
    async with receiving() as paused, receiving() as live:
        paused_id = await register(app, paused.url)
        await register(app, live.url)
        await endpoints.set_endpoint_active(paused_id, False)

        first = await place(app, mug, "alice")
        second = await place(app, mug, "bob")
        await pay(app, first)
        await cancel(app, second, "bob")
        body = await app.gql(AWAIT_SHIPMENT, {"id": first}, token=staff)
        assert body["data"]["markOrderAwaitingShipment"]["userErrors"] == [], body
        # The live endpoint heard of all five changes meanwhile; the paused one of none.
        await live.wait_for(lambda got: len(got) == 5)
        await asyncio.sleep(0.2)
        assert paused.received == []
        waiting = await WebhookDelivery.filter(endpoint_id=paused_id).order_by("id")
        assert [(d.status, d.attempts) for d in waiting] == [(DeliveryStatus.PENDING, 0)] * 5

        await endpoints.set_endpoint_active(paused_id, True)
        await paused.wait_for(lambda got: len(got) == 5, timeout=5)
        await asyncio.sleep(0.3)  # and nothing more
    expected = {
        first: ["order.created", "order.paid", "order.status_changed"],
        second: ["order.created", "order.cancelled"],
    }
    assert by_order(live.received) == expected
    assert by_order(paused.received) == expected
    # The same events (ids), each once, in the order they were written for each order.
    for order_id in expected:
        ids = [r.event["id"] for r in paused.received if order_of(r) == order_id]
        assert ids == [r.event["id"] for r in live.received if order_of(r) == order_id]
    assert all(r.delivery[1] == 1 for r in paused.received)
    rows = await WebhookDelivery.filter(endpoint_id=paused_id)
    assert {(d.status, d.attempts) for d in rows} == {(DeliveryStatus.DELIVERED, 1)}


async def test_a_deleted_endpoint_loses_its_pending_deliveries(app: Harness) -> None:
    """Deleted while its first delivery is in flight and the next one waits for it: both rows
    go, the answer that comes back afterwards records nothing, and nothing more is sent."""
    mug = await make_product("MUG", stock=10)
    release = asyncio.Event()
    delivered = deliveries("delivered")

    async def hang(_: Received) -> int:
        await release.wait()
        return 200

    async with receiving(hang) as doomed, receiving() as kept:
        doomed_id = await register(app, doomed.url)
        kept_id = await register(app, kept.url)
        order_id = await place(app, mug)
        await cancel(app, order_id)
        try:  # a failure here must not leave the receiver's answer hanging
            await doomed.wait_for(lambda got: len(got) == 1)
            await deliveries_written()
            assert await WebhookDelivery.filter(endpoint_id=doomed_id).count() == 2

            async def kept_done() -> bool:  # (the metric is counted after the row is written)
                return deliveries("delivered") == delivered + 2

            await until(kept_done)

            await endpoints.delete_endpoint(doomed_id)
            assert await WebhookDelivery.filter(endpoint_id=doomed_id).count() == 0
        finally:
            release.set()

        async def answered() -> bool:
            return doomed.in_flight == 0

        await until(answered)
        await asyncio.sleep(0.3)
    assert len(doomed.received) == 1
    assert deliveries("delivered") == delivered + 2  # the late 200 was not recorded
    assert [r.event["type"] for r in kept.received] == ["order.created", "order.cancelled"]
    assert await WebhookDelivery.filter(endpoint_id=kept_id).count() == 2
    assert await WebhookDelivery.filter(status=DeliveryStatus.DELIVERED).count() == 2


async def test_one_order_at_a_time_per_endpoint_while_orders_go_side_by_side(
    app: Harness,
) -> None:
    """Four orders, each created then cancelled, queued while the endpoint is paused. Once it
    is resumed, the four first deliveries are held by the receiver until all four are in flight
    together; no order ever has two in flight."""
    orders_count = 4
    mug = await make_product("MUG", stock=10)
    in_flight: Counter[str] = Counter()
    most: Counter[str] = Counter()
    together = asyncio.Event()

    async def track(got: Received) -> int:
        order_id = order_of(got)
        in_flight[order_id] += 1
        most[order_id] = max(most[order_id], in_flight[order_id])
        if sum(in_flight.values()) >= orders_count:
            together.set()
        try:
            try:
                await asyncio.wait_for(together.wait(), timeout=1.5)
            except TimeoutError:
                pass
            await asyncio.sleep(0.02)
            return 200
        finally:
            in_flight[order_id] -= 1

    async with receiving(track) as receiver:
        endpoint_id = await register(app, receiver.url)
        await endpoints.set_endpoint_active(endpoint_id, False)
        orders = []
        for n in range(orders_count):
            order_id = await place(app, mug, f"shopper-{n}")
            await cancel(app, order_id, f"shopper-{n}")
            orders.append(order_id)
        await endpoints.set_endpoint_active(endpoint_id, True)
        await receiver.wait_for(lambda got: len(got) == 2 * orders_count)
    assert receiver.most_in_flight == orders_count
    assert set(most) == set(orders) and set(most.values()) == {1}
    assert by_order(receiver.received) == {
        order_id: ["order.created", "order.cancelled"] for order_id in orders
    }
    # All the first deliveries arrived before any second one.
    firsts = [r.event["type"] for r in receiver.received[:orders_count]]
    assert firsts == ["order.created"] * orders_count


async def test_the_delay_histogram_counts_each_delivery_once(app: Harness) -> None:
    """Three deliveries, each failing once before it goes through: three observations (one per
    delivery, not per attempt), each at least the time since the event was written."""
    mug = await make_product("MUG", stock=10)
    tried: set[str] = set()

    async def once_then_ok(got: Received) -> int:
        delivery_id, _ = got.delivery
        if delivery_id not in tried:
            tried.add(delivery_id)
            return 503
        return 200

    count, total = delays()
    delivered, retried = deliveries("delivered"), deliveries("retried")
    async with receiving(once_then_ok) as receiver:
        endpoint_id = await register(app, receiver.url, ["order.created"])
        for n in range(3):
            await place(app, mug, f"shopper-{n}")

        async def all_delivered() -> bool:  # (counted once the row is written)
            return deliveries("delivered") >= delivered + 3

        await until(all_delivered)
        await asyncio.sleep(0.2)  # and nothing more
    rows = await WebhookDelivery.filter(endpoint_id=endpoint_id)
    assert {(d.status, d.attempts) for d in rows} == {(DeliveryStatus.DELIVERED, 2)}
    assert len(rows) == 3
    assert len(receiver.received) == 6
    new_count, new_total = delays()
    assert new_count == count + 3
    assert deliveries("delivered") == delivered + 3
    assert deliveries("retried") == retried + 3
    # Each delay covers at least the failed attempt and the wait before the retry (~50 ms).
    assert new_total - total >= 3 * 0.04
    slowest = max(d.delivered_at - d.created_at for d in rows if d.delivered_at is not None)
    assert new_total - total <= 3 * slowest.total_seconds() + 0.1
