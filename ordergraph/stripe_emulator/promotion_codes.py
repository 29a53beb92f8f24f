"""Promotion codes API: ``/v1/promotion_codes`` create, retrieve, update and list.

A promotion code is the customer-facing code (``FALL20``) of a coupon. In the
current API the coupon is named through ``promotion[type]=coupon`` and
``promotion[coupon]=<id>`` (the SDK's ``PromotionCodeCreateParamsPromotion``)
and answered as ``promotion: {coupon: <id>, type: "coupon"}``
(``fixtures3.json``'s ``promotion_code``); ``expand[]=promotion.coupon``
replaces the id by the coupon. Codes are redeemed by Checkout: see
:func:`redemption_problem` and :func:`redeem_code`. ``customer``,
``customer_account`` and ``restrictions[currency_options]`` are refused as
unsupported (the emulator has no customers and one currency per code).
"""

from __future__ import annotations

import copy
import re
import secrets
import string
from typing import Any

from ordergraph.stripe_emulator.coupons import coupon_usable, redeem_coupon, refresh_valid
from ordergraph.stripe_emulator.errors import _invalid, _missing
from ordergraph.stripe_emulator.listing import list_page
from ordergraph.stripe_emulator.params import (
    _bool_param,
    _check_unknown,
    _currency_param,
    _dict_param,
    _enum_param,
    _int_param,
    _metadata_param,
    _metadata_update,
    _str_param,
)
from ordergraph.stripe_emulator.state import (
    ApiRoute,
    EmulatorState,
    _Call,
    _new_id,
    _now,
    _Result,
)
from ordergraph.stripe_emulator.types import JsonDict

PROMO_CREATE_PARAMS = frozenset(
    """active code customer customer_account expand expires_at max_redemptions metadata
    promotion restrictions""".split()
)
PROMOTION_PARAMS = frozenset({"coupon", "type"})
RESTRICTION_PARAMS = frozenset(
    "currency_options first_time_transaction minimum_amount minimum_amount_currency".split()
)
PROMO_UPDATE_PARAMS = frozenset("active expand metadata restrictions".split())
PROMO_LIST_PARAMS = frozenset(
    """active code coupon created customer customer_account ending_before expand limit
    starting_after""".split()
)
CODE_RE = re.compile(r"[A-Za-z0-9-]+")
MAX_CODE_LENGTH = 500

# What Checkout says when a code cannot be redeemed (modelled on Stripe's wording).
UNKNOWN_CODE = "This code is invalid."
INACTIVE = "This promotion code is inactive."
EXPIRED = "This promotion code has expired."
EXHAUSTED = (
    "This promotion code cannot be redeemed because it has been used the maximum number of times."
)
COUPON_INVALID = (
    "This promotion code cannot be redeemed because the associated coupon is no longer valid."
)


def code_problem(state: EmulatorState, promo: JsonDict, *, as_active: bool = False) -> str | None:
    """Why ``promo`` cannot be redeemed now, whatever the order, or None when it can.

    ``as_active`` checks it as if it were active (may it be reactivated?).
    """
    now = _now()
    if not (promo["active"] or as_active):
        return INACTIVE
    if promo["expires_at"] is not None and promo["expires_at"] <= now:
        return EXPIRED
    limit = promo["max_redemptions"]
    if limit is not None and promo["times_redeemed"] >= limit:
        return EXHAUSTED
    coupon = state.coupons.get(promo["promotion"]["coupon"])
    if coupon is None or not coupon_usable(coupon, now):
        return COUPON_INVALID
    return None


def redemption_problem(
    state: EmulatorState, promo: JsonDict, *, subtotal: int, currency: str
) -> str | None:
    """Why ``promo`` cannot be redeemed on an order of ``subtotal`` in ``currency``, or None."""
    problem = code_problem(state, promo)
    if problem is not None:
        return problem
    coupon = state.coupons[promo["promotion"]["coupon"]]
    if coupon["amount_off"] is not None and coupon["currency"] != currency:
        return (
            f"This promotion code cannot be redeemed in {currency}: its coupon is in "
            f"{coupon['currency']}."
        )
    minimum = promo["restrictions"]["minimum_amount"]
    min_currency = promo["restrictions"]["minimum_amount_currency"]
    if minimum is not None and (min_currency != currency or subtotal < minimum):
        return (
            "This promotion code cannot be redeemed because the order is below its minimum "
            f"amount ({minimum} {min_currency})."
        )
    return None


def find_code(state: EmulatorState, code: str) -> JsonDict | None:
    """The promotion code a customer typed (case-insensitive), the active one first."""
    found = [p for p in state.promotion_codes.values() if p["code"].lower() == code.lower()]
    found.sort(key=lambda p: not p["active"])
    return found[0] if found else None


def redeem_code(state: EmulatorState, promo: JsonDict) -> None:
    """A completed Checkout used the code: it and its coupon count one more redemption."""
    promo["times_redeemed"] += 1
    coupon = state.coupons.get(promo["promotion"]["coupon"])
    if coupon is not None:
        redeem_coupon(coupon)


def _expand(state: EmulatorState, promo: JsonDict, expand: Any) -> JsonDict:
    paths = [] if expand in (None, "") else expand if isinstance(expand, list) else [expand]
    rest = [path for path in paths if path != "promotion.coupon"]
    out = state.expand(promo, rest or None)
    coupon = state.coupons.get(promo["promotion"]["coupon"])
    if len(rest) != len(paths) and coupon is not None:
        out["promotion"]["coupon"] = copy.deepcopy(refresh_valid(coupon))
    return out


def _active_clash(state: EmulatorState, code: str, this_id: str | None = None) -> None:
    for other in state.promotion_codes.values():
        if other["active"] and other["code"].lower() == code.lower() and other["id"] != this_id:
            raise _invalid(f"An active promotion code with `code: {code}` already exists.", "code")


def _code(state: EmulatorState, raw: object) -> str:
    if raw in (None, ""):
        while True:
            code = "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(8))
            if find_code(state, code) is None:
                return code
    code = _str_param(raw, "code")
    if len(code) > MAX_CODE_LENGTH or not CODE_RE.fullmatch(code):
        raise _invalid(
            "Invalid code: use only letters (a-z, A-Z), digits (0-9) and dashes (-).", "code"
        )
    return code


def _restrictions(raw: object) -> JsonDict:
    r = _dict_param(raw, "restrictions")
    _check_unknown(r, RESTRICTION_PARAMS, "restrictions")
    if "currency_options" in r:
        raise _invalid(
            "The emulator does not support restrictions[currency_options].",
            "restrictions[currency_options]",
        )
    minimum: int | None = None
    currency: str | None = None
    if r.get("minimum_amount") not in (None, ""):
        minimum = _int_param(r["minimum_amount"], "restrictions[minimum_amount]", minimum=0)
        currency = _currency_param(
            r.get("minimum_amount_currency"), "restrictions[minimum_amount_currency]"
        )
    elif r.get("minimum_amount_currency") not in (None, ""):
        raise _missing("restrictions[minimum_amount]")
    first_time = r.get("first_time_transaction", False)
    return {
        "first_time_transaction": _bool_param(first_time, "restrictions[first_time_transaction]"),
        "minimum_amount": minimum,
        "minimum_amount_currency": currency,
    }


async def create_promotion_code(state: EmulatorState, call: _Call) -> _Result:
    """``POST /v1/promotion_codes`` of ``promotion[type]=coupon`` + ``promotion[coupon]``."""
    p = call.params
    _check_unknown(p, PROMO_CREATE_PARAMS)
    for unsupported in ("customer", "customer_account"):
        if unsupported in p:
            raise _invalid(f"The emulator does not support {unsupported}.", unsupported)
    if p.get("promotion") in (None, ""):
        raise _missing("promotion")
    promotion = _dict_param(p["promotion"], "promotion")
    _check_unknown(promotion, PROMOTION_PARAMS, "promotion")
    if promotion.get("type") in (None, ""):
        raise _missing("promotion[type]")
    _enum_param(promotion["type"], "promotion[type]", ("coupon",))
    if promotion.get("coupon") in (None, ""):
        raise _missing("promotion[coupon]")
    coupon_id = _str_param(promotion["coupon"], "promotion[coupon]")
    coupon = state.get(state.coupons, "coupon", coupon_id, "promotion[coupon]")
    if not coupon_usable(coupon):
        raise _invalid(f"The coupon {coupon_id} is no longer valid.", "promotion[coupon]")
    active = _bool_param(p.get("active", True), "active")
    code = _code(state, p.get("code"))
    if active:
        _active_clash(state, code)
    now = _now()
    expires_at: int | None = None
    if p.get("expires_at") not in (None, ""):
        expires_at = _int_param(p["expires_at"], "expires_at")
        if expires_at <= now:
            raise _invalid("Invalid expires_at: must be in the future.", "expires_at")
        if coupon["redeem_by"] is not None and expires_at > coupon["redeem_by"]:
            raise _invalid(
                "The promotion code's `expires_at` cannot be after its coupon's `redeem_by`.",
                "expires_at",
            )
    max_redemptions: int | None = None
    if p.get("max_redemptions") not in (None, ""):
        max_redemptions = _int_param(p["max_redemptions"], "max_redemptions", minimum=1)
        if coupon["max_redemptions"] is not None and max_redemptions > coupon["max_redemptions"]:
            raise _invalid(
                "The promotion code's `max_redemptions` cannot be greater than its coupon's "
                "`max_redemptions`.",
                "max_redemptions",
            )
    promo: JsonDict = {
        "id": _new_id("promo_1", 23),
        "object": "promotion_code",
        "active": active,
        "code": code,
        "created": now,
        "customer": None,
        "customer_account": None,
        "expires_at": expires_at,
        "livemode": False,
        "max_redemptions": max_redemptions,
        "metadata": _metadata_param(p.get("metadata", {})),
        "promotion": {"coupon": coupon_id, "type": "coupon"},
        "restrictions": _restrictions(p.get("restrictions", {})),
        "times_redeemed": 0,
    }
    state.promotion_codes[promo["id"]] = promo
    return _Result(200, _expand(state, promo, p.get("expand")))


async def retrieve_promotion_code(state: EmulatorState, call: _Call, promo_id: str) -> _Result:
    """``GET /v1/promotion_codes/{id}``."""
    _check_unknown(call.params, frozenset({"expand"}))
    promo = state.get(state.promotion_codes, "promotion_code", promo_id, "promotion_code")
    return _Result(200, _expand(state, promo, call.params.get("expand")))


async def update_promotion_code(state: EmulatorState, call: _Call, promo_id: str) -> _Result:
    """``POST /v1/promotion_codes/{id}``: ``active`` and ``metadata``.

    As Stripe documents, a code is only reactivated while its coupon is still valid
    and the code otherwise redeemable (not expired, not used up, its text not taken).
    """
    p = call.params
    _check_unknown(p, PROMO_UPDATE_PARAMS)
    promo = state.get(state.promotion_codes, "promotion_code", promo_id, "promotion_code")
    if "restrictions" in p:
        restrictions = _dict_param(p["restrictions"], "restrictions")
        _check_unknown(restrictions, frozenset({"currency_options"}), "restrictions")
        if restrictions:
            raise _invalid(
                "The emulator does not support restrictions[currency_options].",
                "restrictions[currency_options]",
            )
    active: bool | None = None
    if "active" in p:
        active = _bool_param(p["active"], "active")
        if active and not promo["active"]:
            problem = code_problem(state, promo, as_active=True)
            if problem is not None:
                raise _invalid(f"This promotion code cannot be reactivated: {problem}", "active")
            _active_clash(state, promo["code"], promo["id"])
    metadata = _metadata_update(promo["metadata"], p["metadata"]) if "metadata" in p else None
    if active is not None:
        promo["active"] = active
    if metadata is not None:
        promo["metadata"] = metadata
    return _Result(200, _expand(state, promo, p.get("expand")))


async def list_promotion_codes(state: EmulatorState, call: _Call) -> _Result:
    """``GET /v1/promotion_codes``: filters ``active``, ``code`` (any case), ``coupon``,
    ``created``."""
    p = call.params
    _check_unknown(p, PROMO_LIST_PARAMS)
    for unsupported in ("customer", "customer_account"):
        if unsupported in p:
            raise _invalid(f"The emulator does not filter by {unsupported}.", unsupported)
    active = _bool_param(p["active"], "active") if "active" in p else None
    code = _str_param(p["code"], "code").lower() if "code" in p else None
    coupon = _str_param(p["coupon"], "coupon") if "coupon" in p else None

    def matches(promo: JsonDict) -> bool:
        return (
            (active is None or promo["active"] == active)
            and (code is None or promo["code"].lower() == code)
            and (coupon is None or promo["promotion"]["coupon"] == coupon)
        )

    page = list_page(
        state,
        p,
        state.promotion_codes,
        "promotion_code",
        "/v1/promotion_codes",
        matches,
        lambda promo, expand: _expand(state, promo, expand),
    )
    return _Result(200, page)


ROUTES: list[ApiRoute] = [
    ("POST", r"/v1/promotion_codes", create_promotion_code),
    ("GET", r"/v1/promotion_codes", list_promotion_codes),
    ("GET", r"/v1/promotion_codes/([^/]+)", retrieve_promotion_code),
    ("POST", r"/v1/promotion_codes/([^/]+)", update_promotion_code),
]
