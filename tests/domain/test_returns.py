"""The EU withdrawal (two steps, by the owner or whoever holds the mail's link) and returns that
staff receive or decline, through the public API: the return and order rows, the lines' ledger,
stock, the emulator's refunds, the history, the mailbox and the live subscription."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote

import pytest

from ordergraph.models import Order, OrderItem, OrderReturn, OrderStatusChange, Product
from ordergraph.stripe_emulator import StripeEmulator
from tests.conftest import Harness, Mailbox, SmtpServer, outbox_settled, service_env
from tests.utils.dbstate import snapshot
from tests.utils.helpers import add_to_cart, checkout, make_product, stock_of
from tests.utils.live import TRANSPORT_WS, Follower, ServerProcess, eventually

START = "mutation($e: String) { startGuestSession(email: $e) { token userErrors { code } } }"
PAYLOAD = """orderReturn { id status lines { productId productName quantity } refunded { amount }
               confirmedAt receivedAt }
  order { status paymentStatus amountRefunded { amount } }
  userErrors { code message field }"""
REQUEST = (
    """mutation($id: ID!, $lines: [ReturnLineInput!], $access: String) {
  requestWithdrawal(orderId: $id, lines: $lines, accessToken: $access) { %s } }"""
    % PAYLOAD
)
CONFIRM = (
    """mutation($id: ID!, $access: String) {
  confirmWithdrawal(returnId: $id, accessToken: $access) { %s } }"""
    % PAYLOAD
)
RECEIVE = "mutation($id: ID!) { receiveReturn(returnId: $id) { %s } }" % PAYLOAD
REJECT = (
    """mutation($id: ID!, $why: String!) {
  rejectReturn(returnId: $id, reason: $why) { %s } }"""
    % PAYLOAD
)
DEADLINE = """query($id: ID!, $access: String) {
  order(id: $id, accessToken: $access) { withdrawalDeadline canWithdraw accessToken } }"""
STAFF_ACTION = "mutation($id: ID!) { %s(orderId: $id) { userErrors { code message } } }"
SHIP = """mutation($id: ID!) {
  markOrderShipped(orderId: $id, trackingNumber: "1Z999", carrier: "UPS") {
    userErrors { code message } } }"""
DELIVER = STAFF_ACTION % "markOrderDelivered"
ORDER_LINK = re.compile(r"/order-success/([0-9a-f-]{36})\?access=([^\s\"<]+)")


async def _guest(app: Harness, email: str = "guest@example.com") -> str:
    body = await app.gql(START, {"e": email})
    assert body["data"]["startGuestSession"]["userErrors"] == [], body
    token: str = body["data"]["startGuestSession"]["token"]
    return token


async def _paid(app: Harness, token: str, lines: list[tuple[Product, int]]) -> str:
    for product, quantity in lines:
        await add_to_cart(app, token, product, quantity)
    placed = await checkout(app, token)
    assert placed["userErrors"] == [], placed
    order = await Order.get(id=placed["orderId"])
    assert order.stripe_checkout_session_id
    delivery = await app.emulator.complete_session(order.stripe_checkout_session_id)
    assert delivery.status_code == 200, delivery.body
    return str(order.id)


async def _mail(mailbox: Mailbox, subject: str) -> EmailMessage:
    async def find() -> EmailMessage | None:
        return next((m for m in mailbox.messages if m["Subject"] == subject), None)

    found: EmailMessage | None = await eventually(find)
    assert found is not None, (subject, [m["Subject"] for m in mailbox.messages])
    return found


def _text(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


async def _link_token(mailbox: Mailbox, order_id: str) -> str:
    """The access token of the receipt's link: what a guest holds, signed in or not."""
    link = ORDER_LINK.search(_text(await _mail(mailbox, f"Your receipt for order {order_id[:8]}")))
    assert link is not None and link.group(1) == order_id
    return unquote(link.group(2))


async def _step(
    app: Harness, query: str, variables: dict[str, Any], token: str | None = None
) -> dict[str, Any]:
    body = await app.gql(query, variables, token=token)
    assert "errors" not in body, body
    [payload] = body["data"].values()
    assert isinstance(payload, dict)
    return payload


def _ok(payload: dict[str, Any]) -> dict[str, Any]:
    assert payload["userErrors"] == [], payload
    answer: dict[str, Any] = payload["orderReturn"]
    return answer


def _codes(payload: dict[str, Any]) -> list[str]:
    return [e["code"] for e in payload["userErrors"]]


async def _fulfil(app: Harness, order_id: str) -> None:
    for query in (STAFF_ACTION % "markOrderAwaitingShipment", SHIP, DELIVER):
        body = await app.gql(query, {"id": order_id}, token=app.token("sam", staff=True))
        assert [p["userErrors"] for p in body["data"].values()] == [[]], body


async def _ledger(order_id: str, product: Product) -> tuple[int, int, int]:
    item = await OrderItem.get(order_id=order_id, product_id=product.id)
    return item.quantity_refunded, item.quantity_restocked, item.quantity_returning


async def _history(order_id: str) -> list[tuple[str, str | None, str | None]]:
    changes = await OrderStatusChange.filter(order_id=order_id).order_by("id")
    return [(c.status.value, c.reason, c.actor) for c in changes]


def _refunds(app: Harness) -> list[int]:
    return [r["amount"] for r in app.emulator.refunds.values()]


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _named(order_return: dict[str, Any]) -> list[tuple[str, int]]:
    return sorted((line["productName"], line["quantity"]) for line in order_return["lines"])


def _lines(*pairs: tuple[Product, int]) -> list[dict[str, Any]]:
    return [{"productId": str(p.id), "quantity": q} for p, q in pairs]


async def _shop(app: Harness) -> tuple[Product, Product]:
    return (
        await make_product("MUG", price=1200, stock=10, name="Stoneware mug"),
        await make_product("TEE", price=2500, stock=10, name="Linen tee"),
    )


async def test_a_guest_withdraws_through_the_mail_link_before_shipping(
    app: Harness, mailbox: Mailbox
) -> None:
    mug, tee = await _shop(app)
    order_id = await _paid(app, await _guest(app), [(mug, 2), (tee, 1)])
    access = await _link_token(mailbox, order_id)
    assert [await stock_of(p) for p in (mug, tee)] == [8, 9]

    requested = _ok(await _step(app, REQUEST, {"id": order_id, "access": access}))
    assert requested["status"] == "REQUESTED" and requested["confirmedAt"] is None
    assert _named(requested) == [("Linen tee", 1), ("Stoneware mug", 2)]
    assert _refunds(app) == [] and await stock_of(mug) == 8

    confirmed = await _step(app, CONFIRM, {"id": requested["id"], "access": access})

    answer = _ok(confirmed)
    order = await Order.get(id=order_id)
    assert (answer["status"], answer["refunded"]) == ("REFUNDED", {"amount": order.total})
    assert (confirmed["order"]["status"], confirmed["order"]["paymentStatus"]) == (
        "REFUNDED",
        "REFUNDED",
    )
    assert _refunds(app) == [order.total] == [2 * 1200 + 2500]
    assert (order.status.value, order.amount_refunded) == ("refunded", order.total)
    assert [await stock_of(p) for p in (mug, tee)] == [10, 10]  # released once each
    assert [await _ledger(order_id, p) for p in (mug, tee)] == [(2, 2, 0), (1, 1, 0)]
    row = await OrderReturn.get(id=answer["id"])
    assert row.confirmed_at is not None and row.is_withdrawal
    assert datetime.fromisoformat(answer["confirmedAt"]) == _utc(row.confirmed_at)
    assert [h for h in await _history(order_id) if h[2] == "order-link"] == [
        ("payment_confirmed", "withdrawal requested", "order-link"),
        ("payment_confirmed", "withdrawal confirmed", "order-link"),
        ("refunded", f"refunded 49.00 USD: return {row.id}", "order-link"),
    ]

    ack = await _mail(mailbox, f"Withdrawal confirmed for order {order_id[:8]}")
    assert ack["X-Envelope-To"] == "guest@example.com"
    text = _text(ack)
    stamp = _utc(row.confirmed_at).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert f"We received your withdrawal from order {order_id} on {stamp}" in text, text
    assert "Stoneware mug: 2 unit(s)" in text and "Linen tee: 1 unit(s)" in text, text

    # Confirmed again (a double click): the same answer, nothing more.
    again = _ok(await _step(app, CONFIRM, {"id": requested["id"], "access": access}))
    assert again["status"] == "REFUNDED" and _refunds(app) == [order.total]
    assert [await stock_of(p) for p in (mug, tee)] == [10, 10]


async def test_a_guest_withdraws_after_delivery_and_staff_finish_the_returns(
    app: Harness, mailbox: Mailbox
) -> None:
    mug, tee = await _shop(app)
    guest = await _guest(app)
    order_id = await _paid(app, guest, [(mug, 2), (tee, 1)])
    access = await _link_token(mailbox, order_id)
    await _fulfil(app, order_id)
    staff = app.token("sam", staff=True)

    async with Follower(app.url, None, order_id, TRANSPORT_WS, access_token=access) as live:
        assert (await live.next())["status"] == "DELIVERED"
        ask = {"id": order_id, "access": access, "lines": _lines((mug, 2))}
        first = _ok(await _step(app, REQUEST, ask))
        assert (await live.next())["history"][-1]["reason"] == "withdrawal requested"
        confirmed = _ok(await _step(app, CONFIRM, {"id": first["id"], "access": access}))
        told = await live.next()
        assert (told["status"], told["history"][-1]["reason"]) == (
            "DELIVERED",
            "withdrawal confirmed",
        )

    assert (confirmed["status"], confirmed["refunded"]) == ("CONFIRMED", None)
    assert _refunds(app) == []
    assert await _ledger(order_id, mug) == (0, 0, 2)
    assert await stock_of(mug) == 8
    ack = _text(await _mail(mailbox, f"Withdrawal confirmed for order {order_id[:8]}"))
    assert "Stoneware mug: 2 unit(s)" in ack and "Linen tee" not in ack, ack

    # The shopper cannot finish their own return.
    assert _codes(await _step(app, RECEIVE, {"id": first["id"]}, guest)) == ["FORBIDDEN"]
    received = await _step(app, RECEIVE, {"id": first["id"]}, staff)
    answer = _ok(received)
    assert (answer["status"], answer["refunded"]) == ("REFUNDED", {"amount": 2400})
    assert answer["receivedAt"] is not None
    assert (received["order"]["status"], received["order"]["paymentStatus"]) == (
        "DELIVERED",
        "PARTIALLY_REFUNDED",
    )
    assert _refunds(app) == [2400]
    assert await stock_of(mug) == 10  # back on sale
    assert await _ledger(order_id, mug) == (2, 2, 0)
    # Received again: nothing more.
    assert _ok(await _step(app, RECEIVE, {"id": first["id"]}, staff))["status"] == "REFUNDED"
    assert _refunds(app) == [2400] and await stock_of(mug) == 10

    # The tee comes back worn: declined, with the reason mailed; the tee is the shopper's again.
    second = _ok(await _step(app, REQUEST, {"id": order_id, "access": access}))
    assert _named(second) == [("Linen tee", 1)]
    _ok(await _step(app, CONFIRM, {"id": second["id"], "access": access}))
    assert await _ledger(order_id, tee) == (0, 0, 1)
    why = "The tee was worn and washed."
    rejected = _ok(await _step(app, REJECT, {"id": second["id"], "why": why}, staff))
    assert (rejected["status"], rejected["refunded"]) == ("REJECTED", None)
    assert await _ledger(order_id, tee) == (0, 0, 0)
    assert _refunds(app) == [2400] and await stock_of(tee) == 9
    row = await OrderReturn.get(id=second["id"])
    assert (row.status.value, row.rejection_reason) == ("rejected", why)
    declined = _text(await _mail(mailbox, f"Your return for order {order_id[:8]} was declined"))
    assert why in declined and second["id"] in declined, declined
    assert (await _history(order_id))[-1] == ("delivered", f"return declined: {why}", "staff:sam")
    order = await Order.get(id=order_id)
    assert (order.status.value, order.payment_status.value, order.amount_refunded) == (
        "delivered",
        "partially_refunded",
        2400,
    )


async def test_a_withdrawal_after_the_deadline_is_refused(app: Harness) -> None:
    mug, _ = await _shop(app)
    alice = app.token("alice")
    order_id = await _paid(app, alice, [(mug, 1)])
    await _fulfil(app, order_id)
    in_time = datetime.now(UTC).replace(microsecond=0) - timedelta(days=13)
    await Order.filter(id=order_id).update(delivered_at=in_time)
    requested = _ok(await _step(app, REQUEST, {"id": order_id}, alice))
    seen = (await app.gql(DEADLINE, {"id": order_id}, token=alice))["data"]["order"]
    assert datetime.fromisoformat(seen["withdrawalDeadline"]) == in_time + timedelta(days=14)
    assert seen["canWithdraw"] is True

    late = in_time - timedelta(days=2)  # delivered 15 days ago
    await Order.filter(id=order_id).update(delivered_at=late)
    before = await snapshot(app.emulator)

    refused = await _step(app, CONFIRM, {"id": requested["id"]}, alice)
    assert _codes(refused) == ["WITHDRAWAL_PERIOD_OVER"], refused
    again = await _step(app, REQUEST, {"id": order_id}, alice)
    assert _codes(again) == ["WITHDRAWAL_PERIOD_OVER"] and again["orderReturn"] is None

    assert await snapshot(app.emulator) == before
    assert await OrderReturn.filter(order_id=order_id).count() == 1
    assert (await OrderReturn.get(id=requested["id"])).status.value == "requested"
    seen = (await app.gql(DEADLINE, {"id": order_id}, token=alice))["data"]["order"]
    assert datetime.fromisoformat(seen["withdrawalDeadline"]) == late + timedelta(days=14)
    assert seen["canWithdraw"] is False


async def test_a_strangers_token_is_refused(app: Harness) -> None:
    mug, tee = await _shop(app)
    alice, bob = app.token("alice"), app.token("bob")
    order_id = await _paid(app, alice, [(mug, 1)])
    other_id = await _paid(app, bob, [(tee, 1)])
    bobs = (await app.gql(DEADLINE, {"id": other_id}, token=bob))["data"]["order"]["accessToken"]
    assert bobs
    before = await snapshot(app.emulator)

    for access, token in (
        (bobs, None),  # another order's link
        ("not-a-token", None),
        (None, bob),  # a stranger
        (None, app.token("sam", staff=True)),  # staff: the declaration is the shopper's
        (bobs, bob),
    ):
        refused = await _step(app, REQUEST, {"id": order_id, "access": access}, token)
        assert _codes(refused) == ["NOT_FOUND"], (access, token, refused)
    anonymous = await app.gql(REQUEST, {"id": order_id})
    assert anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", anonymous
    assert await snapshot(app.emulator) == before

    requested = _ok(await _step(app, REQUEST, {"id": order_id}, alice))
    before = await snapshot(app.emulator)
    for access, token in ((bobs, None), (None, bob)):
        refused = await _step(app, CONFIRM, {"id": requested["id"], "access": access}, token)
        assert _codes(refused) == ["NOT_FOUND"], (access, token, refused)
    anonymous = await app.gql(CONFIRM, {"id": requested["id"]})
    assert anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", anonymous
    assert await snapshot(app.emulator) == before
    # The owner may.
    assert _ok(await _step(app, CONFIRM, {"id": requested["id"]}, alice))["status"] == "REFUNDED"


async def test_a_partial_withdrawal_then_the_rest(app: Harness) -> None:
    mug, tee = await _shop(app)
    alice = app.token("alice")
    order_id = await _paid(app, alice, [(mug, 2), (tee, 1)])

    first = _ok(await _step(app, REQUEST, {"id": order_id, "lines": _lines((mug, 1))}, alice))
    assert _ok(await _step(app, CONFIRM, {"id": first["id"]}, alice))["refunded"] == {
        "amount": 1200
    }
    assert _refunds(app) == [1200]
    assert [await stock_of(p) for p in (mug, tee)] == [9, 9]
    order = await Order.get(id=order_id)
    assert (order.status.value, order.payment_status.value) == (
        "payment_confirmed",
        "partially_refunded",
    )

    before = await snapshot(app.emulator)
    too_many = await _step(app, REQUEST, {"id": order_id, "lines": _lines((mug, 2))}, alice)
    assert [(e["code"], e["field"]) for e in too_many["userErrors"]] == [
        ("INVALID_INPUT", ["lines"])
    ]
    assert await snapshot(app.emulator) == before

    rest = _ok(await _step(app, REQUEST, {"id": order_id}, alice))
    assert _named(rest) == [("Linen tee", 1), ("Stoneware mug", 1)]
    done = await _step(app, CONFIRM, {"id": rest["id"]}, alice)
    assert _ok(done)["refunded"] == {"amount": 1200 + 2500}
    assert done["order"]["paymentStatus"] == "REFUNDED"
    assert sum(_refunds(app)) == 2 * 1200 + 2500
    assert [await stock_of(p) for p in (mug, tee)] == [10, 10]
    assert [await _ledger(order_id, p) for p in (mug, tee)] == [(2, 2, 0), (1, 1, 0)]
    assert _codes(await _step(app, REQUEST, {"id": order_id}, alice)) == ["INVALID_TRANSITION"]


@pytest.fixture(scope="module")
async def no_withdrawals(
    harness: Harness,
    database_url: str,
    stripe_server: tuple[StripeEmulator, str],
    smtp: SmtpServer,
) -> AsyncIterator[Harness]:
    """The service as `ordergraph serve` with WITHDRAWAL_DAYS=0, on the harness's database."""
    env = service_env(
        database_url, stripe_server[1], smtp.port, WITHDRAWAL_DAYS="0", SWEEP_INTERVAL_SECONDS="0"
    )
    process = ServerProcess(env, "no-withdrawals")
    await process.start()
    try:
        settings = dataclasses.replace(harness.settings, withdrawal_days=0)
        yield dataclasses.replace(harness, url=process.url, settings=settings)
    finally:
        await process.stop()


async def test_withdrawal_days_zero_turns_withdrawal_off(
    app: Harness, no_withdrawals: Harness
) -> None:
    mug, _ = await _shop(app)
    alice = app.token("alice")
    paid = await _paid(app, alice, [(mug, 1)])
    delivered = await _paid(app, alice, [(mug, 1)])
    await _fulfil(app, delivered)
    await outbox_settled()  # on SQLite, the harness's process done writing before the other's
    before = await snapshot(app.emulator)

    for order_id in (paid, delivered):
        refused = await _step(no_withdrawals, REQUEST, {"id": order_id}, alice)
        assert _codes(refused) == ["WITHDRAWAL_PERIOD_OVER"], refused
        seen = (await no_withdrawals.gql(DEADLINE, {"id": order_id}, token=alice))["data"]
        assert (seen["order"]["withdrawalDeadline"], seen["order"]["canWithdraw"]) == (None, False)
    assert await snapshot(app.emulator) == before
    # The harness's own service (14 days) would take it.
    seen = (await app.gql(DEADLINE, {"id": delivered}, token=alice))["data"]["order"]
    assert seen["canWithdraw"] is True and seen["withdrawalDeadline"] is not None


async def test_a_withdrawal_whose_refund_answer_was_lost_is_confirmed_by_its_retry(
    app: Harness, mailbox: Mailbox
) -> None:
    mug, tee = await _shop(app)
    alice = app.token("alice")
    order_id = await _paid(app, alice, [(mug, 2), (tee, 1)])
    requested = _ok(await _step(app, REQUEST, {"id": order_id}, alice))

    # Stripe refunds everything, but answers after the service gave up on it.
    app.emulator.inject_fault("delay", delay=app.settings.stripe_timeout_seconds + 0.5)
    lost = _ok(await _step(app, CONFIRM, {"id": requested["id"]}, alice))
    # The declaration stands, acknowledged; its refund waits for Stripe's answer.
    assert (lost["status"], lost["refunded"]) == ("CONFIRMED", None), lost
    assert lost["confirmedAt"] is not None
    await _mail(mailbox, f"Withdrawal confirmed for order {order_id[:8]}")

    async def money_back() -> bool:
        await app.emulator.drain()
        return (await Order.get(id=order_id)).payment_status.value == "refunded"

    assert await eventually(money_back)  # charge.refunded
    # The units of a refund not yet recorded stay out until it is.
    assert [await stock_of(p) for p in (mug, tee)] == [8, 9]

    # The shopper confirms again: the withdrawal is theirs, acknowledged, and refunded once.
    retried = await _step(app, CONFIRM, {"id": requested["id"]}, alice)
    answer = _ok(retried)
    assert answer["status"] == "REFUNDED" and answer["confirmedAt"] is not None
    assert _refunds(app) == [2 * 1200 + 2500]
    assert [await stock_of(p) for p in (mug, tee)] == [10, 10]


async def test_a_return_after_the_rest_was_refunded_still_comes_back_to_stock(
    app: Harness, mailbox: Mailbox
) -> None:
    """Staff refunded everything while a return was on its way: receiving it records the units
    and restocks them, paying nothing more."""
    mug, _ = await _shop(app)
    alice = app.token("alice")
    order_id = await _paid(app, alice, [(mug, 2)])
    await _fulfil(app, order_id)
    asked = _ok(await _step(app, REQUEST, {"id": order_id, "lines": _lines((mug, 1))}, alice))
    _ok(await _step(app, CONFIRM, {"id": asked["id"]}, alice))
    refund_all = await app.gql(
        "mutation($id: ID!) { refundOrder(orderId: $id) { userErrors { code } } }",
        {"id": order_id},
        token=app.token("sam", staff=True),
    )
    assert refund_all["data"]["refundOrder"]["userErrors"] == []

    received = _ok(await _step(app, RECEIVE, {"id": asked["id"]}, app.token("sam", staff=True)))

    assert (received["status"], received["refunded"]) == ("REFUNDED", {"amount": 0})
    assert _refunds(app) == [2400]  # the one refund of everything
    assert await _ledger(order_id, mug) == (1, 1, 0)
    assert await stock_of(mug) == 9
