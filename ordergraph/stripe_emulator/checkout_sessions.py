"""Checkout Sessions API: ``/v1/checkout/sessions`` create, retrieve, expire, line items.

This is the resource ordergraph calls most and validates most strictly, the
way the SDK's ``checkout/_session_service.py`` serves it: a session is built
from a full skeleton of the current API version so its JSON has every key
Stripe's has.
"""

from __future__ import annotations

from ordergraph.stripe_emulator.checkout_line_items import (
    line_tax_codes,
    list_line_items,
    parse_line_items,
)
from ordergraph.stripe_emulator.checkout_options import (
    parse_session_options,
    shipping_option_entries,
)
from ordergraph.stripe_emulator.checkout_totals import price_session
from ordergraph.stripe_emulator.delivery import build_event, deliver
from ordergraph.stripe_emulator.errors import StripeApiError, _invalid, _missing
from ordergraph.stripe_emulator.listing import list_page
from ordergraph.stripe_emulator.params import _check_unknown, _dict_param, _int_param
from ordergraph.stripe_emulator.shipping_rates import save_rate
from ordergraph.stripe_emulator.state import (
    ApiRoute,
    EmulatorState,
    _Call,
    _new_id,
    _now,
    _rand,
    _Result,
)
from ordergraph.stripe_emulator.types import After, JsonDict

UI_MODES = ("embedded_page", "hosted_page", "elements", "form")
# A session's expires_at must lie 30 minutes to 24 hours after creation.
MIN_EXPIRY_SECONDS = 30 * 60
MAX_EXPIRY_SECONDS = 24 * 60 * 60

# Top-level parameters Stripe accepts (from the SDK's SessionCreateParams,
# request options removed). Anything else is refused with "Received unknown
# parameter", as Stripe does, so typos in the service show up.
SESSION_CREATE_PARAMS = frozenset(
    """adaptive_pricing after_expiration allow_promotion_codes allowed_payment_method_types
    automatic_tax billing_address_collection branding_settings cancel_url client_reference_id
    consent_collection currency custom_fields custom_text customer customer_account
    customer_creation customer_email customer_update discounts excluded_payment_method_types
    expand expires_at integration_identifier invoice_creation line_items locale
    managed_payments metadata mode name_collection optional_items origin_context
    payment_intent_data payment_method_collection payment_method_configuration
    payment_method_data payment_method_options permissions phone_number_collection
    redirect_on_completion return_url saved_payment_method_options setup_intent_data
    shipping_address_collection shipping_options submit_type subscription_data success_url
    tax_id_collection ui_mode wallet_options""".split()
)


async def create_session(state: EmulatorState, call: _Call) -> _Result:
    """``POST /v1/checkout/sessions``: only ``mode=payment`` with ``price_data`` line items.

    Shipping options, discounts, ``allow_promotion_codes`` and automatic tax are
    parsed by ``checkout_options``; the amounts are set by ``checkout_totals``.
    """
    p = call.params
    _check_unknown(p, SESSION_CREATE_PARAMS)
    mode = p.get("mode")
    if not mode:
        raise _missing("mode")
    if mode != "payment":
        raise _invalid(f"Invalid mode: {mode}. The emulator supports only mode=payment.", "mode")
    ui_mode = p.get("ui_mode", "hosted_page")
    if ui_mode not in UI_MODES:
        raise _invalid(
            f"Invalid ui_mode: must be one of {', '.join(UI_MODES[:-1])}, or {UI_MODES[-1]}",
            "ui_mode",
            "parameter_invalid_string",
        )
    return_url = p.get("return_url") or None
    redirect = p.get("redirect_on_completion", "always")
    if ui_mode in ("embedded_page", "elements", "form"):
        for forbidden in ("success_url", "cancel_url"):
            if p.get(forbidden):
                raise _invalid(
                    f"`{forbidden}` is not supported when `ui_mode` is `{ui_mode}`.",
                    forbidden,
                )
        if return_url is None and redirect != "never":
            raise _invalid(
                f"`return_url` is required when `ui_mode` is `{ui_mode}` unless "
                "`redirect_on_completion` is `never`.",
                "return_url",
                "parameter_missing",
            )
    elif return_url is not None:
        raise _invalid(
            "`return_url` can only be used when `ui_mode` is `embedded_page`, "
            "`elements` or `form`.",
            "return_url",
        )
    now = _now()
    expires_at = now + MAX_EXPIRY_SECONDS
    if p.get("expires_at") not in (None, ""):
        expires_at = _int_param(p["expires_at"], "expires_at")
        ahead = expires_at - now
        if ahead + state.expires_at_leeway < MIN_EXPIRY_SECONDS:
            raise _invalid(
                "The `expires_at` timestamp must be at least 30 minutes from Checkout "
                "Session creation.",
                "expires_at",
            )
        if ahead > MAX_EXPIRY_SECONDS:
            raise _invalid(
                "The `expires_at` timestamp must be less than 24 hours from Checkout "
                "Session creation.",
                "expires_at",
            )
    metadata = _dict_param(p.get("metadata", {}), "metadata")
    shipping_collection = p.get("shipping_address_collection") or None
    if shipping_collection is not None:
        shipping_collection = _dict_param(shipping_collection, "shipping_address_collection")
        countries = shipping_collection.get("allowed_countries")
        if not isinstance(countries, list) or not countries:
            raise _missing("shipping_address_collection[allowed_countries]")
    pi_data = _dict_param(p.get("payment_intent_data", {}), "payment_intent_data")
    lines, currency = parse_line_items(p.get("line_items"))
    subtotal = sum(line["amount_subtotal"] for line in lines)
    options = parse_session_options(state, p, currency, subtotal)
    tax_codes = line_tax_codes(p["line_items"])

    session_id = _new_id("cs_test_a1", 56)
    session = _session_skeleton()
    session.update(
        {
            "id": session_id,
            "amount_subtotal": subtotal,
            "amount_total": subtotal,
            "cancel_url": p.get("cancel_url") or None,
            "client_reference_id": p.get("client_reference_id") or None,
            "client_secret": (
                f"{session_id}_secret_{_rand(24)}" if ui_mode != "hosted_page" else None
            ),
            "created": now,
            "currency": currency,
            "customer_email": p.get("customer_email") or None,
            "expires_at": expires_at,
            "locale": p.get("locale") or None,
            "metadata": metadata,
            "mode": mode,
            "redirect_on_completion": redirect if ui_mode != "hosted_page" else None,
            "return_url": (
                return_url.replace("{CHECKOUT_SESSION_ID}", session_id) if return_url else None
            ),
            "shipping_address_collection": shipping_collection,
            "success_url": p.get("success_url") or None,
            "ui_mode": ui_mode,
            "url": (
                f"https://checkout.stripe.com/c/pay/{session_id}"
                if ui_mode == "hosted_page"
                else None
            ),
        }
    )
    if p.get("billing_address_collection"):
        session["billing_address_collection"] = p["billing_address_collection"]
    if p.get("submit_type"):
        session["submit_type"] = p["submit_type"]
    if isinstance(p.get("payment_method_types"), list):
        session["payment_method_types"] = p["payment_method_types"]
    session["total_details"] = {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0}
    # Kept privately: what payment_intent_data asked for, applied when a PI is made.
    state.pi_data[session_id] = pi_data
    for line in lines:
        line["id"] = _new_id("li_")
    for rate in options.new_rates:
        save_rate(state, rate)
    session.update(options.fields)
    session["shipping_options"] = shipping_option_entries(options.rates)
    state.sessions[session_id] = session
    state.line_items[session_id] = lines
    state.tax_codes[session_id] = tax_codes
    # The first shipping option is preselected; tax waits for the customer's address.
    first_rate = options.rates[0] if options.rates else None
    price_session(state, session, rate=first_rate, coupon=options.coupon, tax_basis_points=None)
    return _Result(200, state.expand(session, p.get("expand")))


async def retrieve_session(state: EmulatorState, call: _Call, session_id: str) -> _Result:
    """``GET /v1/checkout/sessions/{id}``."""
    _check_unknown(call.params, frozenset({"expand"}))
    session = state.get(state.sessions, "checkout.session", session_id, "id")
    return _Result(200, state.expand(session, call.params.get("expand")))


async def expire_session(state: EmulatorState, call: _Call, session_id: str) -> _Result:
    """``POST /v1/checkout/sessions/{id}/expire``; ``checkout.session.expired`` follows."""
    _check_unknown(call.params, frozenset({"expand"}))
    session = state.get(state.sessions, "checkout.session", session_id, "id")
    if session["status"] != "open":
        raise StripeApiError(
            400,
            "invalid_request_error",
            "Only Checkout Sessions with a status in [open] can be expired. This Checkout "
            f"Session has a status of {session['status']}.",
            param="session",
        )
    _mark_expired(session)
    after: list[After] = []
    if state.send_api_events:
        event = build_event(
            state,
            "checkout.session.expired",
            session,
            request={"id": call.request_id, "idempotency_key": call.idempotency_key},
        )
        after.append(lambda: deliver(state, event))
    return _Result(200, state.expand(session, call.params.get("expand")), after)


LIST_PARAMS = frozenset(
    """created customer customer_account customer_details ending_before expand limit
    payment_intent payment_link starting_after status subscription""".split()
)
LIST_STATUSES = ("open", "complete", "expired")


async def list_sessions(state: EmulatorState, call: _Call) -> _Result:
    """``GET /v1/checkout/sessions``: newest first, ``limit`` 1 to 100 (default 10), cursors
    ``starting_after`` / ``ending_before``, filters ``created`` and ``status``."""
    p = call.params
    _check_unknown(p, LIST_PARAMS)
    unsupported = sorted(
        set(p)
        & (
            LIST_PARAMS
            - {"created", "status", "limit", "expand", "starting_after", "ending_before"}
        )
    )
    if unsupported:
        raise _invalid(f"The emulator does not filter by {unsupported[0]}.", unsupported[0])
    status = p.get("status")
    if status is not None and status not in LIST_STATUSES:
        raise _invalid(f"Invalid status: must be one of {', '.join(LIST_STATUSES)}", "status")
    page = list_page(
        state,
        p,
        state.sessions,
        "checkout.session",
        "/v1/checkout/sessions",
        lambda s: status is None or s["status"] == status,
    )
    return _Result(200, page)


def _mark_expired(session: JsonDict) -> None:
    session["status"] = "expired"
    session["url"] = None


ROUTES: list[ApiRoute] = [
    ("POST", r"/v1/checkout/sessions", create_session),
    ("GET", r"/v1/checkout/sessions", list_sessions),
    ("GET", r"/v1/checkout/sessions/([^/]+)", retrieve_session),
    ("POST", r"/v1/checkout/sessions/([^/]+)/expire", expire_session),
    ("GET", r"/v1/checkout/sessions/([^/]+)/line_items", list_line_items),
]


def _session_skeleton() -> JsonDict:
    """Every key of a current ``checkout.session`` with the values a new payment session has."""
    return {
        "id": "",
        "object": "checkout.session",
        "adaptive_pricing": {"enabled": False},
        "after_expiration": None,
        "allow_promotion_codes": None,
        "amount_subtotal": None,
        "amount_total": None,
        "automatic_tax": {"enabled": False, "liability": None, "provider": None, "status": None},
        "billing_address_collection": None,
        "branding_settings": None,
        "cancel_url": None,
        "client_reference_id": None,
        "client_secret": None,
        "collected_information": None,
        "consent": None,
        "consent_collection": None,
        "created": 0,
        "currency": None,
        "currency_conversion": None,
        "custom_fields": [],
        "custom_text": {
            "after_submit": None,
            "shipping_address": None,
            "submit": None,
            "terms_of_service_acceptance": None,
        },
        "customer": None,
        "customer_account": None,
        "customer_creation": "if_required",
        "customer_details": None,
        "customer_email": None,
        "discounts": [],
        "expires_at": 0,
        "integration_identifier": None,
        "invoice": None,
        "invoice_creation": {
            "enabled": False,
            "invoice_data": {
                "account_tax_ids": None,
                "custom_fields": None,
                "description": None,
                "footer": None,
                "issuer": None,
                "metadata": {},
                "rendering_options": None,
            },
        },
        "livemode": False,
        "locale": None,
        "managed_payments": None,
        "metadata": {},
        "mode": "payment",
        "origin_context": None,
        "payment_intent": None,
        "payment_link": None,
        "payment_method_collection": "if_required",
        "payment_method_configuration_details": None,
        "payment_method_options": {},
        "payment_method_types": ["card"],
        "payment_status": "unpaid",
        "permissions": None,
        "phone_number_collection": {"enabled": False},
        "presentment_details": None,
        "recovered_from": None,
        "redirect_on_completion": None,
        "return_url": None,
        "saved_payment_method_options": None,
        "setup_intent": None,
        "shipping_address_collection": None,
        "shipping_cost": None,
        "shipping_options": [],
        "status": "open",
        "submit_type": None,
        "subscription": None,
        "success_url": None,
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": "hosted_page",
        "url": None,
        "wallet_options": None,
    }
