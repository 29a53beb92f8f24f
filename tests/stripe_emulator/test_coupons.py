"""Coupons, promotion codes and shipping rates through the SDK: create, retrieve, list, update."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import stripe

from tests.stripe_emulator.conftest import EmuEnv


async def test_coupon_create_retrieve_update_delete(emu_env: EmuEnv, emu_stripe: Any) -> None:
    coupons = emu_stripe.v1.coupons
    redeem_by = int(time.time()) + 3600
    percent = await coupons.create_async(
        params={
            "percent_off": 25.5,
            "duration": "once",
            "max_redemptions": 3,
            "redeem_by": redeem_by,
            "name": "25.5% off",
            "metadata": {"campaign": "fall"},
        }
    )
    assert percent.object == "coupon"
    assert re.fullmatch(r"[A-Z0-9]{8}", percent.id)
    assert percent.to_dict() == {
        "id": percent.id,
        "object": "coupon",
        "amount_off": None,
        "created": percent.created,
        "currency": None,
        "duration": "once",
        "duration_in_months": None,
        "livemode": False,
        "max_redemptions": 3,
        "metadata": {"campaign": "fall"},
        "name": "25.5% off",
        "percent_off": 25.5,
        "redeem_by": redeem_by,
        "times_redeemed": 0,
        "valid": True,
    }
    amount = await coupons.create_async(
        params={"id": "FIVE-OFF", "amount_off": 500, "currency": "USD", "duration": "forever"}
    )
    assert (amount.id, amount.amount_off, amount.currency, amount.duration) == (
        "FIVE-OFF",
        500,
        "usd",
        "forever",
    )
    fetched = await coupons.retrieve_async("FIVE-OFF")
    assert fetched.to_dict() == amount.to_dict()

    updated = await coupons.update_async(
        "FIVE-OFF", params={"name": "Five off", "metadata": {"a": "1", "b": "2"}}
    )
    assert (updated.name, updated.metadata.to_dict()) == ("Five off", {"a": "1", "b": "2"})
    updated = await coupons.update_async("FIVE-OFF", params={"metadata": {"a": ""}})
    assert updated.metadata.to_dict() == {"b": "2"}

    listed = await coupons.list_async(params={"limit": 1})
    assert [c.id for c in listed.data] == ["FIVE-OFF"] and listed.has_more is True

    deleted = await coupons.delete_async("FIVE-OFF")
    assert (deleted.id, deleted.deleted) == ("FIVE-OFF", True)
    with pytest.raises(stripe.InvalidRequestError) as info:
        await coupons.retrieve_async("FIVE-OFF")
    assert (info.value.http_status, info.value.code) == (404, "resource_missing")


@pytest.mark.parametrize(
    ("params", "param", "fragment"),
    [
        ({"duration": "once"}, "percent_off", "either `percent_off` or `amount_off`"),
        ({"percent_off": 10, "amount_off": 100, "currency": "usd"}, None, "only specify one"),
        ({"amount_off": 100}, "currency", "Missing required param: currency"),
        ({"percent_off": 120}, "percent_off", "less than or equal to 100"),
        ({"percent_off": 10, "duration": "weekly"}, "duration", "Invalid duration"),
        ({"percent_off": 10, "duration": "repeating"}, "duration_in_months", "Missing"),
        ({"percent_off": 10, "redeem_by": 1_000_000}, "redeem_by", "in the future"),
        ({"percent_off": 10, "applies_to": {"products": ["prod_1"]}}, "applies_to", "support"),
        ({"percent_off": 10, "percent": 10}, "percent", "Received unknown parameter"),
    ],
)
async def test_coupon_refusals(
    emu_stripe: Any, params: dict[str, Any], param: str | None, fragment: str
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        await emu_stripe.v1.coupons.create_async(params=params)
    assert info.value.http_status == 400
    assert info.value.param == param
    assert fragment in str(info.value.user_message)


async def test_coupon_id_must_be_new(emu_stripe: Any) -> None:
    await emu_stripe.v1.coupons.create_async(params={"id": "SAME", "percent_off": 5})
    with pytest.raises(stripe.InvalidRequestError) as info:
        await emu_stripe.v1.coupons.create_async(params={"id": "SAME", "percent_off": 5})
    assert (info.value.code, str(info.value.user_message)) == (
        "resource_already_exists",
        "Coupon already exists.",
    )


async def test_promotion_code_create_retrieve_list_update(emu_env: EmuEnv, emu_stripe: Any) -> None:
    coupon = await emu_stripe.v1.coupons.create_async(params={"percent_off": 20})
    codes = emu_stripe.v1.promotion_codes
    expires_at = int(time.time()) + 3600
    promo = await codes.create_async(
        params={
            "promotion": {"type": "coupon", "coupon": coupon.id},
            "code": "FALL20",
            "max_redemptions": 10,
            "expires_at": expires_at,
            "metadata": {"channel": "newsletter"},
        }
    )
    # The current shape (fixtures3.json's promotion_code): the coupon is named in `promotion`.
    assert promo.id.startswith("promo_1")
    assert promo.to_dict() == {
        "id": promo.id,
        "object": "promotion_code",
        "active": True,
        "code": "FALL20",
        "created": promo.created,
        "customer": None,
        "customer_account": None,
        "expires_at": expires_at,
        "livemode": False,
        "max_redemptions": 10,
        "metadata": {"channel": "newsletter"},
        "promotion": {"coupon": coupon.id, "type": "coupon"},
        "restrictions": {
            "first_time_transaction": False,
            "minimum_amount": None,
            "minimum_amount_currency": None,
        },
        "times_redeemed": 0,
    }
    recorded = emu_env.emu.requests[-1].params
    assert recorded["promotion"] == {"type": "coupon", "coupon": coupon.id}

    fetched = await codes.retrieve_async(promo.id, params={"expand": ["promotion.coupon"]})
    assert fetched.promotion.coupon.id == coupon.id
    assert fetched.promotion.coupon.percent_off == 20.0

    other = await codes.create_async(params={"promotion": {"type": "coupon", "coupon": coupon.id}})
    assert len(other.code) == 8 and other.code.isalnum()

    by_code = await codes.list_async(params={"code": "fall20"})
    assert [p.id for p in by_code.data] == [promo.id]
    assert by_code.url == "/v1/promotion_codes"
    every = await codes.list_async(params={"coupon": coupon.id})
    assert [p.id for p in every.data] == [other.id, promo.id]

    off = await codes.update_async(promo.id, params={"active": False, "metadata": {"x": "y"}})
    assert off.active is False
    assert off.metadata.to_dict() == {"channel": "newsletter", "x": "y"}
    active = await codes.list_async(params={"active": True})
    assert [p.id for p in active.data] == [other.id]
    inactive = await codes.list_async(params={"active": False, "code": "FALL20"})
    assert [p.id for p in inactive.data] == [promo.id]
    back = await codes.update_async(promo.id, params={"active": True})
    assert back.active is True


async def test_promotion_code_refusals(emu_stripe: Any) -> None:
    coupon = await emu_stripe.v1.coupons.create_async(
        params={"percent_off": 20, "max_redemptions": 5}
    )
    codes = emu_stripe.v1.promotion_codes
    await codes.create_async(
        params={"promotion": {"type": "coupon", "coupon": coupon.id}, "code": "TAKEN"}
    )
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"code": "X"}, "promotion", "Missing required param: promotion."),
        (
            {"promotion": {"type": "coupon", "coupon": "NOPE"}},
            "promotion[coupon]",
            "No such coupon: 'NOPE'",
        ),
        (
            {"promotion": {"type": "coupon", "coupon": coupon.id, "typo": "1"}},
            "promotion[typo]",
            "Received unknown parameter: promotion[typo]",
        ),
        (
            {"promotion": {"type": "coupon", "coupon": coupon.id}, "code": "taken"},
            "code",
            "already exists",
        ),
        (
            {"promotion": {"type": "coupon", "coupon": coupon.id}, "code": "NO SPACES"},
            "code",
            "Invalid code",
        ),
        (
            {"promotion": {"type": "coupon", "coupon": coupon.id}, "max_redemptions": 6},
            "max_redemptions",
            "cannot be greater than its coupon's",
        ),
        (
            {"promotion": {"type": "coupon", "coupon": coupon.id}, "expires_at": 1_000_000},
            "expires_at",
            "must be in the future",
        ),
    ]
    for params, param, fragment in cases:
        with pytest.raises(stripe.InvalidRequestError) as info:
            await codes.create_async(params=params)
        status = 404 if "No such" in fragment else 400
        assert (info.value.http_status, info.value.param) == (status, param)
        assert fragment in str(info.value.user_message)
    with pytest.raises(stripe.InvalidRequestError) as info:
        await codes.retrieve_async("promo_nope")
    assert info.value.code == "resource_missing"


async def test_shipping_rate_create_and_retrieve(emu_stripe: Any) -> None:
    rate = await emu_stripe.v1.shipping_rates.create_async(
        params={
            "display_name": "Ground shipping",
            "type": "fixed_amount",
            "fixed_amount": {"amount": 500, "currency": "usd"},
            "delivery_estimate": {
                "minimum": {"unit": "business_day", "value": 2},
                "maximum": {"unit": "business_day", "value": 5},
            },
        }
    )
    assert rate.id.startswith("shr_1")
    assert rate.to_dict() == {
        "id": rate.id,
        "object": "shipping_rate",
        "active": True,
        "created": rate.created,
        "delivery_estimate": {
            "maximum": {"unit": "business_day", "value": 5},
            "minimum": {"unit": "business_day", "value": 2},
        },
        "display_name": "Ground shipping",
        "fixed_amount": {"amount": 500, "currency": "usd"},
        "livemode": False,
        "metadata": {},
        "tax_behavior": "unspecified",
        "tax_code": None,
        "type": "fixed_amount",
    }
    assert (await emu_stripe.v1.shipping_rates.retrieve_async(rate.id)).to_dict() == rate.to_dict()
    with pytest.raises(stripe.InvalidRequestError) as info:
        await emu_stripe.v1.shipping_rates.create_async(
            params={"display_name": "x", "fixed_amount": {"amount": 1, "currency": "usd", "a": 1}}
        )
    assert info.value.param == "fixed_amount[a]"
