"""What the customer does on Stripe's Checkout page: pay, settle late, fail, time out.

Paying includes what the customer chooses there: a shipping option, a promotion
code, the address that decides the tax.

There is no API for these in Stripe: they happen to a session. Tests and the
demo trigger them (in process or through ``/_emulator/...``) and each sends
the webhook Stripe would send.
"""

from __future__ import annotations

from ordergraph.stripe_emulator.checkout_options import session_coupon
from ordergraph.stripe_emulator.checkout_sessions import _mark_expired
from ordergraph.stripe_emulator.checkout_totals import price_session
from ordergraph.stripe_emulator.coupons import coupon_usable, redeem_coupon
from ordergraph.stripe_emulator.delivery import build_event
from ordergraph.stripe_emulator.delivery import deliver as deliver_event
from ordergraph.stripe_emulator.errors import EmulatorError
from ordergraph.stripe_emulator.payment_intents import charge_of, new_payment
from ordergraph.stripe_emulator.promotion_codes import (
    UNKNOWN_CODE,
    find_code,
    redeem_code,
    redemption_problem,
)
from ordergraph.stripe_emulator.state import Delivery, EmulatorState, _address, _new_id
from ordergraph.stripe_emulator.types import JsonDict

DEFAULT_SHIPPING: JsonDict = {
    "name": "Jenny Rosen",
    "address": {
        "line1": "510 Townsend St",
        "line2": None,
        "city": "San Francisco",
        "state": "CA",
        "postal_code": "94103",
        "country": "US",
    },
}
DEFAULT_EMAIL = "jenny.rosen@example.com"


def _session(state: EmulatorState, session_id: str) -> JsonDict:
    session = state.sessions.get(session_id)
    if session is None:
        raise EmulatorError(f"No such checkout.session: '{session_id}'", 404)
    return session


NO_PROMOTION_CODES = (
    "This Checkout Session does not accept promotion codes: it was created without "
    "`allow_promotion_codes`."
)


def _tax_country(country: object, shipping: JsonDict | None) -> str:
    """The tax country: ``country``, else the shipping address's, else the default card's (US)."""
    if country is None:
        address = (shipping or {}).get("address")
        country = (address.get("country") if isinstance(address, dict) else None) or "US"
    if not isinstance(country, str) or len(country) != 2 or not country.isalpha():
        raise ValueError(f"country must be a two-letter country code, not {country!r}")
    return country.upper()


def _pricing(
    state: EmulatorState,
    session: JsonDict,
    *,
    shipping_rate: str | None,
    promotion_code: str | None,
    country: str | None,
    shipping: JsonDict | None,
) -> tuple[JsonDict | None, JsonDict | None, JsonDict | None, int | None]:
    """Check what the customer chose; the rate, coupon, promotion code and tax rate to apply.

    Raises ``EmulatorError`` (400, Checkout's message) for a refused choice; changes nothing.
    """
    options = [option["shipping_rate"] for option in session.get("shipping_options") or []]
    if shipping_rate is not None and shipping_rate not in options:
        raise EmulatorError(
            f"Shipping rate {shipping_rate!r} is not one of this session's shipping options "
            f"({', '.join(options) or 'none'})"
        )
    rate_id = shipping_rate or (options[0] if options else None)
    rate = state.shipping_rates.get(rate_id) if rate_id else None
    coupon, promo = session_coupon(state, session)
    if session.get("discounts") and coupon is None:
        raise EmulatorError("The coupon of this session's discount no longer exists.")
    if promotion_code is not None:
        if not isinstance(promotion_code, str):
            raise TypeError("promotion_code must be the code the customer typed, a string")
        if not session.get("allow_promotion_codes"):
            raise EmulatorError(NO_PROMOTION_CODES)
        promo = find_code(state, promotion_code)
        if promo is None:
            raise EmulatorError(UNKNOWN_CODE)
        coupon = state.coupons.get(promo["promotion"]["coupon"])
    subtotal = sum(line["amount_subtotal"] for line in state.line_items.get(session["id"], []))
    if promo is not None:
        problem = redemption_problem(state, promo, subtotal=subtotal, currency=session["currency"])
        if problem is not None:
            raise EmulatorError(problem)
    elif coupon is not None and not coupon_usable(coupon):
        raise EmulatorError(f"The coupon {coupon['id']} is no longer valid.")
    if not (session.get("automatic_tax") or {}).get("enabled"):
        if country is not None:
            _tax_country(country, None)  # checked, though without automatic tax it decides nothing
        return rate, coupon, promo, None
    return rate, coupon, promo, state.tax_rates.get(_tax_country(country, shipping), 0)


async def complete_session(
    state: EmulatorState,
    session_id: str,
    *,
    payment_status: str = "paid",
    shipping: JsonDict | None = None,
    customer_email: str | None = None,
    amount_total: int | None = None,
    metadata: JsonDict | None = None,
    deliver: bool = True,
    shipping_rate: str | None = None,
    promotion_code: str | None = None,
    country: str | None = None,
) -> Delivery:
    """The customer pays: the session completes and ``checkout.session.completed`` is sent.

    ``payment_status="unpaid"`` is a delayed method (bank debit): the PaymentIntent
    stays ``processing`` until ``async_payment_succeeded``/``_failed``.
    ``amount_total`` and ``metadata`` (merged into the session's) let tests forge
    what a tampered or mismatched session would carry. The shipping address is
    ``shipping`` or, when the session collects one, a default US address.
    ``shipping_rate`` is the option the customer picked (default the first);
    ``promotion_code`` a code typed on a session with ``allow_promotion_codes``
    (refused with Checkout's message when unknown, inactive, expired or used up;
    else it and its coupon count one more redemption); ``country`` the tax
    country when automatic tax is on (default the shipping address's, else US).
    The amounts are then recomputed (``checkout_totals``) and the PaymentIntent
    is for the new ``amount_total``.
    With ``deliver=False`` the event is built but not sent (status_code 0).
    """
    session = _session(state, session_id)
    if session["status"] != "open":
        raise EmulatorError(f"Checkout session {session_id} is {session['status']}, not open", 400)
    if payment_status not in ("paid", "unpaid"):
        raise ValueError("payment_status must be 'paid' or 'unpaid'")
    if shipping is not None and not isinstance(shipping, dict):
        raise TypeError("shipping must be a dict with name and address")
    if shipping is None and session.get("shipping_address_collection"):
        shipping = DEFAULT_SHIPPING
    rate, coupon, promo, tax_rate = _pricing(
        state,
        session,
        shipping_rate=shipping_rate,
        promotion_code=promotion_code,
        country=country,
        shipping=shipping,
    )
    if promotion_code is not None and promo is not None:
        session["discounts"] = [{"coupon": None, "promotion_code": promo["id"]}]
    price_session(state, session, rate=rate, coupon=coupon, tax_basis_points=tax_rate)
    if tax_rate is not None:
        session["automatic_tax"]["status"] = "complete"
    if promo is not None:
        redeem_code(state, promo)
    elif coupon is not None:
        redeem_coupon(coupon)
    if amount_total is not None:
        session["amount_total"] = amount_total
        session["amount_subtotal"] = amount_total
    if metadata:
        session["metadata"] = {**session["metadata"], **metadata}
    shipping_details = (
        {"address": _address(shipping.get("address")), "name": shipping.get("name")}
        if shipping
        else None
    )
    email = customer_email or session.get("customer_email") or DEFAULT_EMAIL
    session["collected_information"] = {
        "business_name": None,
        "individual_name": None,
        "shipping_details": shipping_details,
    }
    session["customer_details"] = {
        "address": _address(shipping_details["address"] if shipping_details else None),
        "business_name": None,
        "email": email,
        "individual_name": None,
        "name": shipping_details["name"] if shipping_details else None,
        "phone": None,
        "tax_exempt": "none",
        "tax_ids": [],
    }
    pi, _ = new_payment(state, session, succeeded=payment_status == "paid")
    session.update(
        {
            "status": "complete",
            "payment_status": payment_status,
            "payment_intent": pi["id"],
            "url": None,
        }
    )
    event = build_event(state, "checkout.session.completed", session)
    if not deliver:
        return Delivery(0, "", event)
    return await deliver_event(state, event)


def _unpaid_completed(state: EmulatorState, session_id: str) -> tuple[JsonDict, JsonDict, JsonDict]:
    session = _session(state, session_id)
    if session["status"] != "complete" or session["payment_status"] != "unpaid":
        raise EmulatorError(
            f"Checkout session {session_id} is not complete with payment_status unpaid "
            f"(status {session['status']}, payment_status {session['payment_status']})",
            400,
        )
    pi = state.payment_intents[session["payment_intent"]]
    if pi["status"] != "processing":
        raise EmulatorError(f"PaymentIntent {pi['id']} already settled ({pi['status']})", 400)
    return session, pi, charge_of(state, pi)


async def async_payment_succeeded(state: EmulatorState, session_id: str) -> Delivery:
    """A delayed payment settles: ``checkout.session.async_payment_succeeded``."""
    session, pi, charge = _unpaid_completed(state, session_id)
    session["payment_status"] = "paid"
    pi.update({"status": "succeeded", "amount_received": pi["amount"]})
    charge.update(
        {
            "status": "succeeded",
            "paid": True,
            "captured": True,
            "amount_captured": charge["amount"],
            "balance_transaction": _new_id("txn_3"),
        }
    )
    return await deliver_event(
        state, build_event(state, "checkout.session.async_payment_succeeded", session)
    )


async def async_payment_failed(state: EmulatorState, session_id: str) -> Delivery:
    """A delayed payment fails: ``checkout.session.async_payment_failed`` (stays unpaid)."""
    session, pi, charge = _unpaid_completed(state, session_id)
    failure = {"code": "insufficient_funds", "message": "The account has insufficient funds."}
    pi.update(
        {
            "status": "requires_payment_method",
            "last_payment_error": {**failure, "type": "card_error"},
        }
    )
    charge.update(
        {
            "status": "failed",
            "failure_code": failure["code"],
            "failure_message": failure["message"],
        }
    )
    return await deliver_event(
        state, build_event(state, "checkout.session.async_payment_failed", session)
    )


async def expire_session_event(state: EmulatorState, session_id: str) -> Delivery:
    """The session runs out of time: it expires and ``checkout.session.expired`` is sent."""
    session = _session(state, session_id)
    if session["status"] != "open":
        raise EmulatorError(f"Checkout session {session_id} is {session['status']}, not open", 400)
    _mark_expired(session)
    return await deliver_event(state, build_event(state, "checkout.session.expired", session))
