"""PaymentIntents and Charges: made when a session is paid, read by ``GET`` endpoints.

Nothing creates a PaymentIntent through the API here: Checkout makes one (with
its Charge) when the customer pays, as in Stripe; the service only retrieves
them (``/v1/payment_intents/{id}``, ``/v1/charges/{id}``) and refunds them.
"""

from __future__ import annotations

import copy

from ordergraph.stripe_emulator.state import (
    ApiRoute,
    EmulatorState,
    _address,
    _Call,
    _new_id,
    _now,
    _rand,
    _Result,
)
from ordergraph.stripe_emulator.types import JsonDict


def new_payment(
    state: EmulatorState, session: JsonDict, *, succeeded: bool
) -> tuple[JsonDict, JsonDict]:
    """Make the PaymentIntent and Charge a completed Checkout Session has."""
    now = _now()
    pi_id = _new_id("pi_3")
    ch_id = _new_id("ch_3")
    pm_id = _new_id("pm_1")
    amount = int(session["amount_total"])
    currency = session["currency"]
    pi_data = state.pi_data.get(session["id"], {})
    # Stripe copies payment_intent_data[metadata] to the PaymentIntent and charge,
    # never the session's own metadata.
    metadata = dict(pi_data.get("metadata") or {})
    shipping_details = (session.get("collected_information") or {}).get("shipping_details")
    shipping = (
        {
            **copy.deepcopy(shipping_details),
            "carrier": None,
            "phone": None,
            "tracking_number": None,
        }
        if shipping_details
        else None
    )
    email = (session.get("customer_details") or {}).get("email")
    charge: JsonDict = {
        "id": ch_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount if succeeded else 0,
        "amount_refunded": 0,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": _new_id("txn_3") if succeeded else None,
        "billing_details": {
            "address": _address(None),
            "email": email,
            "name": shipping_details["name"] if shipping_details else None,
            "phone": None,
            "tax_id": None,
        },
        "calculated_statement_descriptor": "ORDERGRAPH",
        "captured": succeeded,
        "created": now,
        "currency": currency,
        "customer": None,
        "description": pi_data.get("description"),
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": None,
        "failure_message": None,
        "fraud_details": {},
        "livemode": False,
        "metadata": metadata,
        "on_behalf_of": None,
        "outcome": {
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "seller_message": "Payment complete.",
            "type": "authorized",
        },
        "paid": succeeded,
        "payment_intent": pi_id,
        "payment_method": pm_id,
        "payment_method_details": (
            {
                "card": {
                    "brand": "visa",
                    "country": "US",
                    "exp_month": 8,
                    "exp_year": 2030,
                    "funding": "credit",
                    "last4": "4242",
                    "network": "visa",
                },
                "type": "card",
            }
            if succeeded
            else {"type": "us_bank_account", "us_bank_account": {"last4": "6789"}}
        ),
        "receipt_email": email,
        "receipt_number": None,
        "receipt_url": None,
        "refunded": False,
        "review": None,
        "shipping": shipping,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "succeeded" if succeeded else "pending",
        "transfer_data": None,
        "transfer_group": None,
    }
    pi: JsonDict = {
        "id": pi_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": amount if succeeded else 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": None,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic_async",
        "client_secret": f"{pi_id}_secret_{_rand(25)}",
        "confirmation_method": "automatic",
        "created": now,
        "currency": currency,
        "customer": None,
        "description": pi_data.get("description"),
        "last_payment_error": None,
        "latest_charge": ch_id,
        "livemode": False,
        "metadata": metadata,
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": pm_id,
        "payment_method_configuration_details": None,
        "payment_method_options": {},
        "payment_method_types": list(session.get("payment_method_types") or ["card"]),
        "processing": None,
        "receipt_email": email,
        "review": None,
        "setup_future_usage": None,
        "shipping": shipping,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "succeeded" if succeeded else "processing",
        "transfer_data": None,
        "transfer_group": None,
    }
    state.payment_intents[pi_id] = pi
    state.charges[ch_id] = charge
    return pi, charge


def charge_of(state: EmulatorState, pi: JsonDict) -> JsonDict:
    """The PaymentIntent's latest (and only) Charge."""
    return state.charges[pi["latest_charge"]]


async def retrieve_payment_intent(state: EmulatorState, call: _Call, pi_id: str) -> _Result:
    """``GET /v1/payment_intents/{id}``."""
    pi = state.get(state.payment_intents, "payment_intent", pi_id, "intent")
    return _Result(200, state.expand(pi, call.params.get("expand")))


async def retrieve_charge(state: EmulatorState, call: _Call, charge_id: str) -> _Result:
    """``GET /v1/charges/{id}``."""
    charge = state.get(state.charges, "charge", charge_id, "id")
    return _Result(200, state.expand(charge, call.params.get("expand")))


ROUTES: list[ApiRoute] = [
    ("GET", r"/v1/payment_intents/([^/]+)", retrieve_payment_intent),
    ("GET", r"/v1/charges/([^/]+)", retrieve_charge),
]
