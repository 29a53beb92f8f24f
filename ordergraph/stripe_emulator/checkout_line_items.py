"""Checkout Session line items: parsing ``line_items[]`` and ``GET .../line_items``.

A session's line items are a sub-resource in Stripe (the SDK's
``checkout/_session_line_item_service.py``); parsing them is most of the
validation of a new session, so it lives apart from the session itself.
"""

from __future__ import annotations

import re
from typing import Any

from ordergraph.stripe_emulator.errors import _invalid, _missing
from ordergraph.stripe_emulator.params import (
    _check_unknown,
    _dict_param,
    _enum_param,
    _int_param,
    _str_param,
)
from ordergraph.stripe_emulator.state import EmulatorState, _Call, _new_id, _now, _Result
from ordergraph.stripe_emulator.types import JsonDict

# Parameters Stripe accepts for one line item and its price_data (from the SDK's
# SessionCreateParams); anything else is refused with "Received unknown parameter".
LINE_ITEM_PARAMS = frozenset(
    "adjustable_quantity metadata price price_data quantity tax_rates".split()
)
PRICE_DATA_PARAMS = frozenset(
    "currency product product_data recurring tax_behavior unit_amount unit_amount_decimal".split()
)
PRODUCT_DATA_PARAMS = frozenset(
    "description images metadata name tax_code tax_details unit_label".split()
)
TAX_DETAILS_PARAMS = frozenset({"performance_location", "tax_code"})
TAX_BEHAVIORS = ("exclusive", "inclusive", "unspecified")


def _product_tax_code(product_data: JsonDict, at: str) -> str | None:
    """Check ``product_data``'s keys; its ``tax_code`` (or ``tax_details[tax_code]``)."""
    _check_unknown(product_data, PRODUCT_DATA_PARAMS, at)
    code = product_data.get("tax_code")
    if product_data.get("tax_details") not in (None, ""):
        details = _dict_param(product_data["tax_details"], f"{at}[tax_details]")
        _check_unknown(details, TAX_DETAILS_PARAMS, f"{at}[tax_details]")
        if code in (None, "") and details.get("tax_code") not in (None, ""):
            code = _str_param(details["tax_code"], f"{at}[tax_details][tax_code]")
    return None if code in (None, "") else _str_param(code, f"{at}[tax_code]")


def line_tax_codes(raw: Any) -> list[str | None]:
    """The product tax code of each line item of ``line_items`` already validated."""
    return [
        _product_tax_code(
            item["price_data"]["product_data"], f"line_items[{i}][price_data][product_data]"
        )
        for i, item in enumerate(raw)
    ]


def parse_line_items(raw: Any) -> tuple[list[JsonDict], str]:
    """Validate ``line_items`` as Stripe does; the items (ids still empty) and their currency."""
    if raw in (None, "", []):
        raise _missing("line_items")
    if not isinstance(raw, list):
        raise _invalid("Invalid array", "line_items")
    if len(raw) > 100:
        raise _invalid("You may only specify up to 100 line items.", "line_items")
    currency: str | None = None
    lines: list[JsonDict] = []
    now = _now()
    for i, item in enumerate(raw):
        at = f"line_items[{i}]"
        item = _dict_param(item, at)
        _check_unknown(item, LINE_ITEM_PARAMS, at)
        if "price" in item:
            raise _invalid(f"No such price: '{item['price']}'", f"{at}[price]", "resource_missing")
        if "price_data" not in item:
            raise _invalid(
                f"You must specify either `price` or `price_data` in {at}.", f"{at}[price_data]"
            )
        pd = _dict_param(item["price_data"], f"{at}[price_data]")
        _check_unknown(pd, PRICE_DATA_PARAMS, f"{at}[price_data]")
        if not pd.get("currency"):
            raise _missing(f"{at}[price_data][currency]")
        cur = _str_param(pd["currency"], f"{at}[price_data][currency]").lower()
        if not re.fullmatch(r"[a-z]{3}", cur):
            raise _invalid(f"Invalid currency: {cur}", f"{at}[price_data][currency]")
        if currency is not None and cur != currency:
            raise _invalid(
                "Checkout does not support multiple currencies: all line_items must use "
                f"the same currency ({currency}).",
                f"{at}[price_data][currency]",
            )
        currency = cur
        if pd.get("unit_amount") in (None, ""):
            raise _missing(f"{at}[price_data][unit_amount]")
        unit_amount = _int_param(pd["unit_amount"], f"{at}[price_data][unit_amount]", minimum=0)
        product_data = pd.get("product_data")
        if not isinstance(product_data, dict) or not product_data.get("name"):
            raise _missing(f"{at}[price_data][product_data][name]")
        _product_tax_code(product_data, f"{at}[price_data][product_data]")
        tax_behavior = _enum_param(
            pd.get("tax_behavior", "unspecified"), f"{at}[price_data][tax_behavior]", TAX_BEHAVIORS
        )
        if item.get("quantity") in (None, ""):
            raise _missing(f"{at}[quantity]")
        quantity = _int_param(item["quantity"], f"{at}[quantity]", minimum=1)
        amount = unit_amount * quantity
        lines.append(
            {
                "id": "",
                "object": "item",
                "adjustable_quantity": None,
                "amount_discount": 0,
                "amount_subtotal": amount,
                "amount_tax": 0,
                "amount_total": amount,
                "currency": cur,
                "description": product_data["name"],
                "metadata": _dict_param(item.get("metadata", {}), f"{at}[metadata]"),
                "price": {
                    "id": _new_id("price_"),
                    "object": "price",
                    "active": False,
                    "billing_scheme": "per_unit",
                    "created": now,
                    "currency": cur,
                    "custom_unit_amount": None,
                    "livemode": False,
                    "lookup_key": None,
                    "metadata": {},
                    "nickname": None,
                    "product": _new_id("prod_", 14),
                    "recurring": None,
                    "tax_behavior": tax_behavior,
                    "tiers_mode": None,
                    "transform_quantity": None,
                    "type": "one_time",
                    "unit_amount": unit_amount,
                    "unit_amount_decimal": str(unit_amount),
                },
                "quantity": quantity,
            }
        )
    assert currency is not None
    return lines, currency


async def list_line_items(state: EmulatorState, call: _Call, session_id: str) -> _Result:
    """``GET /v1/checkout/sessions/{id}/line_items``."""
    state.get(state.sessions, "checkout.session", session_id, "id")
    return _Result(200, state.line_items_list(session_id))
