"""The Stripe webhook: signed `checkout.session.completed` confirms the order once and sends one
receipt; repeats change nothing. (Every refused input is in test_webhook_input.py.)"""

from __future__ import annotations

import json
from typing import Any

from ordergraph.models import (
    Order,
    OrderStatusChange,
    PaymentTracker,
    ProcessedStripeEvent,
)
from tests.conftest import Harness, Mailbox
from tests.utils.helpers import ORDER, checked_out_order, make_product, stock_of

SHIPPING = {
    "name": "Alice Liddell",
    "address": {
        "line1": "1 Rabbit Hole",
        "line2": "Flat 2",
        "city": "Oxford",
        "state": "OX",
        "postal_code": "OX1 1AA",
        "country": "GB",
    },
}


async def _pending_order(app: Harness, user: str = "alice") -> tuple[Any, dict[str, Any]]:
    tee = await make_product("TEE", price=2500, stock=10)
    payload = await checked_out_order(app, app.token(user), tee, 2)
    return tee, payload


async def _session_id(order_id: str) -> str:
    order = await Order.get(id=order_id)
    assert order.stripe_checkout_session_id
    return order.stripe_checkout_session_id


async def _snapshot(order_id: str) -> tuple[Any, ...]:
    order = await Order.get(id=order_id)
    return (
        order.status,
        order.payment_status,
        order.is_locked,
        order.paid_at,
        order.shipping_address,
        await PaymentTracker.all().count(),
        await ProcessedStripeEvent.all().count(),
        await OrderStatusChange.filter(order_id=order_id).count(),
    )


async def test_paid_completion_confirms_order_and_sends_one_receipt(
    app: Harness, mailbox: Mailbox
) -> None:
    tee, payload = await _pending_order(app)
    order_id = payload["orderId"]

    delivery = await app.emulator.complete_session(await _session_id(order_id), shipping=SHIPPING)

    assert delivery.status_code == 200
    order = await Order.get(id=order_id)
    assert order.status.value == "payment_confirmed"
    assert order.payment_status.value == "paid"
    assert order.is_locked is True
    assert order.paid_at is not None
    assert order.stripe_payment_intent_id and order.stripe_payment_intent_id.startswith("pi_")
    assert order.shipping_address == {
        "name": "Alice Liddell",
        "line1": "1 Rabbit Hole",
        "line2": "Flat 2",
        "city": "Oxford",
        "state": "OX",
        "postal_code": "OX1 1AA",
        "country": "GB",
    }
    trackers = await PaymentTracker.filter(order_id=order_id)
    assert [(t.amount, t.currency, t.status, t.provider) for t in trackers] == [
        (5000, "USD", "paid", "stripe")
    ]
    assert await stock_of(tee) == 8  # paid orders keep their stock

    messages = await mailbox.wait_for(1)
    assert len(messages) == 1
    receipt = messages[0]
    assert receipt["To"] == "alice@example.com"
    assert receipt["From"] == "orders@shop.test"
    parts = {
        part.get_content_type(): part.get_payload(decode=True).decode()
        for part in receipt.walk()
        if not part.is_multipart()
    }
    assert set(parts) == {"text/plain", "text/html"}
    assert order_id in parts["text/plain"]
    assert "2 x Product TEE" in parts["text/plain"]
    assert "50.00 USD" in parts["text/plain"]
    assert "1 Rabbit Hole" in parts["text/plain"] and "Oxford" in parts["text/html"]

    body = await app.gql(ORDER, {"id": order_id}, token=app.token("alice"))
    shown = body["data"]["order"]
    assert shown["status"] == "PAYMENT_CONFIRMED"
    assert shown["isLocked"] is True
    assert shown["shippingAddress"]["postalCode"] == "OX1 1AA"
    assert [h["status"] for h in shown["history"]] == ["PENDING_PAYMENT", "PAYMENT_CONFIRMED"]


async def test_same_event_twice_changes_nothing_more(app: Harness, mailbox: Mailbox) -> None:
    _, payload = await _pending_order(app)
    order_id = payload["orderId"]
    first = await app.emulator.complete_session(await _session_id(order_id))
    assert first.status_code == 200
    await mailbox.wait_for(1)
    before = await _snapshot(order_id)

    again = await app.emulator.deliver(first.event)

    assert again.status_code == 200
    assert json.loads(again.body)["outcome"] == "duplicate"
    assert await _snapshot(order_id) == before
    assert len(await mailbox.wait_for(2, timeout=1.0)) == 1


async def test_new_event_for_an_already_confirmed_order_changes_nothing(
    app: Harness, mailbox: Mailbox
) -> None:
    _, payload = await _pending_order(app)
    order_id = payload["orderId"]
    first = await app.emulator.complete_session(await _session_id(order_id))
    await mailbox.wait_for(1)
    before = await _snapshot(order_id)
    resent = app.emulator.build_event("checkout.session.completed", first.event["data"]["object"])

    delivery = await app.emulator.deliver(resent)

    assert delivery.status_code == 200
    after = await _snapshot(order_id)
    assert after[:-2] == before[:-2]  # only the new event id is recorded
    assert after[-1] == before[-1]
    assert len(await mailbox.wait_for(2, timeout=1.0)) == 1
