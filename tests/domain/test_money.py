"""An order's money as Stripe charged it: a promotion code, a shipping rate, automatic tax.

Through the public API and the emulator's signed webhooks: staff create the codes and rates
(`createPromotionCode`, `upsertShippingRate`), the service offers them on the session, and
automatic tax comes from a service started with AUTOMATIC_TAX=true.
"""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

from ordergraph.models import Order, PaymentDiscrepancy, Product, PromotionCode
from tests.conftest import Harness, Mailbox
from tests.utils.helpers import checked_out_order, make_product, stock_of
from tests.utils.shop import create_code, offered_rate, upsert_rate

MONEY = "amount currency"
ORDER = """query($id: ID!) { order(id: $id) {
  status paymentStatus email promotionCode
  subtotal { %(m)s } discount { %(m)s } shippingCost { %(m)s } tax { %(m)s } total { %(m)s }
  amountRefunded { %(m)s } shippingMethod { name amount { %(m)s } }
} }""" % {"m": MONEY}
REFUND = """mutation($id: ID!) { refundOrder(orderId: $id) {
  order { status paymentStatus total { amount } amountRefunded { amount } }
  userErrors { code message }
} }"""

ADDRESSES = {
    "DE": {"line1": "Unter den Linden 1", "city": "Berlin", "postal_code": "10117"},
    "FR": {"line1": "1 rue de Rivoli", "city": "Paris", "postal_code": "75001"},
}


async def _promotion_code(app: Harness, code: str, percent_off: int = 20) -> str:
    made = await create_code(app, code=code, percentOff=percent_off)
    assert made["userErrors"] == [], made
    row = await PromotionCode.get(id=int(made["promotionCode"]["id"]))
    return row.stripe_promotion_code_id


async def _shipping_rate(app: Harness, name: str, amount: int) -> None:
    made = await upsert_rate(app, name=name, amount=amount)
    assert made["userErrors"] == [], made


async def _placed(app: Harness, user: str, sku: str = "TEE") -> tuple[Product, str, str]:
    product = await make_product(sku, price=2500, stock=10)
    payload = await checked_out_order(app, app.token(user), product, 2)
    order = await Order.get(id=payload["orderId"])
    assert order.stripe_checkout_session_id
    return product, payload["orderId"], order.stripe_checkout_session_id


async def _read(app: Harness, order_id: str, user: str) -> dict[str, Any]:
    body = await app.gql(ORDER, {"id": order_id}, token=app.token(user))
    assert "errors" not in body, body
    order: dict[str, Any] = body["data"]["order"]
    return order


def _usd(amount: int) -> dict[str, Any]:
    return {"amount": amount, "currency": "USD"}


def _receipt(messages: list[EmailMessage], order_id: str) -> str:
    [mail] = [
        m for m in messages if "receipt" in m["Subject"].lower() and order_id[:8] in m["Subject"]
    ]
    body = mail.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


async def test_code_rate_and_tax_in_two_countries(taxed: Harness, mailbox: Mailbox) -> None:
    app = taxed
    promo_id = await _promotion_code(app, "SAVE20")
    await _shipping_rate(app, "Express", 1500)
    await _shipping_rate(app, "Standard", 500)
    # Emulator defaults, said here: 19 % in Germany, 20 % in France.
    app.emulator.set_tax_rates({"US": 0, "DE": 1900, "FR": 2000, "GB": 2000})
    # Lines 2 x 2500 = 5000; 20 % off: 1000; Express 1500 (exclusive tax, never discounted).
    # DE: 4000 * 19 % = 760, 1500 * 19 % = 285; FR: 800 and 300.
    expected = {"DE": (1045, 6545), "FR": (1100, 6600)}
    orders = {}
    for country, user in (("DE", "anna"), ("FR", "louis")):
        _, order_id, session_id = await _placed(app, user, sku=f"TEE-{country}")
        session = app.emulator.sessions[session_id]
        assert session["allow_promotion_codes"] is True
        assert session["automatic_tax"]["enabled"] is True
        delivery = await app.emulator.complete_session(
            session_id,
            shipping_rate=offered_rate(app, session_id, "Express"),
            promotion_code="save20",
            country=country,
            shipping={"name": user, "address": {**ADDRESSES[country], "country": country}},
        )
        assert delivery.status_code == 200, delivery.body
        assert '"outcome":"applied"' in delivery.body.replace(" ", "")
        tax, total = expected[country]
        charged = app.emulator.sessions[session_id]
        assert charged["amount_total"] == total  # what the emulator charged
        assert charged["discounts"] == [{"coupon": None, "promotion_code": promo_id}]
        assert await _read(app, order_id, user) == {
            "status": "PAYMENT_CONFIRMED",
            "paymentStatus": "PAID",
            "email": f"{user}@example.com",
            "promotionCode": "SAVE20",
            "subtotal": _usd(5000),
            "discount": _usd(1000),
            "shippingCost": _usd(1500),
            "tax": _usd(tax),
            "total": _usd(total),
            "amountRefunded": _usd(0),
            "shippingMethod": {"name": "Express", "amount": _usd(1500)},
        }
        orders[country] = order_id

    messages = await mailbox.wait_for(2)
    for country, order_id in orders.items():
        tax, total = expected[country]
        text = _receipt(messages, order_id)
        assert "Subtotal: 50.00 USD" in text
        assert "Discount (SAVE20): -10.00 USD" in text
        assert "Shipping (Express): 15.00 USD" in text
        assert f"Tax: {tax / 100:.2f} USD" in text
        assert f"Total paid: {total / 100:.2f} USD" in text
    assert await PaymentDiscrepancy.all().count() == 0


async def test_figures_that_do_not_add_up_are_refused_and_settled(
    app: Harness, mailbox: Mailbox
) -> None:
    product, order_id, session_id = await _placed(app, "alice")
    # The subtotal is the order's own, but the total is not subtotal - discount + shipping
    # (+ tax): 4000 charged with no discount said.
    completed = await app.emulator.complete_session(session_id, amount_total=4000, deliver=False)
    for session in (completed.event["data"]["object"], app.emulator.sessions[session_id]):
        session["amount_subtotal"] = 5000
    assert session["total_details"] == {
        "amount_discount": 0,
        "amount_shipping": 0,
        "amount_tax": 0,
    }

    delivery = await app.emulator.deliver(completed.event)

    assert delivery.status_code == 200, delivery.body
    assert '"outcome":"refused"' in delivery.body.replace(" ", "")
    pi = app.emulator.sessions[session_id]["payment_intent"]
    assert [(r["payment_intent"], r["amount"]) for r in app.emulator.refunds.values()] == [
        (pi, 4000)
    ]
    order = await Order.get(id=order_id)
    assert (order.status.value, order.payment_status.value) == ("payment_failed", "refunded")
    assert (order.subtotal, order.total, order.discount) == (5000, 5000, 0)
    assert await stock_of(product) == 10
    [finding] = await PaymentDiscrepancy.all()
    assert (finding.kind, finding.checkout_session_id) == ("REFUSED_PAYMENT", session_id)
    assert "do not add up" in finding.detail
    assert finding.action.startswith("refunded 4000 USD")
    assert finding.resolved_at is not None
    [mail] = await mailbox.wait_for(1)
    assert "refund" in mail["Subject"].lower()


async def test_a_refund_after_a_discount_refunds_what_was_charged(
    app: Harness, mailbox: Mailbox
) -> None:
    await _promotion_code(app, "SAVE20")
    product, order_id, session_id = await _placed(app, "alice")
    delivery = await app.emulator.complete_session(session_id, promotion_code="SAVE20")
    assert delivery.status_code == 200, delivery.body
    pi = app.emulator.sessions[session_id]["payment_intent"]
    assert app.emulator.payment_intents[pi]["amount"] == 4000

    body = await app.gql(REFUND, {"id": order_id}, token=app.token("sam", staff=True))

    payload = body["data"]["refundOrder"]
    assert payload["userErrors"] == [], payload
    assert payload["order"] == {
        "status": "REFUNDED",
        "paymentStatus": "REFUNDED",
        "total": {"amount": 4000},
        "amountRefunded": {"amount": 4000},
    }
    await app.emulator.drain()
    assert [r["amount"] for r in app.emulator.refunds.values()] == [4000]
    order = await Order.get(id=order_id)
    assert (order.amount_refunded, order.total, order.subtotal) == (4000, 4000, 5000)
    assert await stock_of(product) == 10
    # Asked again, the same request is the same refund; another one finds nothing left.
    again = await app.gql(REFUND, {"id": order_id}, token=app.token("sam", staff=True))
    assert again["data"]["refundOrder"]["userErrors"] == []
    more = await app.gql(
        "mutation($id: ID!) { refundOrder(orderId: $id, amount: 1) { userErrors { code } } }",
        {"id": order_id},
        token=app.token("sam", staff=True),
    )
    assert more["data"]["refundOrder"]["userErrors"] == [{"code": "INVALID_TRANSITION"}]
    assert len(app.emulator.refunds) == 1


async def test_without_the_features_an_order_is_as_before(app: Harness, mailbox: Mailbox) -> None:
    _, order_id, session_id = await _placed(app, "alice")
    before = await _read(app, order_id, "alice")
    assert (before["subtotal"], before["total"]) == (_usd(5000), _usd(5000))

    delivery = await app.emulator.complete_session(session_id)

    assert delivery.status_code == 200, delivery.body
    assert await _read(app, order_id, "alice") == {
        "status": "PAYMENT_CONFIRMED",
        "paymentStatus": "PAID",
        "email": "alice@example.com",
        "promotionCode": None,
        "subtotal": _usd(5000),
        "discount": _usd(0),
        "shippingCost": _usd(0),
        "tax": _usd(0),
        "total": _usd(5000),
        "amountRefunded": _usd(0),
        "shippingMethod": None,
    }
    text = _receipt(await mailbox.wait_for(1), order_id)
    assert "Total paid: 50.00 USD" in text
    assert "Subtotal" not in text and "Discount" not in text and "Tax" not in text
    # No shipping rate or promotion code to look up at Stripe.
    assert not [r for r in app.emulator.requests if "shipping_rates" in r.path]
    assert not [r for r in app.emulator.requests if r.path.startswith("/v1/promotion_codes")]
