"""Outgoing webhooks delivered by the running service to real HTTP receivers on loopback:
every event type, signed; retries in order per order; a receiver that hangs; replay; a change
that rolled back. (Processes killed or side by side: test_processes.py.)"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from ordergraph.db import transaction
from ordergraph.domain.order_state import change_order, lock_order
from ordergraph.models import (
    DeliveryStatus,
    Order,
    OrderStatus,
    PaymentStatus,
    Product,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from ordergraph.outgoing_webhooks import deliveries, endpoints
from tests.conftest import Harness
from tests.utils.helpers import add_to_cart, checkout, make_product
from tests.utils.live import eventually
from tests.utils.receivers import Received, receiving

STAFF_ACTION = "mutation($id: ID!) { %s(orderId: $id) { userErrors { code message } } }"
SHIP = """mutation($id: ID!) {
  markOrderShipped(orderId: $id, trackingNumber: "1Z999", carrier: "UPS") {
    userErrors { code message } } }"""
REQUEST = """mutation($id: ID!, $lines: [ReturnLineInput!]) {
  requestWithdrawal(orderId: $id, lines: $lines) { orderReturn { id } userErrors { code } } }"""
CONFIRM = """mutation($id: ID!) {
  confirmWithdrawal(returnId: $id) { orderReturn { id } userErrors { code } } }"""
RECEIVE = """mutation($id: ID!) {
  receiveReturn(returnId: $id) { orderReturn { status } userErrors { code } } }"""
CANCEL = """mutation($id: ID!) { cancelOrder(orderId: $id) { userErrors { code message } } }"""


async def register(app: Harness, url: str, events: list[str]) -> tuple[str, str]:
    endpoint, secret = await endpoints.create_endpoint(
        url, events, actor="staff:sam", settings=app.settings
    )
    return str(endpoint.id), secret


async def _ok(app: Harness, query: str, variables: dict[str, Any], token: str) -> dict[str, Any]:
    body = await app.gql(query, variables, token=token)
    assert "errors" not in body, body
    [payload] = body["data"].values()
    assert payload["userErrors"] == [], payload
    result: dict[str, Any] = payload
    return result


async def _placed(app: Harness, token: str, product: Product, quantity: int = 1) -> str:
    await add_to_cart(app, token, product, quantity)
    placed = await checkout(app, token)
    assert placed["userErrors"] == [], placed
    return str(placed["orderId"])


async def _pay(app: Harness, order_id: str) -> None:
    order = await Order.get(id=order_id)
    assert order.stripe_checkout_session_id
    delivery = await app.emulator.complete_session(order.stripe_checkout_session_id)
    assert delivery.status_code == 200, delivery.body


def _of(received: list[Received], order_id: str) -> list[dict[str, Any]]:
    return [r.event for r in received if r.event["data"]["order"]["id"] == order_id]


def _types(received: list[Received], order_id: str) -> list[str]:
    return [e["type"] for e in _of(received, order_id)]


async def test_every_event_type_arrives_signed_with_the_order_after_the_change(
    app: Harness,
) -> None:
    mug = await make_product("MUG", price=1200, stock=10, name="Stoneware mug")
    staff = app.token("sam", staff=True)
    shopper = app.token("alice")
    async with receiving() as receiver:
        _, secret = await register(app, receiver.url, ["*"])
        order_id = await _placed(app, shopper, mug, 2)
        await _pay(app, order_id)
        await _ok(app, STAFF_ACTION % "markOrderAwaitingShipment", {"id": order_id}, staff)
        await _ok(app, SHIP, {"id": order_id}, staff)
        await _ok(app, STAFF_ACTION % "markOrderDelivered", {"id": order_id}, staff)
        lines = [{"productId": str(mug.id), "quantity": 1}]
        asked = await _ok(app, REQUEST, {"id": order_id, "lines": lines}, shopper)
        return_id = asked["orderReturn"]["id"]
        await _ok(app, CONFIRM, {"id": return_id}, shopper)
        await _ok(app, RECEIVE, {"id": return_id}, staff)
        cancelled_id = await _placed(app, shopper, mug)
        await _ok(app, CANCEL, {"id": cancelled_id}, shopper)

        expected = [
            "order.created",
            "order.paid",
            "order.status_changed",
            "order.status_changed",
            "order.status_changed",
            "return.requested",
            "return.confirmed",
            "return.received",
            "order.refunded",
        ]
        await receiver.wait_for(
            lambda got: (
                len(_of(got, order_id)) >= len(expected) and len(_of(got, cancelled_id)) >= 2
            )
        )
    assert _types(receiver.received, order_id) == expected
    assert _types(receiver.received, cancelled_id) == ["order.created", "order.cancelled"]
    assert all(r.verifies(secret) for r in receiver.received)
    assert not any(r.verifies("whsec_" + "x" * 43) for r in receiver.received)
    assert all(r.headers["content-type"] == "application/json" for r in receiver.received)

    events = _of(receiver.received, order_id)
    statuses = [(e["data"]["order"]["status"], e["data"]["order"]["paymentStatus"]) for e in events]
    assert statuses == [
        ("PENDING_PAYMENT", "PENDING"),
        ("PAYMENT_CONFIRMED", "PAID"),
        ("AWAITING_SHIPMENT", "PAID"),
        ("SHIPPED", "PAID"),
        ("DELIVERED", "PAID"),
        ("DELIVERED", "PAID"),
        ("DELIVERED", "PAID"),
        ("DELIVERED", "PAID"),
        ("DELIVERED", "PARTIALLY_REFUNDED"),
    ]
    shipped = events[3]["data"]["order"]
    assert (shipped["trackingNumber"], shipped["carrier"]) == ("1Z999", "UPS")
    assert events[-1]["data"]["order"]["amountRefunded"] == 1200
    assert events[-1]["data"]["order"]["lines"] == [
        {
            "productId": str(mug.id),
            "name": "Stoneware mug",
            "unitPrice": 1200,
            "quantity": 2,
            "quantityRefunded": 1,
        }
    ]
    assert [r["status"] for r in events[-2]["data"]["order"]["returns"]] == ["RECEIVED"]
    versions = [e["data"]["order"]["version"] for e in events]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    # One event row per change, each delivered once.
    assert await WebhookEvent.all().count() == len(receiver.received)
    assert await WebhookDelivery.filter(status=DeliveryStatus.DELIVERED).count() == len(
        receiver.received
    )


async def test_an_endpoint_hears_only_the_types_it_asked_for(app: Harness) -> None:
    mug = await make_product("MUG", stock=10)
    async with receiving() as paid_only, receiving() as everything:
        await register(app, paid_only.url, ["order.paid"])
        await register(app, everything.url, ["*"])
        order_id = await _placed(app, app.token("alice"), mug)
        await _pay(app, order_id)
        await everything.wait_for(lambda got: len(got) == 2)
        await paid_only.wait_for(lambda got: len(got) == 1)
    assert [r.event["type"] for r in paid_only.received] == ["order.paid"]


async def test_a_receiver_failing_five_times_gets_each_event_once_more_in_order(
    app: Harness,
) -> None:
    mug = await make_product("MUG", stock=10)
    failures = 0

    async def flaky(_: Received) -> int:
        nonlocal failures
        if failures < 5:
            failures += 1
            return 503
        return 200

    async with receiving(flaky) as receiver:
        await register(app, receiver.url, ["*"])
        order_id = await _placed(app, app.token("alice"), mug)
        await _pay(app, order_id)
        await _ok(
            app,
            STAFF_ACTION % "markOrderAwaitingShipment",
            {"id": order_id},
            app.token("sam", staff=True),
        )
        await receiver.wait_for(lambda got: len(got) == 5 + 3)
        await asyncio.sleep(0.5)  # nothing more comes
    got = receiver.received
    assert len(got) == 8
    # The first event is tried six times (five failures, then delivered); each attempt is one.
    assert [r.delivery[1] for r in got[:6]] == [1, 2, 3, 4, 5, 6]
    assert len({r.delivery[0] for r in got[:6]}) == 1
    # In order for the order: the later events waited for the first.
    assert [r.event["type"] for r in got] == ["order.created"] * 6 + [
        "order.paid",
        "order.status_changed",
    ]
    rows = await WebhookDelivery.all().order_by("id")
    assert [(d.status, d.attempts) for d in rows] == [
        (DeliveryStatus.DELIVERED, 6),
        (DeliveryStatus.DELIVERED, 1),
        (DeliveryStatus.DELIVERED, 1),
    ]


async def test_a_hanging_receiver_delays_neither_checkout_nor_another_endpoint(
    app: Harness,
) -> None:
    mug = await make_product("MUG", stock=100)
    release = asyncio.Event()

    async def hang(_: Received) -> int:
        await release.wait()
        return 200

    async with receiving(hang) as stuck, receiving() as healthy:
        await register(app, stuck.url, ["*"])
        await register(app, healthy.url, ["*"])
        orders = []
        started = time.monotonic()
        for n in range(12):
            orders.append(await _placed(app, app.token(f"shopper-{n}"), mug))
        took = time.monotonic() - started
        await healthy.wait_for(lambda got: len(got) == 12, timeout=5)
        healthy_done = time.monotonic() - started
        release.set()
    # Twelve checkouts while the stuck endpoint held every connection it was given: no checkout
    # waited for a delivery, and the healthy endpoint heard of all twelve meanwhile.
    assert took < 2 * 2, took  # (each attempt on the stuck one lasts WEBHOOK_TIMEOUT_SECONDS=2)
    assert healthy_done < 2, healthy_done
    assert stuck.most_in_flight <= 8  # at most half the slots of the sender


async def test_replay_sends_again_as_a_new_attempt(app: Harness) -> None:
    mug = await make_product("MUG", stock=10)
    async with receiving() as receiver:
        await register(app, receiver.url, ["order.created"])
        await _placed(app, app.token("alice"), mug)
        await receiver.wait_for(lambda got: len(got) == 1)
        delivery = await WebhookDelivery.get()
        await endpoints.replay_delivery(str(delivery.id), settings=app.settings)
        await receiver.wait_for(lambda got: len(got) == 2)
    first, again = receiver.received
    assert first.body == again.body
    assert (first.delivery, again.delivery) == ((str(delivery.id), 1), (str(delivery.id), 2))
    await delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.DELIVERED, 2)


async def test_a_change_that_rolled_back_sends_nothing(app: Harness) -> None:
    mug = await make_product("MUG", stock=10)
    async with receiving() as receiver:
        await register(app, receiver.url, ["*"])
        order_id = await _placed(app, app.token("alice"), mug)
        try:
            async with transaction():
                order = await lock_order(order_id)
                assert order is not None
                await change_order(
                    order,
                    status=OrderStatus.CANCELLED,
                    payment_status=PaymentStatus.EXPIRED,
                    reason="will roll back",
                    actor="test",
                )
                raise RuntimeError("the transaction fails after the change")
        except RuntimeError:
            pass
        await _pay(app, order_id)  # a later change of the same order, delivered after
        await receiver.wait_for(lambda got: [r.event["type"] for r in got][-1:] == ["order.paid"])
    assert [r.event["type"] for r in receiver.received] == ["order.created", "order.paid"]
    assert await WebhookEvent.all().count() == 2


async def test_nothing_is_written_when_no_endpoint_wants_the_event(app: Harness) -> None:
    mug = await make_product("MUG", stock=10)
    async with receiving() as receiver:
        await register(app, receiver.url, ["return.received"])
        order_id = await _placed(app, app.token("alice"), mug)
        await _pay(app, order_id)
    assert await WebhookEvent.all().count() == 0
    assert receiver.received == []


async def test_finished_deliveries_are_pruned_after_the_retention(app: Harness) -> None:
    mug = await make_product("MUG", stock=10)
    async with receiving() as receiver:
        await register(app, receiver.url, ["*"])
        order_id = await _placed(app, app.token("alice"), mug)
        await receiver.wait_for(lambda got: len(got) == 1)
        await _pay(app, order_id)
        await receiver.wait_for(lambda got: len(got) == 2)
    old, recent = await WebhookDelivery.all().order_by("id")
    long_ago = old.created_at - deliveries.RETENTION - timedelta(days=1)
    await WebhookDelivery.filter(id=old.id).update(created_at=long_ago)
    await WebhookEvent.filter(id=old.event_id).update(created_at=long_ago)
    pending = await WebhookDelivery.create(
        endpoint_id=old.endpoint_id,
        event_id=recent.event_id,
        order_id=recent.order_id,
        event_type="order.paid",
        next_attempt_at=long_ago,
        created_at=long_ago,
    )
    await WebhookEndpoint.filter(id=old.endpoint_id).update(active=False)

    cutoff = datetime.now(UTC) - deliveries.RETENTION
    assert await deliveries.prune_finished(older_than=cutoff) == 1
    assert await deliveries.prune_finished(older_than=cutoff) == 0
    assert {d.id for d in await WebhookDelivery.all()} == {recent.id, pending.id}
    assert {str(e.id) for e in await WebhookEvent.all()} == {str(recent.event_id)}


async def test_a_replay_during_an_attempt_is_not_overwritten_by_its_outcome(
    app: Harness,
) -> None:
    mug = await make_product("MUG", stock=10)
    release = asyncio.Event()

    async def first_hangs_then_fails(got: Received) -> int:
        if got.delivery[1] == 1:
            await release.wait()
            return 500  # would schedule a retry, or kill the delivery, if it were recorded
        return 200

    async with receiving(first_hangs_then_fails) as receiver:
        try:
            await register(app, receiver.url, ["order.created"])
            await _placed(app, app.token("alice"), mug)
            await receiver.wait_for(lambda got: len(got) == 1)
            delivery = await WebhookDelivery.get()
            await endpoints.replay_delivery(str(delivery.id), settings=app.settings)
            await receiver.wait_for(lambda got: len(got) == 2)

            async def delivered() -> bool:
                await delivery.refresh_from_db()
                return delivery.status == DeliveryStatus.DELIVERED

            assert await eventually(delivered)
            assert delivery.attempts == 2
        finally:
            release.set()
        await asyncio.sleep(0.3)  # the first attempt's 500 arrives, and is not recorded
    await delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status) == (
        DeliveryStatus.DELIVERED,
        2,
        200,
    )
    assert [r.delivery[1] for r in receiver.received] == [1, 2]
