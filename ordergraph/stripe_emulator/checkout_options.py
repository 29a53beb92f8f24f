"""A new Checkout Session's shipping options, discounts and automatic tax.

Parameters as in the SDK's ``SessionCreateParams`` (``ShippingOption``,
``Discount``, ``AutomaticTax``), unknown keys refused at every depth:

* ``shipping_options``: up to 5, each ``{shipping_rate: "shr_..."}`` or
  ``{shipping_rate_data: {...}}`` (a new shipping rate is made of it, as Stripe
  does), in the session's currency. The session answers them as
  ``[{shipping_amount, shipping_rate}]`` and preselects the first
  (``shipping_cost``);
* ``discounts``: at most one, ``{coupon}`` or ``{promotion_code: "promo_..."}``;
  never together with ``allow_promotion_codes`` (Stripe's refusal);
* ``automatic_tax[enabled]`` (and ``[liability]``): the session answers
  ``{enabled, liability, provider: "stripe", status}``, the status
  ``requires_location_inputs`` until the customer's address is known.

Nothing is saved until everything is valid: :func:`parse_session_options`
returns the new rates for the caller to save.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ordergraph.stripe_emulator.coupons import coupon_usable, currency_problem
from ordergraph.stripe_emulator.errors import _invalid, _missing
from ordergraph.stripe_emulator.params import (
    _bool_param,
    _check_unknown,
    _dict_param,
    _enum_param,
    _str_param,
)
from ordergraph.stripe_emulator.promotion_codes import redemption_problem
from ordergraph.stripe_emulator.shipping_rates import parse_shipping_rate_data
from ordergraph.stripe_emulator.state import EmulatorState
from ordergraph.stripe_emulator.types import JsonDict

MAX_SHIPPING_OPTIONS = 5
SHIPPING_OPTION_PARAMS = frozenset({"shipping_rate", "shipping_rate_data"})
AUTOMATIC_TAX_PARAMS = frozenset({"enabled", "liability"})
LIABILITY_PARAMS = frozenset({"account", "type"})
DISCOUNT_PARAMS = frozenset({"coupon", "promotion_code"})


@dataclass
class SessionOptions:
    """What the parameters asked for: rates in option order, the session's new fields."""

    rates: list[JsonDict] = field(default_factory=list)
    new_rates: list[JsonDict] = field(default_factory=list)
    coupon: JsonDict | None = None
    fields: JsonDict = field(default_factory=dict)


def _shipping_options(state: EmulatorState, raw: Any, currency: str, out: SessionOptions) -> None:
    if raw in (None, "", []):
        return
    if not isinstance(raw, list):
        raise _invalid("Invalid array", "shipping_options")
    if len(raw) > MAX_SHIPPING_OPTIONS:
        raise _invalid(
            f"You may only specify up to {MAX_SHIPPING_OPTIONS} shipping options.",
            "shipping_options",
        )
    for i, option in enumerate(raw):
        at = f"shipping_options[{i}]"
        option = _dict_param(option, at)
        _check_unknown(option, SHIPPING_OPTION_PARAMS, at)
        if "shipping_rate" in option and "shipping_rate_data" in option:
            raise _invalid(
                "You may only specify one of these parameters: shipping_rate, shipping_rate_data.",
                at,
            )
        if option.get("shipping_rate") not in (None, ""):
            where = f"{at}[shipping_rate]"
            rate_id = _str_param(option["shipping_rate"], where)
            rate = state.get(state.shipping_rates, "shipping_rate", rate_id, where)
            if not rate["active"]:
                raise _invalid(f"The shipping rate {rate_id} is not active.", where)
        elif option.get("shipping_rate_data") not in (None, ""):
            where = f"{at}[shipping_rate_data]"
            rate = parse_shipping_rate_data(option["shipping_rate_data"], where)
            out.new_rates.append(rate)
        else:
            raise _invalid(
                f"You must specify either `shipping_rate` or `shipping_rate_data` in {at}.", at
            )
        if rate["fixed_amount"]["currency"] != currency:
            raise _invalid(
                f"The currency of the shipping rate ({rate['fixed_amount']['currency']}) must "
                f"match the currency of the Checkout Session ({currency}).",
                where,
            )
        out.rates.append(rate)


def _automatic_tax(raw: Any) -> JsonDict | None:
    if raw in (None, ""):
        return None
    settings = _dict_param(raw, "automatic_tax")
    _check_unknown(settings, AUTOMATIC_TAX_PARAMS, "automatic_tax")
    if settings.get("enabled") in (None, ""):
        raise _missing("automatic_tax[enabled]")
    enabled = _bool_param(settings["enabled"], "automatic_tax[enabled]")
    liability: JsonDict = {"type": "self"}
    if settings.get("liability") not in (None, ""):
        at = "automatic_tax[liability]"
        given = _dict_param(settings["liability"], at)
        _check_unknown(given, LIABILITY_PARAMS, at)
        if given.get("type") in (None, ""):
            raise _missing(f"{at}[type]")
        kind = _enum_param(given["type"], f"{at}[type]", ("account", "self"))
        if kind == "account":
            if given.get("account") in (None, ""):
                raise _missing(f"{at}[account]")
            liability = {"account": _str_param(given["account"], f"{at}[account]"), "type": kind}
        elif "account" in given:
            raise _invalid("`account` can only be set when `type` is `account`.", f"{at}[account]")
    if not enabled:
        return {"enabled": False, "liability": None, "provider": None, "status": None}
    return {
        "enabled": True,
        "liability": liability,
        "provider": "stripe",
        "status": "requires_location_inputs",
    }


def _discounts(
    state: EmulatorState, raw: Any, currency: str, subtotal: int, out: SessionOptions
) -> None:
    if raw in (None, "", []):
        return
    if not isinstance(raw, list):
        raise _invalid("Invalid array", "discounts")
    if len(raw) > 1:
        raise _invalid("You may only specify one discount.", "discounts")
    at = "discounts[0]"
    entry = _dict_param(raw[0], at)
    _check_unknown(entry, DISCOUNT_PARAMS, at)
    if "coupon" in entry and "promotion_code" in entry:
        raise _invalid("You may only specify one of these parameters: coupon, promotion_code.", at)
    if entry.get("coupon") not in (None, ""):
        where = f"{at}[coupon]"
        coupon = state.get(state.coupons, "coupon", _str_param(entry["coupon"], where), where)
        problem = (
            None if coupon_usable(coupon) else f"The coupon {coupon['id']} is no longer valid."
        )
        problem = problem or currency_problem(coupon, currency)
        if problem is not None:
            raise _invalid(problem, where)
        out.coupon = coupon
        out.fields["discounts"] = [{"coupon": coupon["id"], "promotion_code": None}]
    elif entry.get("promotion_code") not in (None, ""):
        where = f"{at}[promotion_code]"
        promo_id = _str_param(entry["promotion_code"], where)
        promo = state.get(state.promotion_codes, "promotion_code", promo_id, where)
        problem = redemption_problem(state, promo, subtotal=subtotal, currency=currency)
        if problem is not None:
            raise _invalid(problem, where)
        out.coupon = state.coupons[promo["promotion"]["coupon"]]
        out.fields["discounts"] = [{"coupon": None, "promotion_code": promo_id}]
    else:
        raise _invalid(f"You must specify either `coupon` or `promotion_code` in {at}.", at)


def parse_session_options(
    state: EmulatorState, p: JsonDict, currency: str, subtotal: int
) -> SessionOptions:
    """Validate ``shipping_options``, ``allow_promotion_codes``, ``discounts`` and
    ``automatic_tax``; nothing is saved."""
    out = SessionOptions()
    if "allow_promotion_codes" in p and p.get("discounts") not in (None, "", []):
        raise _invalid(
            "You may only specify one of these parameters: allow_promotion_codes, discounts.",
            "allow_promotion_codes",
        )
    if p.get("allow_promotion_codes") not in (None, ""):
        allow = _bool_param(p["allow_promotion_codes"], "allow_promotion_codes")
        out.fields["allow_promotion_codes"] = allow
    _shipping_options(state, p.get("shipping_options"), currency, out)
    _discounts(state, p.get("discounts"), currency, subtotal, out)
    automatic_tax = _automatic_tax(p.get("automatic_tax"))
    if automatic_tax is not None:
        out.fields["automatic_tax"] = automatic_tax
    return out


def shipping_option_entries(rates: list[JsonDict]) -> list[JsonDict]:
    """A session's ``shipping_options``: ``[{shipping_amount, shipping_rate}]``."""
    return [
        {"shipping_amount": rate["fixed_amount"]["amount"], "shipping_rate": rate["id"]}
        for rate in rates
    ]


def session_coupon(
    state: EmulatorState, session: JsonDict
) -> tuple[JsonDict | None, JsonDict | None]:
    """The coupon a session's ``discounts`` applies, and the promotion code it came from."""
    for discount in session.get("discounts") or []:
        if discount.get("promotion_code"):
            promo = state.promotion_codes.get(discount["promotion_code"])
            if promo is not None:
                return state.coupons.get(promo["promotion"]["coupon"]), promo
        elif discount.get("coupon"):
            return state.coupons.get(discount["coupon"]), None
    return None, None
