"""Checkout's money: shipping options, promotion codes, discounts and automatic tax.

The session of ``session_params()`` has a subtotal of 2 x 1250 + 499 = 2999 (usd).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import stripe

from ordergraph.stripe_emulator import EmulatorError
from tests.stripe_emulator.conftest import EmuEnv, create_session, session_params

STANDARD = {
    "shipping_rate_data": {
        "display_name": "Standard",
        "type": "fixed_amount",
        "fixed_amount": {"amount": 500, "currency": "usd"},
        "delivery_estimate": {
            "minimum": {"unit": "business_day", "value": 3},
            "maximum": {"unit": "business_day", "value": 5},
        },
    }
}
EXPRESS = {
    "shipping_rate_data": {
        "display_name": "Express",
        "type": "fixed_amount",
        "fixed_amount": {"amount": 1500, "currency": "usd"},
        "tax_behavior": "exclusive",
        "tax_code": "txcd_92010001",
        "metadata": {"carrier": "dhl"},
    }
}


async def _code(
    client: Any, code: str, *, percent_off: float = 20, **extra: Any
) -> tuple[Any, Any]:
    coupon = await client.v1.coupons.create_async(
        params={"percent_off": percent_off, "duration": "once", **extra.pop("coupon", {})}
    )
    promo = await client.v1.promotion_codes.create_async(
        params={"promotion": {"type": "coupon", "coupon": coupon.id}, "code": code, **extra}
    )
    return coupon, promo


async def _shop_session(client: Any, **overrides: Any) -> Any:
    params: dict[str, Any] = {
        "shipping_options": [STANDARD, EXPRESS],
        "allow_promotion_codes": True,
        "automatic_tax": {"enabled": True},
    }
    params.update(overrides)
    return await create_session(client, **params)


async def test_created_session_offers_the_options(emu_env: EmuEnv, emu_stripe: Any) -> None:
    session = await _shop_session(emu_stripe)
    standard, express = (o.shipping_rate for o in session.shipping_options)
    assert [o.to_dict() for o in session.shipping_options] == [
        {"shipping_amount": 500, "shipping_rate": standard},
        {"shipping_amount": 1500, "shipping_rate": express},
    ]
    # Checkout preselects the first option; tax waits for the customer's address.
    assert session.shipping_cost.to_dict() == {
        "amount_subtotal": 500,
        "amount_tax": 0,
        "amount_total": 500,
        "shipping_rate": standard,
    }
    assert session.total_details.to_dict() == {
        "amount_discount": 0,
        "amount_shipping": 500,
        "amount_tax": 0,
    }
    assert (session.amount_subtotal, session.amount_total) == (2999, 3499)
    assert session.allow_promotion_codes is True
    assert session.discounts == []
    assert session.automatic_tax.to_dict() == {
        "enabled": True,
        "liability": {"type": "self"},
        "provider": "stripe",
        "status": "requires_location_inputs",
    }
    rate = await emu_stripe.v1.shipping_rates.retrieve_async(express)
    assert (rate.display_name, rate.fixed_amount.amount, rate.tax_code) == (
        "Express",
        1500,
        "txcd_92010001",
    )
    assert (rate.tax_behavior, rate.metadata.to_dict()) == ("exclusive", {"carrier": "dhl"})
    assert rate.delivery_estimate is None


async def test_completed_with_code_rate_and_german_tax(emu_env: EmuEnv, emu_stripe: Any) -> None:
    coupon, promo = await _code(emu_stripe, "FALL20")
    session = await _shop_session(emu_stripe)
    express = session.shipping_options[1].shipping_rate
    delivery = await emu_env.emu.complete_session(
        session.id, shipping_rate=express, promotion_code="fall20", country="DE"
    )
    assert delivery.status_code == 200

    # By hand. Lines 2500 + 499 = 2999; 20 % off is 599.8, rounded to 600, spread over the
    # lines in proportion: 2500 -> 500.17 -> 500, 499 -> 99.83 -> 100 (largest remainder).
    # Tax at 19 % on each line after its discount and on shipping (never discounted):
    # 2000 -> 380, 399 -> 75.81 -> 76, shipping 1500 -> 285; 741 in all, added on top.
    subtotal, discount, shipping, tax = 2999, 600, 1500, 380 + 76 + 285
    total = subtotal - discount + shipping + tax
    assert total == 4640
    fetched = await emu_stripe.v1.checkout.sessions.retrieve_async(session.id)
    expected: dict[str, Any] = {
        "amount_subtotal": subtotal,
        "amount_total": total,
        "total_details": {
            "amount_discount": discount,
            "amount_shipping": shipping,
            "amount_tax": tax,
        },
        "shipping_cost": {
            "amount_subtotal": 1500,
            "amount_tax": 285,
            "amount_total": 1785,
            "shipping_rate": express,
        },
        "discounts": [{"coupon": None, "promotion_code": promo.id}],
        "automatic_tax": {
            "enabled": True,
            "liability": {"type": "self"},
            "provider": "stripe",
            "status": "complete",
        },
    }
    assert {key: fetched.to_dict()[key] for key in expected} == expected
    assert (fetched.status, fetched.payment_status) == ("complete", "paid")

    items = await emu_stripe.v1.checkout.sessions.line_items.list_async(session.id)
    assert [
        (i.amount_subtotal, i.amount_discount, i.amount_tax, i.amount_total) for i in items.data
    ] == [(2500, 500, 380, 2380), (499, 100, 76, 475)]

    pi = await emu_stripe.v1.payment_intents.retrieve_async(fetched.payment_intent)
    assert (pi.amount, pi.amount_received) == (total, total)
    charge = await emu_stripe.v1.charges.retrieve_async(pi.latest_charge)
    assert charge.amount == total

    # The signed event the receiver verified carries the same figures.
    [event] = emu_env.receiver.of_type("checkout.session.completed")
    assert event["id"] == delivery.event["id"]
    obj = event["data"]["object"]
    assert {key: obj[key] for key in expected} == expected

    assert (await emu_stripe.v1.promotion_codes.retrieve_async(promo.id)).times_redeemed == 1
    assert (await emu_stripe.v1.coupons.retrieve_async(coupon.id)).times_redeemed == 1


async def test_default_rate_and_the_shipping_address_country(
    emu_env: EmuEnv, emu_stripe: Any
) -> None:
    session = await _shop_session(emu_stripe)
    shipping = {"name": "Marie", "address": {"line1": "1 rue", "city": "Paris", "country": "FR"}}
    await emu_env.emu.complete_session(session.id, shipping=shipping)
    done = emu_env.emu.sessions[session.id]
    # The first option (500), no discount, French tax at 20 %: 2500 -> 500, 499 -> 99.8 ->
    # 100, shipping 500 -> 100.
    assert done["total_details"] == {
        "amount_discount": 0,
        "amount_shipping": 500,
        "amount_tax": 700,
    }
    assert done["amount_total"] == 2999 + 500 + 700
    assert done["discounts"] == []
    # Without tax the amounts stay those of the session's currency alone (US: 0 by default).
    plain = await _shop_session(emu_stripe, automatic_tax={"enabled": False})
    await emu_env.emu.complete_session(plain.id, shipping=shipping)
    assert emu_env.emu.sessions[plain.id]["amount_total"] == 2999 + 500
    assert emu_env.emu.sessions[plain.id]["automatic_tax"]["status"] is None


async def test_tax_rates_are_configurable_and_inclusive_prices(
    emu_env: EmuEnv, emu_stripe: Any
) -> None:
    async with httpx.AsyncClient(base_url=emu_env.base) as http:
        put = await http.put("/_emulator/tax_rates", json={"DE": 1900, "AT": 2000})
        assert put.json() == {"DE": 1900, "AT": 2000}
        assert (await http.put("/_emulator/tax_rates", json={"DE": -1})).status_code == 400
        assert (await http.get("/_emulator/tax_rates")).json() == {"DE": 1900, "AT": 2000}
    params = session_params()
    params["line_items"] = [
        {
            "price_data": {
                "currency": "eur",
                "unit_amount": 1190,
                "tax_behavior": "inclusive",
                "product_data": {"name": "Tea", "tax_code": "txcd_99999999"},
            },
            "quantity": 1,
        },
        {
            "price_data": {
                "currency": "eur",
                "unit_amount": 300,
                "tax_behavior": "exclusive",
                "product_data": {"name": "Gift card", "tax_code": "txcd_00000000"},
            },
            "quantity": 1,
        },
    ]
    ship = {
        "shipping_rate_data": {
            "display_name": "Post",
            "fixed_amount": {"amount": 595, "currency": "eur"},
            "tax_behavior": "inclusive",
        }
    }
    params.update(shipping_options=[ship], automatic_tax={"enabled": "true"})
    session = await emu_stripe.v1.checkout.sessions.create_async(params=params)
    await emu_env.emu.complete_session(session.id, country="de")
    done = emu_env.emu.sessions[session.id]
    # Inclusive: 1190 holds 1190 * 19 / 119 = 190 of tax, 595 holds 95; nothing is added.
    # The gift card is nontaxable (txcd_00000000).
    assert done["total_details"] == {
        "amount_discount": 0,
        "amount_shipping": 595,
        "amount_tax": 285,
    }
    assert done["shipping_cost"]["amount_tax"] == 95
    assert done["shipping_cost"]["amount_total"] == 595
    assert done["amount_total"] == 1190 + 300 + 595
    emu_env.emu.set_tax_rates({"DE": 700})
    assert emu_env.emu.tax_rates == {"DE": 700}


async def test_exhausted_codes_are_refused(emu_env: EmuEnv, emu_stripe: Any) -> None:
    _, once = await _code(emu_stripe, "ONCE", max_redemptions=1)
    first, second = await _shop_session(emu_stripe), await _shop_session(emu_stripe)
    await emu_env.emu.complete_session(first.id, promotion_code="ONCE")
    with pytest.raises(EmulatorError) as info:
        await emu_env.emu.complete_session(second.id, promotion_code="ONCE")
    assert str(info.value) == (
        "This promotion code cannot be redeemed because it has been used the maximum number "
        "of times."
    )
    assert info.value.status == 400
    # Refused: the session is untouched and still open; the count did not move.
    left = emu_env.emu.sessions[second.id]
    assert (left["status"], left["amount_total"], left["discounts"]) == ("open", 3499, [])
    assert emu_env.emu.promotion_codes[once.id]["times_redeemed"] == 1

    # The coupon's own max_redemptions counts redemptions through all its codes.
    coupon, _ = await _code(emu_stripe, "A-1", coupon={"max_redemptions": 1})
    await emu_stripe.v1.promotion_codes.create_async(
        params={"promotion": {"type": "coupon", "coupon": coupon.id}, "code": "A-2"}
    )
    await emu_env.emu.complete_session(second.id, promotion_code="A-1")
    third = await _shop_session(emu_stripe)
    async with httpx.AsyncClient(base_url=emu_env.base) as http:
        refused = await http.post(
            f"/_emulator/checkout/sessions/{third.id}/complete", json={"promotion_code": "A-2"}
        )
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == (
        "This promotion code cannot be redeemed because the associated coupon is no longer valid."
    )
    assert (await emu_stripe.v1.coupons.retrieve_async(coupon.id)).valid is False


async def test_expired_inactive_unknown_and_unwelcome_codes(
    emu_env: EmuEnv, emu_stripe: Any
) -> None:
    coupon, promo = await _code(emu_stripe, "SOON", expires_at=int(time.time()) + 3600)
    session = await _shop_session(emu_stripe)
    emu = emu_env.emu

    async def refused(code: str, sid: str = session.id) -> str:
        with pytest.raises(EmulatorError) as info:
            await emu.complete_session(sid, promotion_code=code)
        assert info.value.status == 400
        return str(info.value)

    emu.promotion_codes[promo.id]["expires_at"] = int(time.time()) - 1
    assert await refused("SOON") == "This promotion code has expired."
    emu.promotion_codes[promo.id]["expires_at"] = None
    emu.coupons[coupon.id]["redeem_by"] = int(time.time()) - 1  # the coupon's own deadline
    assert await refused("SOON") == (
        "This promotion code cannot be redeemed because the associated coupon is no longer valid."
    )
    emu.coupons[coupon.id]["redeem_by"] = None
    await emu_stripe.v1.promotion_codes.update_async(promo.id, params={"active": False})
    assert await refused("SOON") == "This promotion code is inactive."
    assert await refused("NEVER-HEARD") == "This code is invalid."
    plain = await create_session(emu_stripe)
    assert "does not accept promotion codes" in await refused("SOON", plain.id)
    with pytest.raises(EmulatorError, match="not one of this session's shipping options"):
        await emu.complete_session(session.id, shipping_rate="shr_nope")
    assert emu.sessions[session.id]["status"] == "open"

    await emu_stripe.v1.promotion_codes.update_async(promo.id, params={"active": True})
    await emu.complete_session(session.id, promotion_code="soon")
    assert emu.sessions[session.id]["total_details"]["amount_discount"] == 600


async def test_discounts_at_creation(emu_env: EmuEnv, emu_stripe: Any) -> None:
    coupon = await emu_stripe.v1.coupons.create_async(
        params={"amount_off": 5000, "currency": "usd", "max_redemptions": 2}
    )
    session = await create_session(emu_stripe, discounts=[{"coupon": coupon.id}])
    # amount_off is capped at the subtotal.
    assert session.discounts[0].to_dict() == {"coupon": coupon.id, "promotion_code": None}
    assert (session.total_details.amount_discount, session.amount_total) == (2999, 0)
    await emu_env.emu.complete_session(session.id)
    assert (await emu_stripe.v1.coupons.retrieve_async(coupon.id)).times_redeemed == 1

    _, promo = await _code(emu_stripe, "TEN", percent_off=10)
    by_code = await create_session(emu_stripe, discounts=[{"promotion_code": promo.id}])
    assert by_code.discounts[0].to_dict() == {"coupon": None, "promotion_code": promo.id}
    assert (by_code.total_details.amount_discount, by_code.amount_total) == (300, 2699)
    with pytest.raises(EmulatorError, match="does not accept promotion codes"):
        await emu_env.emu.complete_session(by_code.id, promotion_code="TEN")


@pytest.mark.parametrize(
    ("overrides", "param", "fragment"),
    [
        (
            {
                "shipping_options": [
                    {"shipping_rate_data": {**STANDARD["shipping_rate_data"], "typo": 1}}
                ]
            },
            "shipping_options[0][shipping_rate_data][typo]",
            "Received unknown parameter: shipping_options[0][shipping_rate_data][typo]",
        ),
        (
            {"automatic_tax": {"enabled": True, "typo": 1}},
            "automatic_tax[typo]",
            "Received unknown parameter: automatic_tax[typo]",
        ),
        ({"automatic_tax": {"liability": {"type": "self"}}}, "automatic_tax[enabled]", "Missing"),
        (
            {"allow_promotion_codes": True, "discounts": [{"coupon": "X"}]},
            "allow_promotion_codes",
            "You may only specify one of these parameters: allow_promotion_codes, discounts.",
        ),
        (
            {"shipping_options": [STANDARD] * 6},
            "shipping_options",
            "You may only specify up to 5 shipping options.",
        ),
        (
            {"shipping_options": [{"shipping_rate": "shr_nope"}]},
            "shipping_options[0][shipping_rate]",
            "No such shipping_rate: 'shr_nope'",
        ),
        (
            {
                "shipping_options": [
                    {
                        "shipping_rate_data": {
                            "display_name": "x",
                            "fixed_amount": {"amount": 1, "currency": "eur"},
                        }
                    }
                ]
            },
            "shipping_options[0][shipping_rate_data]",
            "must match the currency",
        ),
        ({"discounts": [{"coupon": "NOPE"}]}, "discounts[0][coupon]", "No such coupon"),
        ({"discounts": [{"promotion": "X"}]}, "discounts[0][promotion]", "unknown parameter"),
        ({"allow_promotion_codes": "yes"}, "allow_promotion_codes", "Invalid boolean: yes"),
    ],
)
async def test_session_options_refused_as_stripe_refuses(
    emu_env: EmuEnv, emu_stripe: Any, overrides: dict[str, Any], param: str, fragment: str
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        await create_session(emu_stripe, **overrides)
    assert info.value.param == param
    assert fragment in str(info.value.user_message)
    assert emu_env.emu.sessions == {} and emu_env.emu.shipping_rates == {}


async def test_line_item_tax_parameters(emu_stripe: Any) -> None:
    params = session_params()
    params["line_items"][0]["price_data"]["product_data"]["typo"] = "x"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await emu_stripe.v1.checkout.sessions.create_async(params=params)
    assert info.value.param == "line_items[0][price_data][product_data][typo]"
    params = session_params()
    params["line_items"][0]["price_data"]["tax_behavior"] = "sometimes"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await emu_stripe.v1.checkout.sessions.create_async(params=params)
    assert info.value.param == "line_items[0][price_data][tax_behavior]"
    params = session_params()
    params["line_items"][0]["price_data"]["tax_behavior"] = "exclusive"
    params["line_items"][0]["price_data"]["product_data"]["tax_code"] = "txcd_99999999"
    session = await emu_stripe.v1.checkout.sessions.create_async(params=params)
    items = await emu_stripe.v1.checkout.sessions.line_items.list_async(session.id)
    assert items.data[0].price.tax_behavior == "exclusive"
