"""Partial refunds through `refundOrder`: by lines (their share of what Stripe charged, the
discount, tax and shipping apportioned so that every line refunded gives back the total) or by
amount, with or without restocking, once per request however often it is sent.

Checked against the order's rows and lines, the products' stock, the emulator's refunds, the
history (actor and reason) and the mailbox.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from ordergraph.domain.refunds import settle_pending_refunds
from ordergraph.models import (
    Order,
    OrderItem,
    OrderRefund,
    OrderStatusChange,
    OutboxEmail,
    ProcessedStripeEvent,
    Product,
)
from tests.conftest import Harness, Mailbox
from tests.utils.dbstate import snapshot
from tests.utils.helpers import add_to_cart, checkout, make_product, stock_of
from tests.utils.live import eventually
from tests.utils.shop import create_code, offered_rate, staff, upsert_rate

REFUND = """mutation($id: ID!, $amount: Int, $lines: [ReturnLineInput!], $restock: Boolean,
                   $reason: String) {
  refundOrder(orderId: $id, amount: $amount, lines: $lines, restock: $restock, reason: $reason) {
    order { status paymentStatus total { amount } amountRefunded { amount }
            lines { productId quantity quantityRefunded } }
    userErrors { code message field }
  }
}"""
STAFF_ACTION = "mutation($id: ID!) { %s(orderId: $id) { userErrors { code message } } }"
SHIP = """mutation($id: ID!) {
  markOrderShipped(orderId: $id, trackingNumber: "1Z999", carrier: "UPS") {
    userErrors { code message }
  }
}"""
DE = {"name": "Anna", "address": {"line1": "Unter den Linden 1", "city": "Berlin",
                                  "postal_code": "10117", "country": "DE"}}  # fmt: skip


async def _paid(
    app: Harness,
    user: str,
    lines: list[tuple[Product, int]],
    *,
    rate: str | None = None,
    **complete: Any,
) -> str:
    """`user`'s order of `lines`, paid at Stripe (with the shipping rate named `rate`)."""
    token = app.token(user)
    for product, quantity in lines:
        await add_to_cart(app, token, product, quantity)
    placed = await checkout(app, token)
    assert placed["userErrors"] == [], placed
    order = await Order.get(id=placed["orderId"])
    session_id = order.stripe_checkout_session_id
    assert session_id
    if rate is not None:
        complete["shipping_rate"] = offered_rate(app, session_id, rate)
    delivery = await app.emulator.complete_session(session_id, **complete)
    assert delivery.status_code == 200, delivery.body
    assert (await Order.get(id=order.id)).payment_status.value == "paid"
    return str(order.id)


async def _refund(app: Harness, order_id: str, **args: Any) -> dict[str, Any]:
    body = await app.gql(REFUND, {"id": order_id, **args}, token=staff(app))
    assert "errors" not in body, body
    payload: dict[str, Any] = body["data"]["refundOrder"]
    return payload


def _lines(*pairs: tuple[Product | str, int]) -> list[dict[str, Any]]:
    return [
        {"productId": str(p.id) if isinstance(p, Product) else p, "quantity": q} for p, q in pairs
    ]


async def _fulfil(app: Harness, order_id: str, *, deliver: bool) -> None:
    """Staff pack and ship the order, and deliver it when asked."""
    actions = [STAFF_ACTION % "markOrderAwaitingShipment", SHIP]
    if deliver:
        actions.append(STAFF_ACTION % "markOrderDelivered")
    for action in actions:
        body = await app.gql(action, {"id": order_id}, token=staff(app))
        assert [p["userErrors"] for p in body["data"].values()] == [[]], body


def _refunded_amounts(app: Harness) -> list[int]:
    return [r["amount"] for r in app.emulator.refunds.values()]


async def _items(order_id: str) -> dict[str, OrderItem]:
    return {str(i.product_id): i for i in await OrderItem.filter(order_id=order_id)}


async def _history(order_id: str) -> list[tuple[str, str, str | None, str | None]]:
    changes = await OrderStatusChange.filter(order_id=order_id).order_by("id")
    return [(c.status.value, c.payment_status.value, c.reason, c.actor) for c in changes]


async def test_one_line_of_three_refunded_before_shipping(app: Harness) -> None:
    await create_code(app, code="SAVE15", percentOff=15)
    mug = await make_product("MUG", price=1000, stock=10)
    tee = await make_product("TEE", price=1333, stock=10)
    cap = await make_product("CAP", price=2501, stock=10)
    order_id = await _paid(app, "alice", [(mug, 2), (tee, 1), (cap, 3)], promotion_code="SAVE15")
    order = await Order.get(id=order_id)
    subtotal = 2 * 1000 + 1333 + 3 * 2501
    assert (order.subtotal, order.discount) == (subtotal, 1625)
    assert order.total == subtotal - 1625
    assert [await stock_of(p) for p in (mug, tee, cap)] == [8, 9, 7]

    refunded = await _refund(
        app, order_id, lines=_lines((tee, 1)), restock=True, reason="out of stock at packing"
    )

    assert refunded["userErrors"] == [], refunded
    # The tee's share of what was charged: its price less its part of the discount.
    share = order.total * 1333 // subtotal
    assert abs(share - order.total * 1333 / subtotal) < 1 and share < 1333
    assert _refunded_amounts(app) == [share]
    [stripe_refund] = app.emulator.refunds.values()
    assert stripe_refund["payment_intent"] == order.stripe_payment_intent_id
    answer = refunded["order"]
    assert (answer["status"], answer["paymentStatus"]) == (
        "PAYMENT_CONFIRMED",
        "PARTIALLY_REFUNDED",
    )
    assert answer["amountRefunded"] == {"amount": share}
    assert {line["productId"]: line["quantityRefunded"] for line in answer["lines"]} == {
        str(mug.id): 0,
        str(tee.id): 1,
        str(cap.id): 0,
    }
    # The tee's unit is back on sale; the mugs and caps stay reserved for the order.
    assert [await stock_of(p) for p in (mug, tee, cap)] == [8, 10, 7]
    items = await _items(order_id)
    assert (items[str(tee.id)].quantity_refunded, items[str(tee.id)].quantity_restocked) == (1, 1)
    [row] = await OrderRefund.filter(order_id=order_id)
    assert (row.amount, row.restock, row.reason, row.actor) == (
        share,
        True,
        "out of stock at packing",
        "staff:sam",
    )
    assert row.lines == [{"product_id": str(tee.id), "quantity": 1}]
    assert row.stripe_refund_id == stripe_refund["id"]
    assert (await _history(order_id))[-1] == (
        "payment_confirmed",
        "partially_refunded",
        f"refunded {share / 100:.2f} USD: out of stock at packing",
        "staff:sam",
    )

    # Without restock, a cap is refunded and written off: its unit does not come back.
    written_off = await _refund(app, order_id, lines=_lines((cap, 1)), reason="damaged")
    assert written_off["userErrors"] == [], written_off
    assert [await stock_of(p) for p in (mug, tee, cap)] == [8, 10, 7]
    cap_item = (await _items(order_id))[str(cap.id)]
    assert (cap_item.quantity_refunded, cap_item.quantity_restocked) == (1, 0)
    assert written_off["order"]["status"] == "PAYMENT_CONFIRMED"

    # The rest refunded: the order releases what it still holds, not the written-off cap.
    rest = await _refund(app, order_id, reason="customer cancelled")
    assert rest["userErrors"] == [], rest
    assert (rest["order"]["status"], rest["order"]["paymentStatus"]) == ("REFUNDED", "REFUNDED")
    assert sum(_refunded_amounts(app)) == order.total
    assert [await stock_of(p) for p in (mug, tee, cap)] == [10, 10, 9]


async def test_refund_by_amount_after_delivery(app: Harness, mailbox: Mailbox) -> None:
    tee = await make_product("TEE", price=2500, stock=10)
    order_id = await _paid(app, "alice", [(tee, 2)])
    await _fulfil(app, order_id, deliver=True)
    assert await stock_of(tee) == 8

    partial = await _refund(app, order_id, amount=1234, reason="goodwill")

    assert partial["userErrors"] == [], partial
    answer = partial["order"]
    assert (answer["status"], answer["paymentStatus"]) == ("DELIVERED", "PARTIALLY_REFUNDED")
    assert answer["amountRefunded"] == {"amount": 1234}
    assert [line["quantityRefunded"] for line in answer["lines"]] == [0]
    assert _refunded_amounts(app) == [1234]
    assert await stock_of(tee) == 8
    order = await Order.get(id=order_id)
    assert (order.status.value, order.amount_refunded) == ("delivered", 1234)
    await app.emulator.drain()

    # More than what remains, nothing, or a restock without lines: refused, nothing changed.
    before = await snapshot(app.emulator)
    for args, field in (
        ({"amount": 5000 - 1234 + 1}, ["amount"]),
        ({"amount": 0}, ["amount"]),
        ({"amount": 10, "restock": True}, ["restock"]),
    ):
        refused = await _refund(app, order_id, **args)
        assert [(e["code"], e["field"]) for e in refused["userErrors"]] == [
            ("INVALID_INPUT", field)
        ], (args, refused)
        assert refused["order"] is None
    assert await snapshot(app.emulator) == before
    assert _refunded_amounts(app) == [1234]

    # Exactly what remains: the payment and the order are refunded; shipped goods stay sold.
    rest = await _refund(app, order_id, amount=5000 - 1234)
    assert rest["userErrors"] == [], rest
    assert (rest["order"]["status"], rest["order"]["paymentStatus"]) == ("REFUNDED", "REFUNDED")
    assert _refunded_amounts(app) == [1234, 3766]
    assert await stock_of(tee) == 8
    subjects = [m["Subject"] for m in await mailbox.wait_for(6)]
    assert subjects.count(f"Refund for order {order_id[:8]}") == 2, subjects


async def test_every_line_refunded_one_by_one_gives_back_the_total(
    taxed: Harness, app: Harness
) -> None:
    await create_code(taxed, code="SAVE15", percentOff=15)
    made = await upsert_rate(taxed, name="Standard", amount=495)
    assert made["userErrors"] == [], made
    mug = await make_product("MUG", price=999, stock=10)
    tee = await make_product("TEE", price=1333, stock=10)
    cap = await make_product("CAP", price=2501, stock=10)
    order_id = await _paid(
        taxed,  # AUTOMATIC_TAX=true; the refunds go through the harness's own process
        "anna",
        [(mug, 1), (tee, 2), (cap, 1)],
        rate="Standard",
        promotion_code="SAVE15",
        country="DE",
        shipping=DE,
    )
    order = await Order.get(id=order_id)
    assert order.subtotal == 999 + 2 * 1333 + 2501
    assert order.discount > 0 and order.tax > 0 and order.shipping_cost == 495
    assert order.total == order.subtotal - order.discount + order.shipping_cost + order.tax

    steps = [((tee, 1), "scratched"), ((mug, 1), "broken"), ((tee, 1), "wrong size"),
             ((cap, 1), "late")]  # fmt: skip
    for (product, quantity), reason in steps:
        answer = await _refund(app, order_id, lines=_lines((product, quantity)), reason=reason)
        assert answer["userErrors"] == [], (reason, answer)

    amounts = _refunded_amounts(app)
    assert len(amounts) == 4
    assert sum(amounts) == order.total  # to the cent
    goods = order.total - order.shipping_cost
    for amount, price in zip(amounts[:3], (1333, 999, 1333), strict=True):
        assert abs(amount - goods * price / order.subtotal) < 1, (amounts, order.total)
    assert abs(amounts[3] - order.shipping_cost - goods * 2501 / order.subtotal) < 1
    order = await Order.get(id=order_id)
    assert (order.status.value, order.payment_status.value) == ("refunded", "refunded")
    assert order.amount_refunded == order.total
    items = await _items(order_id)
    assert [items[str(p.id)].quantity_refunded for p in (mug, tee, cap)] == [1, 2, 1]
    refunds = await _history(order_id)
    assert [(h[0], h[1], h[3]) for h in refunds[-4:]] == [
        ("payment_confirmed", "partially_refunded", "staff:sam"),
        ("payment_confirmed", "partially_refunded", "staff:sam"),
        ("payment_confirmed", "partially_refunded", "staff:sam"),
        ("refunded", "refunded", "staff:sam"),
    ]
    for (_, reason), amount, change in zip(steps, amounts, refunds[-4:], strict=True):
        assert change[2] == f"refunded {amount / 100:.2f} USD: {reason}"
    assert [await stock_of(p) for p in (mug, tee, cap)] == [9, 8, 9]  # not restocked


async def test_two_identical_refund_requests_refund_once(app: Harness, mailbox: Mailbox) -> None:
    tee = await make_product("TEE", price=2500, stock=10)
    mug = await make_product("MUG", price=1200, stock=10)
    order_id = await _paid(app, "alice", [(tee, 2), (mug, 1)])
    await mailbox.wait_for(1)
    args = {"lines": _lines((tee, 1)), "restock": True, "reason": "double click"}

    answers = await asyncio.gather(_refund(app, order_id, **args), _refund(app, order_id, **args))

    assert [a["userErrors"] for a in answers] == [[], []], answers
    assert _refunded_amounts(app) == [2500]
    assert await OrderRefund.filter(order_id=order_id).count() == 1
    assert await stock_of(tee) == 9  # one unit back, not two
    item = (await _items(order_id))[str(tee.id)]
    assert (item.quantity_refunded, item.quantity_restocked) == (1, 1)

    # Sent again later: the same refund, nothing more.
    again = await _refund(app, order_id, **args)
    assert again["userErrors"] == [], again
    assert again["order"]["amountRefunded"] == {"amount": 2500}
    assert _refunded_amounts(app) == [2500]
    assert await OrderRefund.filter(order_id=order_id).count() == 1
    history = await _history(order_id)
    assert [h[2] for h in history].count("refunded 25.00 USD: double click") == 1

    # Stripe's charge.refunded for it, delivered now, changes nothing a second time.
    await app.emulator.drain()
    assert await ProcessedStripeEvent.filter(type="charge.refunded").count() == 1
    order = await Order.get(id=order_id)
    assert (order.amount_refunded, order.payment_status.value) == (2500, "partially_refunded")
    assert await _history(order_id) == history
    assert await stock_of(tee) == 9
    subject = f"Refund for order {order_id[:8]}"
    await mailbox.wait_for(2)
    assert await OutboxEmail.filter(subject=subject).count() == 1
    assert [m["Subject"] for m in mailbox.messages].count(subject) == 1


async def test_a_refund_asked_again_while_stripe_is_slow_answers_the_same_refund(
    app: Harness,
) -> None:
    """The second request finds Stripe still busy with the first under the same idempotency
    key (409 idempotency_key_in_use): it waits for the first answer instead of failing."""
    tee = await make_product("TEE", price=2500, stock=10)
    order_id = await _paid(app, "alice", [(tee, 2)])
    args = {"lines": _lines((tee, 1)), "restock": True, "reason": "double click"}
    app.emulator.inject_fault("delay", 1, delay=0.4)  # the first refund create takes 0.4 s

    answers = await asyncio.gather(_refund(app, order_id, **args), _refund(app, order_id, **args))

    assert [a["userErrors"] for a in answers] == [[], []], answers
    assert [a["order"]["amountRefunded"] for a in answers] == [{"amount": 2500}] * 2
    assert _refunded_amounts(app) == [2500]
    replays = [r for r in app.emulator.requests if r.path == "/v1/refunds"]
    assert len(replays) >= 2  # the second did ask, and was told to wait
    assert await stock_of(tee) == 9


async def test_lines_after_shipping_restock_and_bad_lines_are_refused(app: Harness) -> None:
    tee = await make_product("TEE", price=2500, stock=10)
    mug = await make_product("MUG", price=1200, stock=10)
    order_id = await _paid(app, "alice", [(tee, 3), (mug, 1)])
    await _fulfil(app, order_id, deliver=False)
    assert [await stock_of(p) for p in (tee, mug)] == [7, 9]

    returned = await _refund(
        app, order_id, lines=_lines((tee, 2)), restock=True, reason="sent back"
    )

    assert returned["userErrors"] == [], returned
    assert (returned["order"]["status"], returned["order"]["paymentStatus"]) == (
        "SHIPPED",
        "PARTIALLY_REFUNDED",
    )
    assert _refunded_amounts(app) == [5000]
    assert [await stock_of(p) for p in (tee, mug)] == [9, 9]  # the returned tees on sale again
    item = (await _items(order_id))[str(tee.id)]
    assert (item.quantity_refunded, item.quantity_restocked) == (2, 2)
    await app.emulator.drain()

    before = await snapshot(app.emulator)
    stranger = await make_product("HAT", price=100, stock=5)
    for lines in (
        _lines((stranger, 1)),  # not a line of this order
        _lines(("not-an-id", 1)),
        _lines((mug, 0)),
        _lines((tee, 2)),  # one tee left
        _lines((mug, 1), (mug, 1)),  # named twice
        _lines((mug, 1), (tee, 2)),  # the mug would pass, the tees not: nothing at all
    ):
        refused = await _refund(app, order_id, lines=lines, restock=True)
        assert [(e["code"], e["field"]) for e in refused["userErrors"]] == [
            ("INVALID_INPUT", ["lines"])
        ], (lines, refused)
    after = await snapshot(app.emulator)
    after["products"] = [p for p in after["products"] if p[0] != "HAT"]
    assert after == before
    assert _refunded_amounts(app) == [5000]
    assert [await stock_of(p) for p in (tee, mug)] == [9, 9]


async def test_a_refund_stripe_failed_is_pending_until_asked_again(
    app: Harness, mailbox: Mailbox
) -> None:
    tee = await make_product("TEE", price=2500, stock=10)
    mug = await make_product("MUG", price=1200, stock=10)
    order_id = await _paid(app, "alice", [(tee, 2), (mug, 1)])
    await mailbox.wait_for(1)
    args = {"lines": _lines((tee, 1)), "restock": True, "reason": "lost answer"}

    # Stripe fails the call (a 500: it may or may not have refunded): the refund waits,
    # PENDING with its line taken and the stock as it was, and the same request again
    # completes it, once.
    app.emulator.inject_fault("error500")
    failed = await _refund(app, order_id, **args)
    assert [e["code"] for e in failed["userErrors"]] == ["PAYMENT_PROVIDER_ERROR"], failed
    [pending] = await OrderRefund.filter(order_id=order_id)
    assert (pending.status.value, pending.amount, app.emulator.refunds) == ("pending", 2500, {})
    assert (await _items(order_id))[str(tee.id)].quantity_refunded == 1
    assert await stock_of(tee) == 8

    retried = await _refund(app, order_id, **args)
    assert retried["userErrors"] == [], retried
    assert _refunded_amounts(app) == [2500]
    [stripe_refund] = app.emulator.refunds.values()
    [row] = await OrderRefund.filter(order_id=order_id)
    assert (row.status.value, row.stripe_refund_id) == ("succeeded", stripe_refund["id"])
    item = (await _items(order_id))[str(tee.id)]
    assert (item.quantity_refunded, item.quantity_restocked) == (1, 1)
    assert await stock_of(tee) == 9
    order = await Order.get(id=order_id)
    assert (order.amount_refunded, order.payment_status.value) == (2500, "partially_refunded")


async def test_a_last_refund_whose_answer_was_lost_is_recorded_by_its_retry(
    app: Harness, mailbox: Mailbox
) -> None:
    tee = await make_product("TEE", price=2500, stock=10)
    order_id = await _paid(app, "alice", [(tee, 2)])
    await _fulfil(app, order_id, deliver=True)
    args = {"lines": _lines((tee, 2)), "restock": True, "reason": "both sent back"}

    app.emulator.inject_fault("delay", delay=app.settings.stripe_timeout_seconds + 0.5)
    lost = await _refund(app, order_id, **args)
    assert [e["code"] for e in lost["userErrors"]] == ["PAYMENT_PROVIDER_ERROR"], lost

    async def money_back() -> bool:
        await app.emulator.drain()
        return (await Order.get(id=order_id)).payment_status.value == "refunded"

    assert await eventually(money_back)  # charge.refunded: the order is REFUNDED
    assert await stock_of(tee) == 8
    [pending] = await OrderRefund.filter(order_id=order_id)
    assert (pending.status.value, pending.amount) == ("pending", 5000)

    # The retry records the lines and puts the returned tees back on sale, refunding nothing.
    retried = await _refund(app, order_id, **args)
    assert retried["userErrors"] == [], retried
    assert _refunded_amounts(app) == [5000]
    item = (await _items(order_id))[str(tee.id)]
    assert (item.quantity_refunded, item.quantity_restocked) == (2, 2)
    assert await stock_of(tee) == 10
    assert await OrderRefund.filter(order_id=order_id).count() == 1


async def test_a_refund_stripe_refuses_changes_nothing(app: Harness, mailbox: Mailbox) -> None:
    tee = await make_product("TEE", price=2500, stock=10)
    mug = await make_product("MUG", price=1200, stock=10)
    order_id = await _paid(app, "alice", [(tee, 2), (mug, 1)])
    await mailbox.wait_for(1)
    # Most of the charge went back at Stripe (the dashboard), its event not here yet.
    order = await Order.get(id=order_id)
    url, app.emulator.webhook_url = app.emulator.webhook_url, None
    try:
        await app.asgi.state.services.gateway.create_refund(
            order.stripe_payment_intent_id, 5000, idempotency_key="dashboard", reason="dashboard"
        )
    finally:
        app.emulator.webhook_url = url
    before = await snapshot()

    refused = await _refund(app, order_id, lines=_lines((tee, 1)), restock=True)

    assert [e["code"] for e in refused["userErrors"]] == ["PAYMENT_PROVIDER_ERROR"], refused
    assert "Stripe refused" in refused["userErrors"][0]["message"]
    assert await snapshot() == before  # the line given back, no refund row, stock as it was
    assert _refunded_amounts(app) == [5000]


async def test_the_sweeper_finishes_a_refund_whose_answer_was_lost(
    app: Harness, mailbox: Mailbox
) -> None:
    tee = await make_product("TEE", price=2500, stock=10)
    order_id = await _paid(app, "alice", [(tee, 2)])
    app.emulator.inject_fault("error500")
    failed = await _refund(app, order_id, amount=700, reason="goodwill")
    assert [e["code"] for e in failed["userErrors"]] == ["PAYMENT_PROVIDER_ERROR"], failed
    services = app.asgi.state.services
    # Too young: a request may still be waiting for Stripe.
    assert (
        await settle_pending_refunds(services, older_than=datetime.now(UTC) - timedelta(minutes=5))
        == 0
    )

    assert await settle_pending_refunds(services, older_than=datetime.now(UTC) + timedelta(1)) == 1

    [row] = await OrderRefund.filter(order_id=order_id)
    assert row.status.value == "succeeded" and _refunded_amounts(app) == [700]
    # Stripe held no refund for the first try, whose failed answer it may keep under its key:
    # the sweeper tried again under a new one.
    assert row.attempt == 1
    [made] = app.emulator.refunds.values()
    assert made["metadata"]["order_refund"] == row.request_key
    order = await Order.get(id=order_id)
    assert (order.amount_refunded, order.payment_status.value) == (700, "partially_refunded")


async def test_the_sweeper_finds_at_stripe_a_refund_whose_answer_was_lost(
    app: Harness, mailbox: Mailbox
) -> None:
    tee = await make_product("TEE", price=2500, stock=10)
    order_id = await _paid(app, "alice", [(tee, 2)])
    # Stripe refunds, but answers after the service gave up.
    app.emulator.inject_fault("delay", delay=app.settings.stripe_timeout_seconds + 0.5)
    lost = await _refund(app, order_id, amount=900, reason="late answer")
    assert [e["code"] for e in lost["userErrors"]] == ["PAYMENT_PROVIDER_ERROR"], lost

    async def made_at_stripe() -> bool:  # the late request has run (the sweeper waits as long)
        return len(app.emulator.refunds) == 1

    assert await eventually(made_at_stripe)
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert await settle_pending_refunds(app.asgi.state.services, older_than=later) == 1

    [row] = await OrderRefund.filter(order_id=order_id)
    [made] = app.emulator.refunds.values()  # found at Stripe, not made again
    assert (row.status.value, row.attempt, row.stripe_refund_id) == ("succeeded", 0, made["id"])
    order = await Order.get(id=order_id)
    assert order.amount_refunded == 900
