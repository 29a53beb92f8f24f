"""Shipping rates API: ``POST /v1/shipping_rates``, ``GET /v1/shipping_rates/{id}``.

Checkout makes a shipping rate of each ``shipping_options[][shipping_rate_data]``
(the same parameters, the SDK's ``SessionCreateParamsShippingOptionShippingRateData``)
and a session's ``shipping_options[][shipping_rate]`` names one made here.
Only ``type=fixed_amount`` exists in Stripe; ``fixed_amount[currency_options]``
is refused as unsupported. Shape: ``fixtures3.json``'s ``shipping_rate``.
"""

from __future__ import annotations

from ordergraph.stripe_emulator.errors import _invalid, _missing
from ordergraph.stripe_emulator.params import (
    _check_unknown,
    _currency_param,
    _dict_param,
    _enum_param,
    _int_param,
    _metadata_param,
    _str_param,
)
from ordergraph.stripe_emulator.state import ApiRoute, EmulatorState, _Call, _new_id, _now, _Result
from ordergraph.stripe_emulator.types import JsonDict

SHIPPING_RATE_DATA_PARAMS = frozenset(
    "delivery_estimate display_name fixed_amount metadata tax_behavior tax_code type".split()
)
SHIPPING_RATE_CREATE_PARAMS = SHIPPING_RATE_DATA_PARAMS | {"expand"}
DELIVERY_ESTIMATE_PARAMS = frozenset({"maximum", "minimum"})
ESTIMATE_BOUND_PARAMS = frozenset({"unit", "value"})
ESTIMATE_UNITS = ("business_day", "day", "hour", "month", "week")
FIXED_AMOUNT_PARAMS = frozenset({"amount", "currency", "currency_options"})
TAX_BEHAVIORS = ("exclusive", "inclusive", "unspecified")
MAX_DISPLAY_NAME_LENGTH = 100


def _estimate(raw: object, at: str) -> JsonDict | None:
    if raw in (None, ""):
        return None
    estimate = _dict_param(raw, at)
    _check_unknown(estimate, DELIVERY_ESTIMATE_PARAMS, at)
    out: JsonDict = {"maximum": None, "minimum": None}
    for bound in ("maximum", "minimum"):
        if estimate.get(bound) in (None, ""):
            continue
        where = f"{at}[{bound}]"
        value = _dict_param(estimate[bound], where)
        _check_unknown(value, ESTIMATE_BOUND_PARAMS, where)
        if value.get("unit") in (None, ""):
            raise _missing(f"{where}[unit]")
        if value.get("value") in (None, ""):
            raise _missing(f"{where}[value]")
        out[bound] = {
            "unit": _enum_param(value["unit"], f"{where}[unit]", ESTIMATE_UNITS),
            "value": _int_param(value["value"], f"{where}[value]", minimum=1),
        }
    return out


def parse_shipping_rate_data(raw: object, at: str) -> JsonDict:
    """Validate shipping rate parameters (``at`` names them in errors); the new rate, unsaved."""
    data = _dict_param(raw, at)
    prefix = f"{at}[" if at else ""
    suffix = "]" if at else ""

    def name(key: str) -> str:
        return f"{prefix}{key}{suffix}"

    _check_unknown(data, SHIPPING_RATE_DATA_PARAMS, at)
    if data.get("display_name") in (None, ""):
        raise _missing(name("display_name"))
    display_name = _str_param(data["display_name"], name("display_name"))
    if len(display_name) > MAX_DISPLAY_NAME_LENGTH:
        raise _invalid(
            f"Invalid display_name: must be at most {MAX_DISPLAY_NAME_LENGTH} characters",
            name("display_name"),
        )
    _enum_param(data.get("type", "fixed_amount"), name("type"), ("fixed_amount",))
    if data.get("fixed_amount") in (None, ""):
        raise _missing(name("fixed_amount"))
    fixed = _dict_param(data["fixed_amount"], name("fixed_amount"))
    _check_unknown(fixed, FIXED_AMOUNT_PARAMS, name("fixed_amount"))
    if "currency_options" in fixed:
        where = f"{name('fixed_amount')}[currency_options]"
        raise _invalid(f"The emulator does not support {where}.", where)
    if fixed.get("amount") in (None, ""):
        raise _missing(f"{name('fixed_amount')}[amount]")
    amount = _int_param(fixed["amount"], f"{name('fixed_amount')}[amount]", minimum=0)
    currency = _currency_param(fixed.get("currency"), f"{name('fixed_amount')}[currency]")
    tax_code = data.get("tax_code")
    return {
        "id": "",
        "object": "shipping_rate",
        "active": True,
        "created": _now(),
        "delivery_estimate": _estimate(data.get("delivery_estimate"), name("delivery_estimate")),
        "display_name": display_name,
        "fixed_amount": {"amount": amount, "currency": currency},
        "livemode": False,
        "metadata": _metadata_param(data.get("metadata", {}), name("metadata")),
        "tax_behavior": _enum_param(
            data.get("tax_behavior", "unspecified"), name("tax_behavior"), TAX_BEHAVIORS
        ),
        "tax_code": None if tax_code in (None, "") else _str_param(tax_code, name("tax_code")),
        "type": "fixed_amount",
    }


def save_rate(state: EmulatorState, rate: JsonDict) -> JsonDict:
    rate["id"] = _new_id("shr_1", 23)
    state.shipping_rates[rate["id"]] = rate
    return rate


async def create_shipping_rate(state: EmulatorState, call: _Call) -> _Result:
    """``POST /v1/shipping_rates``."""
    params = {k: v for k, v in call.params.items() if k != "expand"}
    _check_unknown(call.params, SHIPPING_RATE_CREATE_PARAMS)
    rate = save_rate(state, parse_shipping_rate_data(params, ""))
    return _Result(200, state.expand(rate, call.params.get("expand")))


async def retrieve_shipping_rate(state: EmulatorState, call: _Call, rate_id: str) -> _Result:
    """``GET /v1/shipping_rates/{id}``."""
    _check_unknown(call.params, frozenset({"expand"}))
    rate = state.get(state.shipping_rates, "shipping_rate", rate_id, "shipping_rate")
    return _Result(200, state.expand(rate, call.params.get("expand")))


ROUTES: list[ApiRoute] = [
    ("POST", r"/v1/shipping_rates", create_shipping_rate),
    ("GET", r"/v1/shipping_rates/([^/]+)", retrieve_shipping_rate),
]
