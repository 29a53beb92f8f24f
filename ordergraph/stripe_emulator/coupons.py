"""Coupons API: ``/v1/coupons`` create, retrieve, update, delete and list.

A coupon is a discount (``percent_off``, or ``amount_off`` in one ``currency``)
that promotion codes and Checkout's ``discounts`` apply. Shapes follow
``fixtures3.json``'s ``coupon``; parameters the SDK's ``CouponCreateParams``.
``applies_to`` (products) and ``currency_options`` are refused as unsupported:
the emulator has no product catalogue and one currency per coupon.
``valid`` is recomputed whenever a coupon is read (``redeem_by`` passes with the
clock) and after each redemption.
"""

from __future__ import annotations

import secrets
import string
from decimal import Decimal

from ordergraph.stripe_emulator.errors import StripeApiError, _invalid
from ordergraph.stripe_emulator.listing import list_page
from ordergraph.stripe_emulator.params import (
    _check_unknown,
    _currency_param,
    _decimal_param,
    _enum_param,
    _int_param,
    _metadata_param,
    _metadata_update,
    _str_param,
)
from ordergraph.stripe_emulator.state import ApiRoute, EmulatorState, _Call, _now, _Result
from ordergraph.stripe_emulator.types import JsonDict

COUPON_CREATE_PARAMS = frozenset(
    """amount_off applies_to currency currency_options duration duration_in_months expand
    id max_redemptions metadata name percent_off redeem_by""".split()
)
COUPON_UPDATE_PARAMS = frozenset("currency_options expand metadata name".split())
COUPON_LIST_PARAMS = frozenset("created ending_before expand limit starting_after".split())
DURATIONS = ("forever", "once", "repeating")
# redeem_by "cannot be set to more than 5 years in the future".
MAX_REDEEM_BY_SECONDS = 5 * 365 * 24 * 60 * 60
MAX_NAME_LENGTH = 40
_ID_ALPHABET = string.ascii_uppercase + string.digits


def coupon_usable(coupon: JsonDict, now: int | None = None) -> bool:
    """Whether the coupon can still be redeemed: before ``redeem_by``, under ``max_redemptions``."""
    now = _now() if now is None else now
    if coupon.get("redeem_by") is not None and coupon["redeem_by"] <= now:
        return False
    limit = coupon.get("max_redemptions")
    return limit is None or coupon["times_redeemed"] < limit


def refresh_valid(coupon: JsonDict) -> JsonDict:
    coupon["valid"] = coupon_usable(coupon)
    return coupon


def coupon_discount(coupon: JsonDict, subtotal: int) -> int:
    """What the coupon takes off ``subtotal``: percent rounded to the nearest minor unit
    (half up), ``amount_off`` capped at the subtotal."""
    if coupon.get("percent_off") is not None:
        percent = Decimal(str(coupon["percent_off"]))
        off = (Decimal(subtotal) * percent / 100).quantize(Decimal(1), rounding="ROUND_HALF_UP")
        return min(int(off), subtotal)
    return min(int(coupon["amount_off"]), subtotal)


def currency_problem(coupon: JsonDict, currency: str | None) -> str | None:
    """An ``amount_off`` coupon only applies to amounts in its own currency."""
    if coupon.get("amount_off") is not None and currency and coupon["currency"] != currency:
        return (
            f"The coupon {coupon['id']} is in {coupon['currency']} and cannot be applied "
            f"to an amount in {currency}."
        )
    return None


def redeem_coupon(coupon: JsonDict) -> None:
    coupon["times_redeemed"] += 1
    refresh_valid(coupon)


def _new_coupon_id(state: EmulatorState) -> str:
    while True:
        candidate = "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))
        if candidate not in state.coupons:
            return candidate


def _name(raw: object) -> str | None:
    if raw in (None, ""):
        return None
    name = _str_param(raw, "name")
    if len(name) > MAX_NAME_LENGTH:
        raise _invalid(f"Invalid name: must be at most {MAX_NAME_LENGTH} characters", "name")
    return name


async def create_coupon(state: EmulatorState, call: _Call) -> _Result:
    """``POST /v1/coupons``: ``percent_off`` or ``amount_off`` + ``currency``."""
    p = call.params
    _check_unknown(p, COUPON_CREATE_PARAMS)
    for unsupported in ("applies_to", "currency_options"):
        if unsupported in p:
            raise _invalid(f"The emulator does not support {unsupported}.", unsupported)
    has_percent = p.get("percent_off") not in (None, "")
    has_amount = p.get("amount_off") not in (None, "")
    if has_percent and has_amount:
        raise _invalid("You may only specify one of these parameters: amount_off, percent_off.")
    if not (has_percent or has_amount):
        raise _invalid(
            "You must pass either `percent_off` or `amount_off` to create a coupon.",
            "percent_off",
            "parameter_missing",
        )
    percent_off: float | None = None
    amount_off: int | None = None
    currency: str | None = None
    if has_percent:
        percent = _decimal_param(p["percent_off"], "percent_off")
        if not Decimal(0) < percent <= Decimal(100):
            raise _invalid(
                "Invalid percent_off: must be greater than 0 and less than or equal to 100.",
                "percent_off",
            )
        percent_off = float(percent)
        if p.get("currency") not in (None, ""):
            currency = _currency_param(p["currency"], "currency")
    else:
        amount_off = _int_param(p["amount_off"], "amount_off", minimum=1)
        currency = _currency_param(p.get("currency"), "currency")
    duration = _enum_param(p.get("duration", "once"), "duration", DURATIONS)
    months: int | None = None
    if duration == "repeating":
        if p.get("duration_in_months") in (None, ""):
            raise _invalid(
                "Missing required param: duration_in_months.",
                "duration_in_months",
                "parameter_missing",
            )
        months = _int_param(p["duration_in_months"], "duration_in_months", minimum=1)
    elif p.get("duration_in_months") not in (None, ""):
        raise _invalid(
            "You can only pass `duration_in_months` when `duration` is `repeating`.",
            "duration_in_months",
        )
    now = _now()
    redeem_by: int | None = None
    if p.get("redeem_by") not in (None, ""):
        redeem_by = _int_param(p["redeem_by"], "redeem_by")
        if redeem_by <= now:
            raise _invalid("Invalid redeem_by: must be in the future.", "redeem_by")
        if redeem_by > now + MAX_REDEEM_BY_SECONDS:
            raise _invalid(
                "Invalid redeem_by: cannot be more than 5 years in the future.", "redeem_by"
            )
    max_redemptions = (
        None
        if p.get("max_redemptions") in (None, "")
        else _int_param(p["max_redemptions"], "max_redemptions", minimum=1)
    )
    coupon_id = _new_coupon_id(state)
    if p.get("id") not in (None, ""):
        coupon_id = _str_param(p["id"], "id")
        if coupon_id in state.coupons:
            raise StripeApiError(
                400,
                "invalid_request_error",
                "Coupon already exists.",
                code="resource_already_exists",
                param="id",
            )
    coupon: JsonDict = {
        "id": coupon_id,
        "object": "coupon",
        "amount_off": amount_off,
        "created": now,
        "currency": currency,
        "duration": duration,
        "duration_in_months": months,
        "livemode": False,
        "max_redemptions": max_redemptions,
        "metadata": _metadata_param(p.get("metadata", {})),
        "name": _name(p.get("name")),
        "percent_off": percent_off,
        "redeem_by": redeem_by,
        "times_redeemed": 0,
        "valid": True,
    }
    state.coupons[coupon_id] = coupon
    return _Result(200, state.expand(coupon, p.get("expand")))


async def retrieve_coupon(state: EmulatorState, call: _Call, coupon_id: str) -> _Result:
    """``GET /v1/coupons/{id}``."""
    _check_unknown(call.params, frozenset({"expand"}))
    coupon = refresh_valid(state.get(state.coupons, "coupon", coupon_id, "id"))
    return _Result(200, state.expand(coupon, call.params.get("expand")))


async def update_coupon(state: EmulatorState, call: _Call, coupon_id: str) -> _Result:
    """``POST /v1/coupons/{id}``: only ``name`` and ``metadata`` change, as in Stripe."""
    p = call.params
    _check_unknown(p, COUPON_UPDATE_PARAMS)
    if "currency_options" in p:
        raise _invalid("The emulator does not support currency_options.", "currency_options")
    coupon = refresh_valid(state.get(state.coupons, "coupon", coupon_id, "id"))
    if "name" in p:
        coupon["name"] = _name(p["name"])
    if "metadata" in p:
        coupon["metadata"] = _metadata_update(coupon["metadata"], p["metadata"])
    return _Result(200, state.expand(coupon, p.get("expand")))


async def delete_coupon(state: EmulatorState, call: _Call, coupon_id: str) -> _Result:
    """``DELETE /v1/coupons/{id}``: promotion codes of a deleted coupon can no longer be used."""
    _check_unknown(call.params, frozenset())
    state.get(state.coupons, "coupon", coupon_id, "id")
    del state.coupons[coupon_id]
    return _Result(200, {"id": coupon_id, "object": "coupon", "deleted": True})


async def list_coupons(state: EmulatorState, call: _Call) -> _Result:
    """``GET /v1/coupons``: newest first, with Stripe's paging."""
    _check_unknown(call.params, COUPON_LIST_PARAMS)
    for coupon in state.coupons.values():
        refresh_valid(coupon)
    return _Result(200, list_page(state, call.params, state.coupons, "coupon", "/v1/coupons"))


ROUTES: list[ApiRoute] = [
    ("POST", r"/v1/coupons", create_coupon),
    ("GET", r"/v1/coupons", list_coupons),
    ("GET", r"/v1/coupons/([^/]+)", retrieve_coupon),
    ("POST", r"/v1/coupons/([^/]+)", update_coupon),
    ("DELETE", r"/v1/coupons/([^/]+)", delete_coupon),
]
