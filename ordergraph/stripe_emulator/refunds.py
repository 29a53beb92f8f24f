"""Refunds API: ``POST /v1/refunds`` and ``GET /v1/refunds/{id}``.

A refund is checked against its charge as Stripe checks it (succeeded payment,
no open dispute, nothing over the unrefunded amount) and is followed by a
``charge.refunded`` event delivered in the background.
"""

from __future__ import annotations

from ordergraph.stripe_emulator.delivery import build_event, deliver
from ordergraph.stripe_emulator.errors import StripeApiError, _invalid
from ordergraph.stripe_emulator.listing import list_page
from ordergraph.stripe_emulator.params import _check_unknown, _dict_param, _int_param
from ordergraph.stripe_emulator.payment_intents import charge_of
from ordergraph.stripe_emulator.state import ApiRoute, EmulatorState, _Call, _new_id, _now, _Result
from ordergraph.stripe_emulator.types import After, JsonDict

# Top-level parameters Stripe accepts (from the SDK's RefundCreateParams, request
# options removed); anything else is refused with "Received unknown parameter".
REFUND_CREATE_PARAMS = frozenset(
    """amount charge currency customer expand instructions_email metadata origin
    payment_intent reason refund_application_fee reverse_transfer""".split()
)
REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")


def _format_amount(amount: int, currency: str) -> str:
    if currency == "usd":
        return f"${amount / 100:.2f}"
    return f"{amount / 100:.2f} {currency.upper()}"


async def create_refund(state: EmulatorState, call: _Call) -> _Result:
    """``POST /v1/refunds`` of a ``payment_intent`` or ``charge``; ``charge.refunded`` follows."""
    p = call.params
    _check_unknown(p, REFUND_CREATE_PARAMS)
    if p.get("payment_intent"):
        pi = state.get(
            state.payment_intents, "payment_intent", p["payment_intent"], "payment_intent"
        )
        pi_id = pi["id"]
    elif p.get("charge"):
        found = state.get(state.charges, "charge", p["charge"], "charge")
        pi = state.payment_intents[found["payment_intent"]]
        pi_id = pi["id"]
    else:
        raise _invalid("One of `charge` or `payment_intent` is required.", "payment_intent")
    amount = None if p.get("amount") in (None, "") else _int_param(p["amount"], "amount", minimum=1)
    reason = p.get("reason") or None
    if reason is not None and reason not in REFUND_REASONS:
        raise _invalid(f"Invalid reason: must be one of {', '.join(REFUND_REASONS)}", "reason")
    metadata = _dict_param(p.get("metadata", {}), "metadata")
    # Checked before anything changes, as Stripe refuses the whole request.
    state.expand({"object": "refund", "charge": None, "payment_intent": None}, p.get("expand"))
    if pi["status"] != "succeeded":
        raise StripeApiError(
            400,
            "invalid_request_error",
            f"This PaymentIntent ({pi_id}) does not have a successful charge to refund.",
            param="payment_intent",
        )
    charge = charge_of(state, pi)
    if charge["disputed"] and any(
        d["charge"] == charge["id"] and d["status"] not in ("won", "lost", "warning_closed")
        for d in state.disputes.values()
    ):
        raise StripeApiError(
            400,
            "invalid_request_error",
            f"Charge {charge['id']} has been charged back; cannot issue a refund.",
            code="charge_disputed",
        )
    remaining = charge["amount"] - charge["amount_refunded"]
    if remaining <= 0:
        raise StripeApiError(
            400,
            "invalid_request_error",
            f"Charge {charge['id']} has already been refunded.",
            code="charge_already_refunded",
        )
    if amount is None:
        amount = remaining
    if amount > remaining:
        cur = charge["currency"]
        what = "charge amount" if charge["amount_refunded"] == 0 else "unrefunded amount on charge"
        raise StripeApiError(
            400,
            "invalid_request_error",
            f"Refund amount ({_format_amount(amount, cur)}) is greater than {what} "
            f"({_format_amount(remaining, cur)})",
            code="amount_too_large",
            param="amount",
        )
    refund: JsonDict = {
        "id": _new_id("re_3"),
        "object": "refund",
        "amount": amount,
        "balance_transaction": _new_id("txn_3"),
        "charge": charge["id"],
        "created": _now(),
        "currency": charge["currency"],
        "destination_details": {
            "card": {
                "reference_status": "pending",
                "reference_type": "acquirer_reference_number",
                "type": "refund",
            },
            "type": "card",
        },
        "metadata": metadata,
        "payment_intent": pi_id,
        "reason": reason,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "succeeded",
        "transfer_reversal": None,
    }
    state.refunds[refund["id"]] = refund
    previous = {"amount_refunded": charge["amount_refunded"], "refunded": charge["refunded"]}
    charge["amount_refunded"] += amount
    charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
    if previous["refunded"] == charge["refunded"]:
        del previous["refunded"]
    after: list[After] = []
    if state.send_api_events:
        event = build_event(
            state,
            "charge.refunded",
            charge,
            previous_attributes=previous,
            request={"id": call.request_id, "idempotency_key": call.idempotency_key},
        )
        after.append(lambda: deliver(state, event))
    return _Result(200, state.expand(refund, p.get("expand")), after)


# Stripe's RefundListParams.
REFUND_LIST_PARAMS = frozenset(
    "charge created ending_before expand limit payment_intent starting_after".split()
)


async def list_refunds(state: EmulatorState, call: _Call) -> _Result:
    """``GET /v1/refunds``: newest first, filtered by ``payment_intent`` or ``charge``."""
    p = call.params
    _check_unknown(p, REFUND_LIST_PARAMS)
    intent, charge = p.get("payment_intent"), p.get("charge")
    page = list_page(
        state,
        p,
        state.refunds,
        "refund",
        "/v1/refunds",
        lambda refund: (
            intent in (None, refund["payment_intent"]) and charge in (None, refund["charge"])
        ),
    )
    return _Result(200, page)


async def retrieve_refund(state: EmulatorState, call: _Call, refund_id: str) -> _Result:
    """``GET /v1/refunds/{id}``."""
    refund = state.get(state.refunds, "refund", refund_id, "id")
    return _Result(200, state.expand(refund, call.params.get("expand")))


ROUTES: list[ApiRoute] = [
    ("POST", r"/v1/refunds", create_refund),
    ("GET", r"/v1/refunds", list_refunds),
    ("GET", r"/v1/refunds/([^/]+)", retrieve_refund),
]
