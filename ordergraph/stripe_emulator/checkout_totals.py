"""A Checkout Session's money: subtotal, discount, shipping, automatic tax, total.

Stripe computes these when a session is made (shipping defaults to the first
option; tax is not known until the customer's address is) and again when the
customer pays (the chosen rate, a typed promotion code, the tax country).
What the emulator does, as Stripe documents it:

* a discount applies to the line items only, never to shipping: ``percent_off``
  rounded to the nearest minor unit (half up), ``amount_off`` capped at the
  subtotal; it is spread over the lines in proportion to their amounts (largest
  remainder), each line's ``amount_discount``;
* tax is computed per line, on the line's amount after its discount, and on the
  shipping amount, each rounded to the nearest minor unit (half up), at the
  rate of the tax country (:attr:`EmulatorState.tax_rates`, basis points; a
  country not in the table is taxed at 0); the tax code ``txcd_00000000``
  (nontaxable) is never taxed;
* ``tax_behavior=exclusive`` (and ``unspecified``, taken as the account default,
  exclusive) adds the tax on top; ``inclusive`` means the amount already holds
  it: ``amount_tax`` is the included part, ``round(amount * r / (1 + r))``, and
  nothing is added. ``total_details.amount_tax`` sums both kinds;
* ``amount_total = amount_subtotal - amount_discount + amount_shipping +
  (exclusive tax)``; ``total_details.amount_shipping`` is the rate's amount.
"""

from __future__ import annotations

from fractions import Fraction

from ordergraph.stripe_emulator.coupons import coupon_discount
from ordergraph.stripe_emulator.state import EmulatorState
from ordergraph.stripe_emulator.types import JsonDict

NONTAXABLE_TAX_CODE = "txcd_00000000"


def _half_up(value: Fraction) -> int:
    """Round a non-negative amount to the nearest minor unit, halves up."""
    return int((value + Fraction(1, 2)) // 1)


def allocate(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights``; the largest remainders get the extra units."""
    whole = sum(weights)
    if whole == 0 or total == 0:
        return [0] * len(weights)
    shares = [total * w // whole for w in weights]
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def tax_of(amount: int, basis_points: int, *, inclusive: bool) -> int:
    """The tax on ``amount``: added on top, or the part of it that is tax when inclusive."""
    if inclusive:
        return _half_up(Fraction(amount * basis_points, 10000 + basis_points))
    return _half_up(Fraction(amount * basis_points, 10000))


def price_session(
    state: EmulatorState,
    session: JsonDict,
    *,
    rate: JsonDict | None,
    coupon: JsonDict | None,
    tax_basis_points: int | None,
) -> None:
    """Set the session's and its line items' amounts for this rate, coupon and tax rate.

    ``tax_basis_points`` None: no tax computed (automatic tax off, or no address yet).
    """
    lines = state.line_items.get(session["id"])
    if lines is None:  # a session put in the table by hand: its amounts are its own
        return
    codes = state.tax_codes.get(session["id"], [])
    subtotals = [int(line["amount_subtotal"]) for line in lines]
    subtotal = sum(subtotals)
    discount = coupon_discount(coupon, subtotal) if coupon is not None else 0
    tax = added_tax = 0
    for i, (line, share) in enumerate(zip(lines, allocate(discount, subtotals), strict=True)):
        code = codes[i] if i < len(codes) else None
        inclusive = line["price"]["tax_behavior"] == "inclusive"
        taxable = subtotals[i] - share
        rate_bp = 0 if tax_basis_points is None or code == NONTAXABLE_TAX_CODE else tax_basis_points
        line_tax = tax_of(taxable, rate_bp, inclusive=inclusive)
        line.update(
            {
                "amount_discount": share,
                "amount_tax": line_tax,
                "amount_total": taxable + (0 if inclusive else line_tax),
            }
        )
        tax += line_tax
        added_tax += 0 if inclusive else line_tax
    shipping = 0
    shipping_cost: JsonDict | None = None
    if rate is not None:
        shipping = int(rate["fixed_amount"]["amount"])
        inclusive = rate["tax_behavior"] == "inclusive"
        nontaxable = tax_basis_points is None or rate["tax_code"] == NONTAXABLE_TAX_CODE
        shipping_tax = tax_of(
            shipping, 0 if nontaxable else tax_basis_points or 0, inclusive=inclusive
        )
        shipping_cost = {
            "amount_subtotal": shipping,
            "amount_tax": shipping_tax,
            "amount_total": shipping + (0 if inclusive else shipping_tax),
            "shipping_rate": rate["id"],
        }
        tax += shipping_tax
        added_tax += 0 if inclusive else shipping_tax
    session.update(
        {
            "amount_subtotal": subtotal,
            "amount_total": subtotal - discount + shipping + added_tax,
            "shipping_cost": shipping_cost,
            "total_details": {
                "amount_discount": discount,
                "amount_shipping": shipping,
                "amount_tax": tax,
            },
        }
    )
