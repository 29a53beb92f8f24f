"""The whole order lifecycle: fulfilment, cancellation, expiry by webhook and by sweeper,
delayed payments, late payments, refunds and disputes, each checked against the product rows,
the order row, its history and the mailbox."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from ordergraph.domain.expiry import sweep_overdue_orders
from ordergraph.models import (
    Order,
    OrderStatusChange,
    OutboxEmail,
    PaymentTracker,
    Product,
)
from tests.conftest import Harness, Mailbox
from tests.utils.helpers import (
    ORDER_FIELDS,
    checked_out_order,
    make_product,
    run_ordergraph,
    stock_of,
)

MUTATION = (
    """mutation($id: ID!) { %s(orderId: $id) { order { %s } userErrors { code message field } } }"""
)
SHIP = """mutation($id: ID!, $t: String!, $c: String) {
  markOrderShipped(orderId: $id, trackingNumber: $t, carrier: $c) {
    order { status trackingNumber carrier } userErrors { code message field }
  }
}"""


async def _op(app: Harness, name: str, order_id: str, token: str) -> dict[str, Any]:
    body = await app.gql(MUTATION % (name, ORDER_FIELDS), {"id": order_id}, token=token)
    assert "errors" not in body, body
    payload: dict[str, Any] = body["data"][name]
    return payload


async def _placed(app: Harness, *, stock: int = 10, quantity: int = 2) -> tuple[Product, str, str]:
    product = await make_product("TEE", price=2500, stock=stock)
    payload = await checked_out_order(app, app.token("alice"), product, quantity)
    order = await Order.get(id=payload["orderId"])
    assert order.stripe_checkout_session_id
    return product, payload["orderId"], order.stripe_checkout_session_id


async def _paid(app: Harness, mailbox: Mailbox, **kw: Any) -> tuple[Product, str, str]:
    product, order_id, session_id = await _placed(app, **kw)
    delivery = await app.emulator.complete_session(session_id)
    assert delivery.status_code == 200, delivery.body
    await mailbox.wait_for(1)
    return product, order_id, session_id


async def _order(order_id: str) -> Order:
    return await Order.get(id=order_id)


async def _history(order_id: str) -> list[tuple[str, str, str | None]]:
    changes = await OrderStatusChange.filter(order_id=order_id).order_by("id")
    return [(c.status.value, c.payment_status.value, c.reason) for c in changes]


def _subjects(mailbox: Mailbox) -> list[str]:
    return [m["Subject"] for m in mailbox.messages]


async def test_staff_ship_and_deliver_with_mails(app: Harness, mailbox: Mailbox) -> None:
    product, order_id, _ = await _paid(app, mailbox)
    staff = app.token("sam", staff=True)

    packed = await _op(app, "markOrderAwaitingShipment", order_id, staff)
    assert packed["order"]["status"] == "AWAITING_SHIPMENT"
    shipped = await app.gql(SHIP, {"id": order_id, "t": "1Z999", "c": "UPS"}, token=staff)
    assert shipped["data"]["markOrderShipped"]["order"] == {
        "status": "SHIPPED",
        "trackingNumber": "1Z999",
        "carrier": "UPS",
    }
    delivered = await _op(app, "markOrderDelivered", order_id, staff)
    assert delivered["order"]["status"] == "DELIVERED"
    assert [h["status"] for h in delivered["order"]["history"]] == [
        "PENDING_PAYMENT",
        "PAYMENT_CONFIRMED",
        "AWAITING_SHIPMENT",
        "SHIPPED",
        "DELIVERED",
    ]
    messages = await mailbox.wait_for(4)
    assert len(messages) == 4
    shipped_mail = next(m for m in messages if "shipped" in m["Subject"])
    body = shipped_mail.get_body(("plain",))
    assert body is not None and "1Z999" in body.get_content()
    assert any("delivered" in s for s in _subjects(mailbox))
    assert await stock_of(product) == 8  # shipped units stay sold


async def test_fulfilment_refusals_change_nothing(app: Harness, mailbox: Mailbox) -> None:
    _, order_id, _ = await _placed(app)
    staff = app.token("sam", staff=True)
    before = await _history(order_id)

    shopper = await _op(app, "markOrderAwaitingShipment", order_id, app.token("alice"))
    assert [e["code"] for e in shopper["userErrors"]] == ["FORBIDDEN"]
    unpaid = await _op(app, "markOrderDelivered", order_id, staff)
    assert [e["code"] for e in unpaid["userErrors"]] == ["INVALID_TRANSITION"]
    no_tracking = await app.gql(SHIP, {"id": order_id, "t": "  "}, token=staff)
    assert no_tracking["data"]["markOrderShipped"]["userErrors"][0]["code"] == "INVALID_INPUT"
    unknown = await _op(app, "markOrderDelivered", "not-an-id", staff)
    assert [e["code"] for e in unknown["userErrors"]] == ["NOT_FOUND"]
    anonymous = await app.gql(MUTATION % ("markOrderDelivered", "id"), {"id": order_id})
    assert anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"

    assert await _history(order_id) == before
    assert (await _order(order_id)).status.value == "pending_payment"
    assert mailbox.messages == []


async def test_shopper_cancels_expiring_the_session_first(app: Harness) -> None:
    product, order_id, session_id = await _placed(app)
    alice = app.token("alice")

    stranger = await _op(app, "cancelOrder", order_id, app.token("mallory"))
    assert [e["code"] for e in stranger["userErrors"]] == ["NOT_FOUND"]
    assert await stock_of(product) == 8

    cancelled = await _op(app, "cancelOrder", order_id, alice)
    assert cancelled["userErrors"] == []
    assert (cancelled["order"]["status"], cancelled["order"]["paymentStatus"]) == (
        "CANCELLED",
        "EXPIRED",
    )
    assert app.emulator.sessions[session_id]["status"] == "expired"
    assert await stock_of(product) == 10
    await app.emulator.drain()  # Stripe's own checkout.session.expired for that expiry
    assert await stock_of(product) == 10
    assert [h[0] for h in await _history(order_id)] == ["pending_payment", "cancelled"]

    again = await _op(app, "cancelOrder", order_id, alice)
    assert [e["code"] for e in again["userErrors"]] == ["INVALID_TRANSITION"]
    assert await stock_of(product) == 10


async def test_a_paid_order_cannot_be_cancelled(app: Harness, mailbox: Mailbox) -> None:
    product, order_id, _ = await _paid(app, mailbox)
    refused = await _op(app, "cancelOrder", order_id, app.token("alice"))
    assert [e["code"] for e in refused["userErrors"]] == ["ORDER_LOCKED"]
    assert (await _order(order_id)).status.value == "payment_confirmed"
    assert await stock_of(product) == 8


async def test_session_expired_webhook_cancels_and_releases(app: Harness) -> None:
    product, order_id, session_id = await _placed(app)
    delivery = await app.emulator.expire_session_event(session_id)
    assert delivery.status_code == 200
    order = await _order(order_id)
    assert (order.status.value, order.payment_status.value) == ("cancelled", "expired")
    assert (await _history(order_id))[-1][2] == "expired"
    assert await stock_of(product) == 10
    assert (await app.emulator.deliver(delivery.event)).status_code == 200
    assert await stock_of(product) == 10


async def _overdue(order_id: str) -> None:
    await Order.filter(id=order_id).update(expires_at=datetime.now(UTC) - timedelta(hours=1))


async def test_sweeper_expires_session_and_releases_stock(app: Harness) -> None:
    product, order_id, session_id = await _placed(app)
    fresh = await checked_out_order(app, app.token("bob"), product, 1)
    await _overdue(order_id)

    settled = await sweep_overdue_orders(app.asgi.state.services)

    assert settled == 1
    assert app.emulator.sessions[session_id]["status"] == "expired"
    order = await _order(order_id)
    assert (order.status.value, order.payment_status.value) == ("cancelled", "expired")
    assert (await _order(fresh["orderId"])).status.value == "pending_payment"
    assert await stock_of(product) == 10 - 1  # only the fresh order still holds stock
    assert await sweep_overdue_orders(app.asgi.state.services) == 0


async def test_sweeper_confirms_an_order_whose_webhook_was_lost(
    app: Harness, mailbox: Mailbox
) -> None:
    product, order_id, session_id = await _placed(app)
    await app.emulator.complete_session(session_id, deliver=False)
    await _overdue(order_id)

    assert await sweep_overdue_orders(app.asgi.state.services) == 1

    order = await _order(order_id)
    assert (order.status.value, order.payment_status.value) == ("payment_confirmed", "paid")
    assert await stock_of(product) == 8
    assert len(await mailbox.wait_for(1)) == 1
    assert await PaymentTracker.filter(order_id=order_id).count() == 1


async def test_expire_pending_command(app: Harness) -> None:
    product, order_id, session_id = await _placed(app)
    await _overdue(order_id)
    env = {
        **os.environ,
        "DATABASE_URL": app.settings.database_url,
        "JWT_SECRET": app.settings.jwt_secret,
        "STRIPE_SECRET_KEY": app.settings.stripe_secret_key or "",
        "STRIPE_API_BASE": app.settings.stripe_api_base or "",
    }
    returncode, stdout, stderr = await run_ordergraph("expire-pending", env=env)
    assert returncode == 0, stderr
    assert "settled 1 overdue orders" in stdout
    assert (await _order(order_id)).status.value == "cancelled"
    assert app.emulator.sessions[session_id]["status"] == "expired"
    assert await stock_of(product) == 10


async def test_delayed_payment_processing_then_succeeding(app: Harness, mailbox: Mailbox) -> None:
    product, order_id, session_id = await _placed(app)
    await app.emulator.complete_session(session_id, payment_status="unpaid")
    order = await _order(order_id)
    assert (order.status.value, order.payment_status.value) == ("pending_payment", "processing")

    await _overdue(order_id)
    assert await sweep_overdue_orders(app.asgi.state.services) == 0
    assert await stock_of(product) == 8  # still held, past its expiry

    await app.emulator.async_payment_succeeded(session_id)
    order = await _order(order_id)
    assert (order.status.value, order.payment_status.value) == ("payment_confirmed", "paid")
    assert len(await mailbox.wait_for(1)) == 1
    assert await stock_of(product) == 8


async def test_delayed_payment_failing_releases_stock_and_mails(
    app: Harness, mailbox: Mailbox
) -> None:
    product, order_id, session_id = await _placed(app)
    await app.emulator.complete_session(session_id, payment_status="unpaid")
    delivery = await app.emulator.async_payment_failed(session_id)
    assert delivery.status_code == 200
    order = await _order(order_id)
    assert (order.status.value, order.payment_status.value) == ("payment_failed", "failed")
    assert await stock_of(product) == 10
    messages = await mailbox.wait_for(1)
    assert ["failed" in m["Subject"] for m in messages] == [True]


async def _expire_by_webhook(app: Harness, session_id: str) -> None:
    """Stripe says the session expired (its webhook), though the shopper is still paying."""
    session = {**app.emulator.sessions[session_id], "status": "expired"}
    delivery = await app.emulator.deliver(
        app.emulator.build_event("checkout.session.expired", session)
    )
    assert delivery.status_code == 200


async def test_late_payment_with_stock_is_confirmed(app: Harness, mailbox: Mailbox) -> None:
    product, order_id, session_id = await _placed(app)
    await _expire_by_webhook(app, session_id)
    assert await stock_of(product) == 10

    delivery = await app.emulator.complete_session(session_id)

    assert json.loads(delivery.body)["outcome"] == "applied"
    order = await _order(order_id)
    assert (order.status.value, order.payment_status.value) == ("payment_confirmed", "paid")
    assert await stock_of(product) == 8
    assert (await _history(order_id))[-1][2] == "late payment: stock reserved again"
    assert len(await mailbox.wait_for(1)) == 1
    assert app.emulator.refunds == {}


async def test_late_payment_without_stock_is_refunded(app: Harness, mailbox: Mailbox) -> None:
    product, order_id, session_id = await _placed(app)
    await _expire_by_webhook(app, session_id)
    await Product.filter(id=product.id).update(stock=1)  # sold to someone else meanwhile

    delivery = await app.emulator.complete_session(session_id)

    assert delivery.status_code == 200
    order = await _order(order_id)
    assert (order.status.value, order.payment_status.value) == ("cancelled", "refunded")
    assert order.amount_refunded == order.total == 5000
    assert await stock_of(product) == 1
    refunds = list(app.emulator.refunds.values())
    assert [(r["payment_intent"], r["amount"]) for r in refunds] == [
        (order.stripe_payment_intent_id, 5000)
    ]
    assert (await _history(order_id))[-1][2] == "late payment refunded: out of stock"
    messages = await mailbox.wait_for(1)
    assert [m["Subject"] for m in messages] == [f"Refund for order {order_id[:8]}"]
    await app.emulator.drain()  # Stripe's charge.refunded for that refund changes nothing
    assert (await _order(order_id)).amount_refunded == 5000
    assert len(await mailbox.wait_for(2, timeout=1)) == 1


async def test_refund_before_shipping_returns_stock(app: Harness, mailbox: Mailbox) -> None:
    product, order_id, _ = await _paid(app, mailbox)
    shopper = await _op(app, "refundOrder", order_id, app.token("alice"))
    assert [e["code"] for e in shopper["userErrors"]] == ["FORBIDDEN"]

    refunded = await _op(app, "refundOrder", order_id, app.token("sam", staff=True))

    assert refunded["userErrors"] == []
    assert (refunded["order"]["status"], refunded["order"]["paymentStatus"]) == (
        "REFUNDED",
        "REFUNDED",
    )
    assert await stock_of(product) == 10
    await app.emulator.drain()
    assert await stock_of(product) == 10
    assert [r["amount"] for r in app.emulator.refunds.values()] == [5000]
    messages = await mailbox.wait_for(2)
    assert [m["Subject"].split(" ")[0] for m in messages] == ["Your", "Refund"]
    assert len(await mailbox.wait_for(3, timeout=1)) == 2


async def test_refund_after_shipping_keeps_stock_sold(app: Harness, mailbox: Mailbox) -> None:
    product, order_id, _ = await _paid(app, mailbox)
    staff = app.token("sam", staff=True)
    await _op(app, "markOrderAwaitingShipment", order_id, staff)
    await app.gql(SHIP, {"id": order_id, "t": "TRACK1"}, token=staff)

    refunded = await _op(app, "refundOrder", order_id, staff)

    assert refunded["order"]["status"] == "REFUNDED"
    assert await stock_of(product) == 8


async def test_partial_refund_then_the_rest(app: Harness, mailbox: Mailbox) -> None:
    product, order_id, _ = await _paid(app, mailbox)
    order = await _order(order_id)
    services = app.asgi.state.services
    await services.gateway.create_refund(
        order.stripe_payment_intent_id, 1000, idempotency_key="partial-1", reason="test"
    )
    await app.emulator.drain()
    order = await _order(order_id)
    assert (order.status.value, order.payment_status.value) == (
        "payment_confirmed",
        "partially_refunded",
    )
    assert order.amount_refunded == 1000
    assert await stock_of(product) == 8

    refunded = await _op(app, "refundOrder", order_id, app.token("sam", staff=True))
    assert refunded["order"]["paymentStatus"] == "REFUNDED"
    assert sorted(r["amount"] for r in app.emulator.refunds.values()) == [1000, 4000]
    assert await stock_of(product) == 10


async def test_refund_of_an_unpaid_order_is_refused(app: Harness) -> None:
    _, order_id, _ = await _placed(app)
    refused = await _op(app, "refundOrder", order_id, app.token("sam", staff=True))
    assert [e["code"] for e in refused["userErrors"]] == ["INVALID_TRANSITION"]
    assert app.emulator.refunds == {}


async def test_dispute_opened_then_won_or_lost(app: Harness, mailbox: Mailbox) -> None:
    product, order_id, _ = await _paid(app, mailbox)
    order = await _order(order_id)
    pi = order.stripe_payment_intent_id or ""

    opened = await app.emulator.dispute(pi)
    assert opened.status_code == 200
    order = await _order(order_id)
    assert (order.status.value, order.payment_status.value) == ("payment_confirmed", "disputed")
    messages = await mailbox.wait_for(2)
    assert messages[-1]["To"] == app.settings.staff_email
    assert "Dispute" in messages[-1]["Subject"]

    lost = await app.emulator.dispute(pi, status="lost")
    assert lost.status_code == 200
    order = await _order(order_id)
    assert (order.status.value, order.payment_status.value) == ("refunded", "refunded")
    assert order.amount_refunded == order.total
    assert await stock_of(product) == 10  # the money is gone before shipping: stock comes back


async def test_dispute_won_returns_to_paid(app: Harness, mailbox: Mailbox) -> None:
    _, order_id, _ = await _paid(app, mailbox)
    pi = (await _order(order_id)).stripe_payment_intent_id or ""
    await app.emulator.dispute(pi)
    await app.emulator.dispute(pi, status="won")
    assert (await _order(order_id)).payment_status.value == "paid"


# No fulfilment without money: an order whose payment is refunded, lost in a dispute or held
# by an open one is not packed, shipped or delivered.

FULFILMENT_STEPS = ("markOrderAwaitingShipment", "markOrderShipped", "markOrderDelivered")


async def _step(app: Harness, name: str, order_id: str, token: str) -> dict[str, Any]:
    if name == "markOrderShipped":
        body = await app.gql(SHIP, {"id": order_id, "t": "1Z999", "c": "UPS"}, token=token)
        assert "errors" not in body, body
        payload: dict[str, Any] = body["data"][name]
        return payload
    return await _op(app, name, order_id, token)


async def _refused(app: Harness, name: str, order_id: str, token: str) -> None:
    """`name` answers INVALID_TRANSITION and changes nothing: no history, no stock, no mail."""
    order = await _order(order_id)
    history = await _history(order_id)
    stock = [p.stock for p in await Product.all().order_by("id")]
    mail = await OutboxEmail.all().count()

    answer = await _step(app, name, order_id, token)

    assert [e["code"] for e in answer["userErrors"]] == ["INVALID_TRANSITION"], (name, answer)
    assert answer["order"] is None
    after = await _order(order_id)
    assert (after.status, after.payment_status, after.version, after.tracking_number) == (
        order.status,
        order.payment_status,
        order.version,
        order.tracking_number,
    )
    assert await _history(order_id) == history
    assert [p.stock for p in await Product.all().order_by("id")] == stock
    assert await OutboxEmail.all().count() == mail


async def _shipped(app: Harness, order_id: str, staff: str) -> None:
    for name in FULFILMENT_STEPS[:2]:
        answer = await _step(app, name, order_id, staff)
        assert answer["userErrors"] == [], (name, answer)


async def test_a_dispute_lost_before_shipping_refunds_the_order_and_frees_its_stock(
    app: Harness, mailbox: Mailbox
) -> None:
    """Seen in production: lost dispute while AWAITING_SHIPMENT, then shipped and delivered."""
    product, order_id, _ = await _paid(app, mailbox)
    staff = app.token("sam", staff=True)
    assert (await _op(app, "markOrderAwaitingShipment", order_id, staff))["userErrors"] == []
    pi = (await _order(order_id)).stripe_payment_intent_id or ""
    assert (await app.emulator.dispute(pi)).status_code == 200
    assert (await app.emulator.dispute(pi, status="lost")).status_code == 200

    order = await _order(order_id)
    assert (order.status.value, order.payment_status.value) == ("refunded", "refunded")
    assert order.amount_refunded == order.total == 5000
    assert await stock_of(product) == 10
    assert (await _history(order_id))[-1] == ("refunded", "refunded", "dispute lost")
    for name in ("markOrderShipped", "markOrderDelivered", "markOrderAwaitingShipment"):
        await _refused(app, name, order_id, staff)
    assert await stock_of(product) == 10
    assert not any("shipped" in subject for subject in _subjects(mailbox))


async def test_a_full_refund_at_stripe_stops_shipping(app: Harness, mailbox: Mailbox) -> None:
    product, order_id, _ = await _paid(app, mailbox)
    staff = app.token("sam", staff=True)
    assert (await _op(app, "markOrderAwaitingShipment", order_id, staff))["userErrors"] == []
    order = await _order(order_id)
    await app.asgi.state.services.gateway.create_refund(
        order.stripe_payment_intent_id, order.total, idempotency_key="full-1", reason="test"
    )
    await app.emulator.drain()  # charge.refunded, signed, through the webhook

    order = await _order(order_id)
    assert (order.status.value, order.payment_status.value) == ("refunded", "refunded")
    assert await stock_of(product) == 10
    for name in FULFILMENT_STEPS:
        await _refused(app, name, order_id, staff)


async def test_an_open_dispute_holds_fulfilment_until_it_is_won(
    app: Harness, mailbox: Mailbox
) -> None:
    product, order_id, _ = await _paid(app, mailbox)
    staff = app.token("sam", staff=True)
    pi = (await _order(order_id)).stripe_payment_intent_id or ""
    for step in FULFILMENT_STEPS:  # a dispute opens before each step, and is won
        assert (await app.emulator.dispute(pi)).status_code == 200
        assert (await _order(order_id)).payment_status.value == "disputed"
        await _refused(app, step, order_id, staff)
        assert (await app.emulator.dispute(pi, status="won")).status_code == 200
        answer = await _step(app, step, order_id, staff)
        assert answer["userErrors"] == [], (step, answer)
    order = await _order(order_id)
    assert (order.status.value, order.payment_status.value) == ("delivered", "paid")
    assert await stock_of(product) == 8


async def test_a_dispute_lost_in_transit_refuses_delivery_and_keeps_the_goods_sold(
    app: Harness, mailbox: Mailbox
) -> None:
    product, order_id, _ = await _paid(app, mailbox)
    staff = app.token("sam", staff=True)
    await _shipped(app, order_id, staff)
    pi = (await _order(order_id)).stripe_payment_intent_id or ""
    assert (await app.emulator.dispute(pi)).status_code == 200
    order = await _order(order_id)
    assert (order.status.value, order.payment_status.value) == ("shipped", "disputed")
    await _refused(app, "markOrderDelivered", order_id, staff)

    assert (await app.emulator.dispute(pi, status="lost")).status_code == 200

    order = await _order(order_id)
    assert (order.status.value, order.payment_status.value) == ("refunded", "refunded")
    assert order.tracking_number == "1Z999"
    assert await stock_of(product) == 8  # the goods left the warehouse: nothing comes back
    await _refused(app, "markOrderDelivered", order_id, staff)


async def test_paid_and_partly_refunded_orders_ship(app: Harness, mailbox: Mailbox) -> None:
    """The control: money that is (mostly) still there lets the order go out."""
    product, order_id, _ = await _paid(app, mailbox, stock=10, quantity=2)
    other = (await checked_out_order(app, app.token("bob"), product, 1))["orderId"]
    session = (await _order(other)).stripe_checkout_session_id or ""
    assert (await app.emulator.complete_session(session)).status_code == 200
    order = await _order(other)
    await app.asgi.state.services.gateway.create_refund(
        order.stripe_payment_intent_id, 500, idempotency_key="partial-2", reason="test"
    )
    await app.emulator.drain()
    assert (await _order(other)).payment_status.value == "partially_refunded"
    staff = app.token("sam", staff=True)

    for step in FULFILMENT_STEPS:
        for each in (order_id, other):
            answer = await _step(app, step, each, staff)
            assert answer["userErrors"] == [], (step, answer)

    assert sorted((o.status.value, o.payment_status.value) for o in await Order.all()) == [
        ("delivered", "paid"),
        ("delivered", "partially_refunded"),
    ]
    assert await stock_of(product) == 7


async def test_sync_order_payment_confirms_before_the_webhook(
    app: Harness, mailbox: Mailbox
) -> None:
    product, order_id, session_id = await _placed(app)
    completed = await app.emulator.complete_session(session_id, deliver=False)

    synced = await _op(app, "syncOrderPayment", order_id, app.token("alice"))
    assert synced["order"]["status"] == "PAYMENT_CONFIRMED"
    stranger = await _op(app, "syncOrderPayment", order_id, app.token("mallory"))
    assert [e["code"] for e in stranger["userErrors"]] == ["NOT_FOUND"]

    late = await app.emulator.deliver(completed.event)
    assert json.loads(late.body)["outcome"] == "unchanged"
    assert len(await mailbox.wait_for(2, timeout=1.5)) == 1
    assert await PaymentTracker.filter(order_id=order_id).count() == 1
    assert await stock_of(product) == 8


async def test_refund_before_payment_is_retried_by_stripe(app: Harness, mailbox: Mailbox) -> None:
    _, order_id, session_id = await _placed(app)
    completed = await app.emulator.complete_session(session_id, deliver=False)
    charge = {
        "id": "ch_early",
        "object": "charge",
        "amount": 5000,
        "amount_refunded": 5000,
        "refunded": True,
        "payment_intent": app.emulator.sessions[session_id]["payment_intent"],
        "metadata": {"order_id": order_id},
    }
    refund_event = app.emulator.build_event("charge.refunded", charge)

    early = await app.emulator.deliver(refund_event)
    assert early.status_code == 503
    assert (await _order(order_id)).payment_status.value == "pending"

    await app.emulator.deliver(completed.event)
    retried = await app.emulator.deliver(refund_event)
    assert retried.status_code == 200
    order = await _order(order_id)
    assert (order.status.value, order.payment_status.value) == ("refunded", "refunded")


async def test_stripe_down_answers_provider_error_and_changes_nothing(
    app: Harness, mailbox: Mailbox
) -> None:
    """Cancel, refund and sync all need Stripe; when it fails they say so and change nothing."""
    product, paid_id, _ = await _paid(app, mailbox)
    pending_id = (await checked_out_order(app, app.token("bob"), product, 1))["orderId"]
    before = {i: await _history(i) for i in (paid_id, pending_id)}
    stock = await stock_of(product)
    app.emulator.inject_fault("error500", count=10)

    cases = [
        ("refundOrder", paid_id, app.token("sam", staff=True)),
        ("cancelOrder", pending_id, app.token("bob")),
        ("syncOrderPayment", pending_id, app.token("bob")),
    ]
    for name, order_id, token in cases:
        answer = await _op(app, name, order_id, token)
        assert [e["code"] for e in answer["userErrors"]] == ["PAYMENT_PROVIDER_ERROR"], name

    assert {i: await _history(i) for i in (paid_id, pending_id)} == before
    assert await stock_of(product) == stock
    assert app.emulator.refunds == {}
