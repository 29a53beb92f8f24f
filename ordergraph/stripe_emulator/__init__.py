"""A local Stripe emulator: the part of Stripe's REST API that ordergraph calls.

Why it exists: the service must be tested and demonstrated offline, with the
real ``stripe`` SDK on the wire (form-encoded requests, Stripe's JSON objects,
Stripe's error envelope, idempotency keys and retry headers) and with webhooks
signed exactly as Stripe signs them. Production never uses it.

Shapes follow Stripe's own example objects (``fixtures3.json`` from Stripe's
OpenAPI repository, MIT licensed, Copyright (c) 2011- Stripe, Inc.), trimmed
and rebuilt in code, in the current API version (``2026-10-28.endive``): the
shipping address lives at ``collected_information.shipping_details`` and
``payment_intent`` is null until the session is paid.

What it serves: Checkout Sessions (create with ``price_data`` line items,
shipping options, ``allow_promotion_codes`` or ``discounts``, automatic tax;
retrieve, list, expire, line items), PaymentIntents and Charges (retrieve),
Refunds, Events (retrieve), Coupons, Promotion codes (the current
``promotion[type]=coupon`` shape) and Shipping rates. Unknown parameters are
refused at any depth, as Stripe refuses them.

Deliberate simplifications, each documented where it happens:

* state lives in memory, one account, test mode only;
* sessions never expire by the clock; call :meth:`StripeEmulator.expire_session_event`;
* automatic tax is a flat rate per customer country (``tax_rates``, basis points,
  set with :meth:`StripeEmulator.set_tax_rates` or ``PUT /_emulator/tax_rates``),
  exclusive or inclusive as the price or rate says (``checkout_totals``); the
  customer's choices on Checkout (shipping option, promotion code, tax country)
  are options of :meth:`StripeEmulator.complete_session`;
* only 2xx answers and errors raised after an endpoint began (unknown ids,
  wrong states, over-refunds) are kept for idempotent replay; malformed
  parameters are not, as Stripe documents for validation failures; injected
  faults are never kept, so the client's retry with the same key executes;
* events caused by API calls (``charge.refunded`` after a refund,
  ``checkout.session.expired`` after an ``expire``) are delivered by a
  background task once the API answer is sent, like Stripe; :meth:`drain` waits
  for them.

Layout, one module per Stripe resource as in the SDK (``stripe/checkout/_session_service.py``
serves ``/v1/checkout/sessions``): ``checkout_sessions``, ``checkout_line_items``,
``payment_intents`` (and charges), ``refunds``, ``events``, ``coupons``,
``promotion_codes``, ``shipping_rates``; a new session's shipping options,
discounts and automatic tax in ``checkout_options``, its amounts in
``checkout_totals``; what the customer does on Checkout in ``checkout_actions``
and ``disputes``; ``delivery`` builds, signs and sends events; ``api`` is the
front door (recording, faults, auth, idempotency, routing), ``control`` the
``/_emulator`` routes; ``state`` holds the tables, ``params`` and ``errors`` the
form codec and error envelope, ``listing`` the paging every list shares;
``server`` composes ``StripeEmulator``. Imports go one way: server -> api/control -> resources ->
delivery -> state/params -> errors -> types; nothing imports this ``__init__``.
"""

from __future__ import annotations

# Imported from here by bench/ and tests/ though not in __all__: re-exported explicitly.
from ordergraph.stripe_emulator.checkout_actions import DEFAULT_SHIPPING as DEFAULT_SHIPPING
from ordergraph.stripe_emulator.checkout_sessions import _session_skeleton as _session_skeleton
from ordergraph.stripe_emulator.errors import EmulatorError, StripeApiError
from ordergraph.stripe_emulator.params import decode_form
from ordergraph.stripe_emulator.server import StripeEmulator, serve_emulator
from ordergraph.stripe_emulator.state import DEFAULT_API_VERSION as DEFAULT_API_VERSION
from ordergraph.stripe_emulator.state import DEFAULT_TAX_RATES as DEFAULT_TAX_RATES
from ordergraph.stripe_emulator.state import Delivery, RecordedRequest

__all__ = [
    "Delivery",
    "EmulatorError",
    "RecordedRequest",
    "StripeApiError",
    "StripeEmulator",
    "decode_form",
    "serve_emulator",
]
