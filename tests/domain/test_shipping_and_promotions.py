"""Shipping rates and promotion codes, kept by staff and offered at Stripe's Checkout; automatic
tax with each line's tax code. Through the public API, the emulator and its signed webhooks.

A checkout stores what it offered on the order, so that the session request rebuilt from the
order (the sweeper's replay, same idempotency key) is the very same whatever staff changed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import stripe

from ordergraph.domain.checkout import session_request
from ordergraph.domain.shipping import checkout_offer
from ordergraph.models import Order, OrderItem, Product, PromotionCode, ShippingRate
from ordergraph.stripe_emulator.errors import EmulatorError
from ordergraph.stripe_gateway import StripeGateway
from tests.conftest import Harness
from tests.utils.dbstate import snapshot
from tests.utils.helpers import checked_out_order, make_product
from tests.utils.shop import (
    CODES,
    RATES,
    SET_CODE_ACTIVE,
    create_code,
    offered_rate,
    staff,
    upsert_rate,
)

ORDER = """query($id: ID!) { order(id: $id) {
  status promotionCode subtotal { amount } discount { amount } shippingCost { amount }
  tax { amount } total { amount } shippingMethod { name amount { amount } }
} }"""
UPSERT_PRODUCT = """mutation($input: ProductInput!) { upsertProduct(input: $input) {
  product { id sku taxCode } userErrors { code message field } } }"""


def _created_sessions(app: Harness) -> list[dict[str, Any]]:
    """The parameters of every Checkout Session the service asked for, oldest first."""
    return [
        r.params
        for r in app.emulator.requests
        if r.method == "POST" and r.path == "/v1/checkout/sessions"
    ]


async def _checkout(app: Harness, user: str, sku: str, quantity: int) -> tuple[str, str]:
    product = await make_product(sku, price=2500, stock=10)
    order_id = (await checked_out_order(app, app.token(user), product, quantity))["orderId"]
    order = await Order.get(id=order_id)
    assert order.stripe_checkout_session_id
    return order_id, order.stripe_checkout_session_id


async def _order(app: Harness, order_id: str, user: str) -> dict[str, Any]:
    body = await app.gql(ORDER, {"id": order_id}, token=app.token(user))
    assert "errors" not in body, body
    order: dict[str, Any] = body["data"]["order"]
    return order


async def test_rates_and_a_code_are_offered_and_the_code_redeems_once(app: Harness) -> None:
    standard = await upsert_rate(
        app, name="Standard", amount=500, freeFrom=4000, minDeliveryDays=3, maxDeliveryDays=5
    )
    assert standard["userErrors"] == [], standard
    express = await upsert_rate(app, name="Express", amount=1500, minDeliveryDays=1)
    assert express["userErrors"] == [], express
    archived = await upsert_rate(app, name="Pigeon", amount=100, active=False)
    assert archived["userErrors"] == [], archived
    made = await create_code(app, code="save20", percentOff=20, maxRedemptions=1)
    assert made["userErrors"] == [], made
    code = made["promotionCode"]
    assert (code["code"], code["percentOff"], code["active"]) == ("SAVE20", 20.0, True)
    row = await PromotionCode.get(code="SAVE20")
    at_stripe = app.emulator.promotion_codes[row.stripe_promotion_code_id]
    assert (at_stripe["code"], at_stripe["max_redemptions"]) == ("SAVE20", 1)
    assert app.emulator.coupons[row.stripe_coupon_id]["percent_off"] == 20

    # Everyone sees the active rates; staff the archived one too.
    public = (await app.gql(RATES))["data"]["shippingRates"]
    assert [(r["name"], r["amount"]["amount"], r["freeFrom"]) for r in public] == [
        ("Standard", 500, 4000),
        ("Express", 1500, None),
    ]
    every = (await app.gql(RATES, token=staff(app)))["data"]["shippingRates"]
    assert [r["name"] for r in every] == ["Pigeon", "Standard", "Express"]

    # 2 x 2500 reaches Standard's 4000: it is offered at 0.
    order_id, session_id = await _checkout(app, "alice", "TEE", 2)
    [params] = _created_sessions(app)
    assert params["allow_promotion_codes"] in (True, "true")
    assert "automatic_tax" not in params
    assert "tax_code" not in params["line_items"][0]["price_data"]["product_data"]
    assert params["shipping_address_collection"] == {"allowed_countries": ["US"]}
    assert params["shipping_options"] == [
        {
            "shipping_rate_data": {
                "display_name": "Standard",
                "type": "fixed_amount",
                "fixed_amount": {"amount": "0", "currency": "usd"},
                "delivery_estimate": {
                    "minimum": {"unit": "business_day", "value": "3"},
                    "maximum": {"unit": "business_day", "value": "5"},
                },
            }
        },
        {
            "shipping_rate_data": {
                "display_name": "Express",
                "type": "fixed_amount",
                "fixed_amount": {"amount": "1500", "currency": "usd"},
                "delivery_estimate": {"minimum": {"unit": "business_day", "value": "1"}},
            }
        },
    ]
    delivery = await app.emulator.complete_session(
        session_id, shipping_rate=offered_rate(app, session_id, "Express"), promotion_code="SAVE20"
    )
    assert delivery.status_code == 200, delivery.body
    assert await _order(app, order_id, "alice") == {
        "status": "PAYMENT_CONFIRMED",
        "promotionCode": "SAVE20",
        "subtotal": {"amount": 5000},
        "discount": {"amount": 1000},
        "shippingCost": {"amount": 1500},
        "tax": {"amount": 0},
        "total": {"amount": 5500},
        "shippingMethod": {"name": "Express", "amount": {"amount": 1500}},
    }
    codes = (await app.gql(CODES, token=staff(app)))["data"]["promotionCodes"]
    assert codes == [
        {"id": code["id"], "code": "SAVE20", "active": True, "maxRedemptions": 1,
         "timesRedeemed": 1}
    ]  # fmt: skip

    # A second order may not use the code again: Stripe says it is used up.
    _, second = await _checkout(app, "bob", "MUG", 1)
    options = app.emulator.sessions[second]["shipping_options"]
    assert [o["shipping_amount"] for o in options] == [500, 1500]  # 2500 < 4000
    with pytest.raises(EmulatorError):
        await app.emulator.complete_session(second, promotion_code="SAVE20")

    # Deactivated: at Stripe too, and the next checkout no longer offers codes.
    body = await app.gql(SET_CODE_ACTIVE, {"id": code["id"], "active": False}, token=staff(app))
    answer = body["data"]["setPromotionCodeActive"]
    assert answer == {
        "promotionCode": {"id": code["id"], "code": "SAVE20", "active": False, "timesRedeemed": 1},
        "userErrors": [],
    }
    assert app.emulator.promotion_codes[row.stripe_promotion_code_id]["active"] is False
    await _checkout(app, "carol", "CAP", 1)
    assert "allow_promotion_codes" not in _created_sessions(app)[-1]


async def test_a_shop_without_rates_or_codes_asks_for_neither(app: Harness) -> None:
    order_id, session_id = await _checkout(app, "alice", "TEE", 1)
    [params] = _created_sessions(app)
    for key in ("shipping_options", "allow_promotion_codes", "automatic_tax"):
        assert key not in params
    assert params["line_items"][0]["price_data"]["product_data"] == {"name": "Product TEE"}
    assert (await Order.get(id=order_id)).checkout_options == {
        "shipping_options": [],
        "allow_promotion_codes": False,
        "automatic_tax": False,
    }
    assert app.emulator.sessions[session_id]["shipping_options"] == []


async def test_automatic_tax_sends_each_lines_tax_code(taxed: Harness) -> None:
    app = taxed
    body = await app.gql(
        UPSERT_PRODUCT,
        {"input": {"sku": "BOOK", "name": "Book", "price": 2000, "stock": 5,
                   "taxCode": "txcd_99999999"}},
        token=staff(app),
    )  # fmt: skip
    product = body["data"]["upsertProduct"]
    assert product["userErrors"] == [] and product["product"]["taxCode"] == "txcd_99999999"
    body = await app.gql(
        UPSERT_PRODUCT,
        {"input": {"sku": "BAD", "name": "Bad", "price": 1, "stock": 1, "taxCode": "vat"}},
        token=staff(app),
    )
    assert [e["code"] for e in body["data"]["upsertProduct"]["userErrors"]] == ["INVALID_INPUT"]
    await upsert_rate(app, name="Standard", amount=500)
    row = await Product.get(sku="BOOK")
    order_id = (await checked_out_order(app, app.token("anna"), row, 2))["orderId"]
    [params] = _created_sessions(app)
    assert params["automatic_tax"] == {"enabled": "true"}
    assert params["line_items"][0]["price_data"]["product_data"] == {
        "name": "Book",
        "tax_code": "txcd_99999999",
    }
    session_id = (await Order.get(id=order_id)).stripe_checkout_session_id
    assert session_id
    delivery = await app.emulator.complete_session(session_id, country="DE")
    assert delivery.status_code == 200, delivery.body
    # 4000 and 500 of shipping, exclusive, at the emulator's 19 % for Germany.
    order = await _order(app, order_id, "anna")
    assert (order["tax"], order["total"]) == ({"amount": 855}, {"amount": 5355})


async def test_the_replayed_session_request_is_the_same_whatever_changed(app: Harness) -> None:
    await upsert_rate(app, name="Standard", amount=500)
    made = await create_code(app, code="TEN", amountOff=1000)
    order_id, session_id = await _checkout(app, "alice", "TEE", 1)
    order = await Order.get(id=order_id)
    items = list(await OrderItem.filter(order_id=order_id).order_by("id"))
    before = session_request(order, items, app.settings)

    # Staff change everything the offer depends on.
    await upsert_rate(app, name="Express", amount=100)
    await ShippingRate.filter(name="Standard").update(active=False)
    await app.gql(SET_CODE_ACTIVE, {"id": made["promotionCode"]["id"], "active": False},
                  token=staff(app))  # fmt: skip
    after = session_request(await Order.get(id=order_id), items, app.settings)
    assert after == before
    gateway = StripeGateway(app.settings)
    try:
        replayed = await gateway.create_checkout_session(after)  # same idempotency key
    finally:
        await gateway.close()
    assert replayed.id == session_id


BAD_RATES = [
    ({"name": "Neg", "amount": -1}, "amount"),
    ({"name": "Huge", "amount": 2**31 - 1, "freeFrom": -5}, "freeFrom"),
    ({"name": "", "amount": 100}, "name"),
    ({"name": "Days", "amount": 100, "minDeliveryDays": 5, "maxDeliveryDays": 2},
     "maxDeliveryDays"),
]  # fmt: skip
BAD_CODES = [
    ({"code": "ZERO", "percentOff": 0}, "percentOff"),
    ({"code": "MANY", "percentOff": 150}, "percentOff"),
    ({"code": "BOTH", "percentOff": 10, "amountOff": 100}, "percentOff"),
    ({"code": "NONE"}, "percentOff"),
    ({"code": "NEG", "amountOff": -100}, "amountOff"),
    ({"code": "bad code!", "percentOff": 10}, "code"),
    ({"code": "ONCE", "percentOff": 10, "maxRedemptions": 0}, "maxRedemptions"),
]


@pytest.mark.parametrize(("values", "field"), BAD_RATES)
async def test_bad_rates_are_refused_and_nothing_is_stored(
    app: Harness, values: dict[str, Any], field: str
) -> None:
    before = await snapshot(app.emulator)
    answer = await upsert_rate(app, **values)
    assert answer["shippingRate"] is None
    assert [(e["code"], e["field"]) for e in answer["userErrors"]] == [
        ("INVALID_INPUT", ["input", field])
    ]
    assert await snapshot(app.emulator) == before


@pytest.mark.parametrize(("values", "field"), BAD_CODES)
async def test_bad_codes_are_refused_and_nothing_is_created(
    app: Harness, values: dict[str, Any], field: str
) -> None:
    before = await snapshot(app.emulator)
    answer = await create_code(app, **values)
    assert answer["promotionCode"] is None
    assert [(e["code"], e["field"]) for e in answer["userErrors"]] == [
        ("INVALID_INPUT", ["input", field])
    ]
    assert await snapshot(app.emulator) == before
    assert app.emulator.coupons == {} and app.emulator.promotion_codes == {}


async def test_a_duplicate_or_a_refusal_at_stripe_creates_no_row(app: Harness) -> None:
    first = await create_code(app, code="HELLO", percentOff=5)
    assert first["userErrors"] == [], first
    again = await create_code(app, code="hello", amountOff=300)
    assert [e["code"] for e in again["userErrors"]] == ["INVALID_INPUT"]
    assert "exists" in again["userErrors"][0]["message"]
    assert len(app.emulator.promotion_codes) == 1

    # A code Stripe already has (made there by someone else): Stripe refuses it.
    client = stripe.StripeClient(
        "sk_test_ordergraph", base_addresses={"api": app.settings.stripe_api_base or ""}
    )
    coupon = await client.v1.coupons.create_async(params={"percent_off": 5, "duration": "once"})
    await client.v1.promotion_codes.create_async(
        params={"promotion": {"type": "coupon", "coupon": coupon.id}, "code": "TAKEN"}
    )
    refused = await create_code(app, code="TAKEN", percentOff=5)
    assert [e["code"] for e in refused["userErrors"]] == ["PAYMENT_PROVIDER_ERROR"], refused
    assert refused["promotionCode"] is None
    assert await PromotionCode.filter(code="TAKEN").count() == 0


async def test_the_offer_holds_the_five_cheapest_active_rates_and_live_codes_only(
    app: Harness,
) -> None:
    """What a checkout is offered, read in one statement on PostgreSQL: at most Stripe's five
    shipping options, the cheapest active ones in order (free from their threshold), and
    promotion codes only while one is active and unexpired, with or without rates."""
    now = datetime.now(UTC)
    assert await checkout_offer(1000, app.settings) == {
        "shipping_options": [],
        "allow_promotion_codes": False,
        "automatic_tax": app.settings.automatic_tax,
    }
    for n, amount in enumerate([900, 500, 700, 300, 800, 600]):
        await ShippingRate.create(
            name=f"rate {n}", amount=amount, free_from=1000 if n == 1 else None
        )
    await ShippingRate.create(name="archived", amount=100, active=False)
    code = {"percent_off": 10.0, "currency": "usd", "stripe_coupon_id": "c", "active": True}
    await PromotionCode.create(
        code="OLD", expires_at=now - timedelta(days=1), stripe_promotion_code_id="p1", **code
    )
    await PromotionCode.create(
        code="OFF", stripe_promotion_code_id="p2", **{**code, "active": False}
    )

    offer = await checkout_offer(1000, app.settings)

    assert [(o["name"], o["amount"]) for o in offer["shipping_options"]] == [
        ("rate 3", 300),
        ("rate 1", 0),
        ("rate 5", 600),
        ("rate 2", 700),
        ("rate 4", 800),
    ]
    assert offer["allow_promotion_codes"] is False
    await PromotionCode.create(
        code="NEW", expires_at=now + timedelta(days=1), stripe_promotion_code_id="p3", **code
    )
    await ShippingRate.all().update(active=False)
    offer = await checkout_offer(999, app.settings)
    assert offer["shipping_options"] == []
    assert offer["allow_promotion_codes"] is True
