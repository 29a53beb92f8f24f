"""An order's money as Stripe charged it: when a payment's figures may be accepted, and what
the order records of them.

The order knows its subtotal (the sum of its lines, priced by the service). Stripe adds what
the shopper chose on its page (a promotion code, a shipping rate) and the tax it computed, and
reports them as `amount_subtotal`, `total_details` (`amount_discount`, `amount_shipping`,
`amount_tax`) and `amount_total`. The service cannot recompute the discount, shipping or tax
itself, but it can insist that the subtotal is its own and that Stripe's figures add up.
"""

from __future__ import annotations

from typing import Any

from ordergraph.models import Order
from ordergraph.stripe_objects import CheckoutSession

PROMOTION_CODE_LENGTH = 64


def amount_problem(session: CheckoutSession, order: Order) -> str | None:
    """Why the session's money cannot pay for the order, or None.

    Accepted: the currency is the order's, `amount_subtotal` is the order's subtotal, no figure
    is negative, the discount is at most the subtotal, and the total adds up in one of the two
    forms Stripe documents for `total_details.amount_tax`:

    * exclusive tax (added on top): total = subtotal - discount + shipping + tax;
    * inclusive tax (already inside the prices): total = subtotal - discount + shipping, the
      tax being the part of those amounts that is tax.

    Both are accepted because the tax behaviour is a property of the prices and shipping rates
    (and of the account's default for `unspecified`), which a session does not report in its
    totals; either form is one Stripe itself produces from the order's own subtotal.

    A payload without `amount_subtotal` (older API versions) is held to the former rule: the
    total must be the order's total.
    """
    if session.currency != order.currency:
        return f"paid in {session.currency}, the order is in {order.currency}"
    if session.amount_subtotal is None:
        if session.amount_total != order.total:
            return (
                f"paid {session.amount_total} {session.currency}, "
                f"the order is {order.total} {order.currency}"
            )
        return None
    if session.amount_subtotal != order.subtotal:
        return (
            f"amount_subtotal {session.amount_subtotal} {session.currency}, "
            f"the order's subtotal is {order.subtotal} {order.currency}"
        )
    total = session.amount_total
    subtotal = session.amount_subtotal
    discount = session.amount_discount or 0
    shipping = session.amount_shipping or 0
    tax = session.amount_tax or 0
    if total is None or min(total, discount, shipping, tax) < 0 or discount > subtotal:
        return f"Stripe's figures are not amounts: total {total}, discount {discount}, " + (
            f"shipping {shipping}, tax {tax}"
        )
    before_tax = subtotal - discount + shipping
    if total not in (before_tax + tax, before_tax):
        return (
            f"Stripe's figures do not add up: total {total} is not subtotal {subtotal} - "
            f"discount {discount} + shipping {shipping} (+ tax {tax})"
        )
    return None


def money_fields(session: CheckoutSession, order: Order) -> dict[str, Any]:
    """What the order records of an accepted payment (see `amount_problem`): Stripe's figures,
    the total exactly as charged, and the email Stripe collected when the order had none."""
    fields: dict[str, Any] = {}
    if order.email is None and session.customer_email:
        fields["email"] = session.customer_email
    if session.amount_subtotal is None or session.amount_total is None:
        return fields  # an older payload: its total is the order's (amount_problem)
    shipping_method = None
    if session.shipping_rate_id is not None:
        # The rate as the shopper chose it, before tax: the same figure as shippingCost.
        shipping_method = {
            "name": session.shipping_rate_name or session.shipping_rate_id,
            "amount": session.amount_shipping or 0,
        }
    code = session.promotion_code or session.promotion_code_id
    return {
        **fields,
        "discount": session.amount_discount or 0,
        "shipping_cost": session.amount_shipping or 0,
        "tax": session.amount_tax or 0,
        "total": session.amount_total,
        "promotion_code": code[:PROMOTION_CODE_LENGTH] if code else None,
        "shipping_method": shipping_method,
    }
