"""Disputes: the customer's bank charges a payment back, later won or lost.

Stripe has no API to open a dispute; the emulator opens and closes them on
request and sends ``charge.dispute.created`` / ``charge.dispute.closed``. An
open dispute blocks refunds of its charge (see ``refunds``).
"""

from __future__ import annotations

from ordergraph.stripe_emulator.delivery import build_event, deliver
from ordergraph.stripe_emulator.errors import EmulatorError
from ordergraph.stripe_emulator.payment_intents import charge_of
from ordergraph.stripe_emulator.state import Delivery, EmulatorState, _new_id, _now


async def dispute(
    state: EmulatorState, payment_intent: str, *, status: str = "needs_response"
) -> Delivery:
    """The customer disputes the payment: ``charge.dispute.created``.

    A closing status (``won``, ``lost``, ``warning_closed``, ``prevented``) updates the
    open dispute of that payment (or makes one) and sends ``charge.dispute.closed``.
    """
    pi = state.payment_intents.get(payment_intent)
    if pi is None:
        raise EmulatorError(f"No such payment_intent: '{payment_intent}'", 404)
    if pi["status"] != "succeeded":
        raise EmulatorError(f"PaymentIntent {payment_intent} has not succeeded", 400)
    charge = charge_of(state, pi)
    closing = status in ("won", "lost", "warning_closed", "prevented")
    existing = next((d for d in state.disputes.values() if d["charge"] == charge["id"]), None)
    if existing is None or not closing:
        existing = {
            "id": _new_id("dp_1"),
            "object": "dispute",
            "amount": charge["amount"],
            "balance_transactions": [],
            "charge": charge["id"],
            "created": _now(),
            "currency": charge["currency"],
            "evidence_details": {
                "due_by": _now() + 7 * 24 * 3600,
                "has_evidence": False,
                "past_due": False,
                "submission_count": 0,
            },
            "is_charge_refundable": False,
            "livemode": False,
            "metadata": {},
            "payment_intent": pi["id"],
            "reason": "fraudulent",
            "status": status,
        }
        state.disputes[existing["id"]] = existing
    existing["status"] = status
    charge["disputed"] = True
    kind = "charge.dispute.closed" if closing else "charge.dispute.created"
    return await deliver(state, build_event(state, kind, existing))
