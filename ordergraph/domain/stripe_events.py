"""The Stripe events the service acts on, each handed to the domain action it means.

A Stripe event is applied at most once: its id is recorded in the same transaction as the
change it causes, so a repeated delivery finds it and changes nothing. Events arrive in any
order; one that depends on another not yet seen (a refund before the payment) raises
`RetryLater`, is not recorded, and Stripe's own retry brings it back when it can apply.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ordergraph.db import get_connection, transaction
from ordergraph.db.sql import fetch
from ordergraph.domain.ids import parse_uuid
from ordergraph.domain.order_state import can_transition, change_order, lock_order
from ordergraph.domain.payments import (
    Discard,
    Outcome,
    PaymentServices,
    RetryLater,
    cancel_pending,
    confirm_checkout,
    fail_payment,
    order_of_session,
)
from ordergraph.domain.refunds import apply_refund
from ordergraph.mail import messages as emails
from ordergraph.models import Order, OrderStatus, PaymentStatus
from ordergraph.stripe_gateway import PaymentProviderError
from ordergraph.stripe_objects import (
    MalformedStripeObject,
    PaymentRecord,
    payment_record_from_stripe,
    session_from_stripe,
)

log = logging.getLogger(__name__)


async def _on_session_completed(
    obj: dict[str, Any], actor: str, services: PaymentServices
) -> Outcome:
    return await confirm_checkout(session_from_stripe(obj), actor=actor, services=services)


async def _on_async_payment_failed(
    obj: dict[str, Any], actor: str, services: PaymentServices
) -> Outcome:
    order = await order_of_session(session_from_stripe(obj))
    if order is None:
        return Outcome.IGNORED
    return await fail_payment(order, actor=actor)


async def _on_session_expired(
    obj: dict[str, Any], actor: str, services: PaymentServices
) -> Outcome:
    order = await order_of_session(session_from_stripe(obj))
    if order is None:
        return Outcome.IGNORED
    cancelled = await cancel_pending(order, reason="expired", actor=actor)
    return Outcome.APPLIED if cancelled else Outcome.UNCHANGED


async def _order_of_payment(record: PaymentRecord, services: PaymentServices) -> Order:
    """The paid order a charge or dispute is about; RetryLater until its payment is recorded.

    A dispute carries no metadata of ours: before the payment is recorded here (its event
    may come later), the payment intent, whose metadata names the order, tells whose it is.
    """
    order = None
    if record.payment_intent_id is not None:
        order = await Order.filter(stripe_payment_intent_id=record.payment_intent_id).first()
        if order is None and record.order_id is None:
            try:
                intent = await services.gateway.retrieve_payment_intent(record.payment_intent_id)
            except PaymentProviderError as exc:
                raise RetryLater(f"payment intent {record.payment_intent_id} unknown") from exc
            record = intent
    if order is None:
        order_id = parse_uuid(record.order_id)
        if order_id is None:
            raise Discard(Outcome.IGNORED)
        order = await Order.filter(id=order_id).first()
        if order is None:
            raise Discard(Outcome.IGNORED)
        if order.stripe_payment_intent_id not in (None, record.payment_intent_id):
            # The order was paid by another payment: this one (a second session, refused and
            # refunded) is not the order's, and must not refund or dispute it.
            log.warning(
                "%s concerns payment %s, not order %s's own payment",
                record.id,
                record.payment_intent_id,
                order.id,
            )
            raise Discard(Outcome.IGNORED)
    locked = await lock_order(str(order.id))
    assert locked is not None
    if locked.paid_at is None:
        if locked.status != OrderStatus.PENDING_PAYMENT:
            # Settled without this payment (refused and refunded, or failed): nothing to apply.
            raise Discard(Outcome.IGNORED)
        raise RetryLater(f"payment of order {order.id} is not recorded yet")
    return locked


async def _on_charge_refunded(
    obj: dict[str, Any], actor: str, services: PaymentServices
) -> Outcome:
    charge = payment_record_from_stripe(obj)
    if charge.amount_refunded is None:
        raise MalformedStripeObject("amount_refunded is not a whole number")
    order = await _order_of_payment(charge, services)
    return await apply_refund(order, charge.amount_refunded, actor=actor)


async def _on_dispute_created(
    obj: dict[str, Any], actor: str, services: PaymentServices
) -> Outcome:
    dispute = payment_record_from_stripe(obj)
    order = await _order_of_payment(dispute, services)
    if order.payment_status == PaymentStatus.DISPUTED:
        return Outcome.UNCHANGED
    await change_order(
        order,
        payment_status=PaymentStatus.DISPUTED,
        reason=f"dispute opened: {dispute.reason or 'unknown reason'}",
        actor=actor,
    )
    await emails.email_staff(
        services.settings,
        order,
        dedupe_key=f"dispute:{dispute.id}",
        composed=emails.compose_dispute(order, dispute.id, dispute.amount),
    )
    return Outcome.APPLIED


async def _on_dispute_closed(obj: dict[str, Any], actor: str, services: PaymentServices) -> Outcome:
    dispute = payment_record_from_stripe(obj)
    order = await _order_of_payment(dispute, services)
    if order.payment_status == PaymentStatus.PAID:
        raise RetryLater(f"dispute {dispute.id} closed before it was seen opening")
    if order.payment_status == PaymentStatus.REFUNDED:
        return Outcome.UNCHANGED  # nothing left to lose
    # Only a lost dispute takes the money: won, warning_closed (an inquiry) and prevented
    # leave it with the shop.
    lost = dispute.status == "lost"
    kept = PaymentStatus.PARTIALLY_REFUNDED if order.amount_refunded else PaymentStatus.PAID
    # Lost: the whole charge went back, as a full refund does, so the order ends REFUNDED like
    # one (releasing its stock if it was not shipped yet); see order_state, "no fulfilment
    # without money".
    gone = lost and can_transition(order.status, OrderStatus.REFUNDED)
    await change_order(
        order,
        status=OrderStatus.REFUNDED if gone else None,
        payment_status=PaymentStatus.REFUNDED if lost else kept,
        reason=f"dispute {dispute.status or 'closed'}",
        actor=actor,
        fields={"amount_refunded": order.total} if lost else {},
    )
    return Outcome.APPLIED


EventHandler = Callable[[dict[str, Any], str, PaymentServices], Awaitable[Outcome]]

HANDLERS: dict[str, EventHandler] = {
    "checkout.session.completed": _on_session_completed,
    "checkout.session.async_payment_succeeded": _on_session_completed,
    "checkout.session.async_payment_failed": _on_async_payment_failed,
    "checkout.session.expired": _on_session_expired,
    "charge.refunded": _on_charge_refunded,
    "charge.dispute.created": _on_dispute_created,
    "charge.dispute.closed": _on_dispute_closed,
}


# The event's id, once: a second delivery (even one that waited for the first's commit) finds
# it and inserts nothing. Fixed text: the ORM's INSERT cost more CPU than its round trip.
_RECORD = """
INSERT INTO processed_stripe_events (event_id, type, received) VALUES (?, ?, CURRENT_TIMESTAMP)
ON CONFLICT (event_id) DO NOTHING RETURNING event_id
"""


async def apply_stripe_event(event: dict[str, Any], services: PaymentServices) -> Outcome:
    """Apply a verified Stripe event at most once; raises RetryLater when it cannot apply yet."""
    handler = HANDLERS.get(event["type"])
    if handler is None:
        return Outcome.IGNORED
    try:
        async with transaction():
            if not await fetch(get_connection(), _RECORD, event["id"], event["type"]):
                raise Discard(Outcome.DUPLICATE)
            outcome = await handler(event["data"]["object"], f"stripe:{event['id']}", services)
            if outcome in (Outcome.IGNORED, Outcome.REJECTED):
                raise Discard(outcome)
    except Discard as discard:
        return discard.outcome
    return outcome
