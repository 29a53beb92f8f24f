"""The plain records the service keeps of Stripe's objects, and how they are read.

The rest of the service deals in these (`CheckoutSession`, `PaymentRecord`, `Refund`), a few
fields each, so that a Stripe API change (such as the shipping address moving into
`collected_information`) is absorbed here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import stripe

from ordergraph.stripe_offers import ShippingOption


class MalformedStripeObject(ValueError):
    """A Stripe object without the shape Stripe documents: retrying cannot help."""


@dataclass(frozen=True)
class SessionLine:
    name: str
    unit_amount: int
    quantity: int
    tax_code: str | None = None


@dataclass(frozen=True)
class CheckoutSessionRequest:
    order_id: str
    user_id: str
    currency: str
    lines: list[SessionLine]
    return_url: str
    expires_at: datetime
    customer_email: str | None = None
    # What the order was offered at checkout (stored on it: see domain/checkout.session_request).
    shipping_options: tuple[ShippingOption, ...] = ()
    allow_promotion_codes: bool = False
    automatic_tax: bool = False


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    status: str | None
    payment_status: str | None
    amount_total: int | None
    currency: str | None
    client_secret: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    payment_intent_id: str | None = None
    shipping_address: dict[str, Any] | None = None
    customer_email: str | None = None
    created: int | None = None
    # Stripe's figures (None when the payload predates them): `total_details` and the chosen
    # `shipping_cost`, whose rate and promotion code are ids until `StripeGateway.described`
    # (or an expanded object) gives their display name and code.
    amount_subtotal: int | None = None
    amount_discount: int | None = None
    amount_shipping: int | None = None
    amount_tax: int | None = None
    shipping_rate_id: str | None = None
    shipping_rate_name: str | None = None
    promotion_code_id: str | None = None
    promotion_code: str | None = None


@dataclass(frozen=True)
class Refund:
    id: str
    amount: int
    status: str
    # The charge's running total of refunds, this one included (asked for with expand).
    charge_amount_refunded: int | None = None


def value_of(obj: Mapping[str, Any] | None, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else None


def shipping_address_of(session: Mapping[str, Any]) -> dict[str, Any] | None:
    """The shipping address where the current API puts it, else where older versions did."""
    details = value_of(value_of(session, "collected_information"), "shipping_details") or value_of(
        session, "shipping_details"
    )
    address = value_of(details, "address")
    if not isinstance(address, Mapping):
        return None
    return {
        "name": value_of(details, "name"),
        "line1": address.get("line1"),
        "line2": address.get("line2"),
        "city": address.get("city"),
        "state": address.get("state"),
        "postal_code": address.get("postal_code"),
        "country": address.get("country"),
    }


def typed_value(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        raise MalformedStripeObject(f"{key} is {type(value).__name__}")
    return value


def _id_or_object(data: Mapping[str, Any], key: str, name: str) -> tuple[str | None, str | None]:
    """An id, or an expanded object: its id and the string it holds under `name`."""
    value = typed_value(data, key, (str, Mapping))
    if isinstance(value, Mapping):
        return typed_value(value, "id", str), typed_value(value, name, str)
    return value, None


def _money_of(data: Mapping[str, Any]) -> dict[str, Any]:
    """The session's money: `amount_subtotal`, `total_details`, `shipping_cost`, `discounts`."""
    details = typed_value(data, "total_details", Mapping) or {}
    shipping = typed_value(data, "shipping_cost", Mapping) or {}
    rate_id, rate_name = _id_or_object(shipping, "shipping_rate", "display_name")
    promo_id = promo_code = None
    for discount in typed_value(data, "discounts", list) or []:
        if not isinstance(discount, Mapping):
            raise MalformedStripeObject("a discount is not an object")
        promo_id, promo_code = _id_or_object(discount, "promotion_code", "code")
        if promo_id:
            break
    return {
        "amount_subtotal": typed_value(data, "amount_subtotal", int),
        "amount_discount": typed_value(details, "amount_discount", int),
        "amount_shipping": typed_value(details, "amount_shipping", int),
        "amount_tax": typed_value(details, "amount_tax", int),
        "shipping_rate_id": rate_id,
        "shipping_rate_name": rate_name,
        "promotion_code_id": promo_id,
        "promotion_code": promo_code,
    }


def session_from_stripe(obj: Mapping[str, Any] | stripe.StripeObject) -> CheckoutSession:
    data = obj.to_dict() if isinstance(obj, stripe.StripeObject) else obj
    if not isinstance(data, Mapping) or not isinstance(data.get("id"), str):
        raise MalformedStripeObject("a checkout session needs a string id")
    payment_intent = typed_value(data, "payment_intent", (str, Mapping))
    if isinstance(payment_intent, Mapping):
        payment_intent = typed_value(payment_intent, "id", str)
    metadata = typed_value(data, "metadata", Mapping) or {}
    amount_total = typed_value(data, "amount_total", int)
    currency = typed_value(data, "currency", str)
    customer = typed_value(data, "customer_details", Mapping)
    return CheckoutSession(
        id=data["id"],
        status=typed_value(data, "status", str),
        payment_status=typed_value(data, "payment_status", str),
        amount_total=amount_total,
        currency=currency.upper() if currency else None,
        client_secret=typed_value(data, "client_secret", str),
        metadata={str(k): str(v) for k, v in metadata.items()},
        payment_intent_id=payment_intent,
        shipping_address=shipping_address_of(data),
        customer_email=(customer and typed_value(customer, "email", str))
        or typed_value(data, "customer_email", str),
        created=typed_value(data, "created", int),
        **_money_of(data),
    )


@dataclass(frozen=True)
class PaymentRecord:
    """A charge or a dispute, as far as the service reads one: which payment it is about and
    what it says of it. Fields Stripe left out, or sent in a shape we do not read, are None."""

    id: str
    payment_intent_id: str | None
    order_id: str | None
    amount: int | None
    amount_refunded: int | None
    reason: str | None
    status: str | None


def whole_number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def refund_from_stripe(refund: Any) -> Refund:
    charge = refund["charge"]
    return Refund(
        id=refund["id"],
        amount=refund["amount"],
        status=refund["status"],
        charge_amount_refunded=(
            None
            if charge is None or isinstance(charge, str)
            else whole_number(charge["amount_refunded"])
        ),
    )


def payment_record_from_stripe(obj: Mapping[str, Any]) -> PaymentRecord:
    data = obj.to_dict() if isinstance(obj, stripe.StripeObject) else obj
    if not isinstance(data, Mapping):
        raise MalformedStripeObject("a charge or dispute must be an object")
    payment_intent = data.get("payment_intent")
    if isinstance(payment_intent, Mapping):
        payment_intent = payment_intent.get("id")
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise MalformedStripeObject("metadata is not an object")
    order_id = metadata.get("order_id")
    reason, status = data.get("reason"), data.get("status")
    return PaymentRecord(
        id=str(data.get("id")),
        payment_intent_id=payment_intent if isinstance(payment_intent, str) else None,
        order_id=order_id if isinstance(order_id, str) else None,
        amount=whole_number(data.get("amount")),
        amount_refunded=whole_number(data.get("amount_refunded")),
        reason=str(reason) if reason else None,
        status=status if isinstance(status, str) else None,
    )
