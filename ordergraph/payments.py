"""Applying what Stripe tells us about payments.

`confirm_checkout` is the one confirmation, whether the news arrives by webhook or by asking
Stripe directly. A Stripe event is applied at most once: its id is recorded in the same
transaction as the change it causes, so a repeated delivery finds it and changes nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from tortoise.exceptions import IntegrityError

from ordergraph import mail
from ordergraph.db import transaction
from ordergraph.models import (
    Order,
    OrderItem,
    OrderStatus,
    PaymentStatus,
    PaymentTracker,
    ProcessedStripeEvent,
    User,
)
from ordergraph.order_state import change_order, lock_order
from ordergraph.stripe_gateway import CheckoutSession, session_from_stripe

log = logging.getLogger(__name__)
security_log = logging.getLogger("ordergraph.security")


class Outcome(StrEnum):
    APPLIED = "applied"
    UNCHANGED = "unchanged"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    REJECTED = "rejected"


class _Discard(Exception):
    """Roll back the event's transaction (its id included) and report `outcome`."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


def _order_id_of(session: CheckoutSession) -> str | None:
    raw = session.metadata.get("order_id")
    try:
        return str(uuid.UUID(raw)) if raw else None
    except ValueError:
        return None


async def confirm_checkout(session: CheckoutSession, *, actor: str) -> Outcome:
    """Apply a completed, paid Checkout Session to its order (inside a transaction)."""
    order_id = _order_id_of(session)
    if order_id is None:
        log.warning("checkout session %s carries no valid metadata.order_id", session.id)
        return Outcome.IGNORED
    order = await lock_order(order_id)
    if order is None:
        log.warning("checkout session %s names unknown order %s", session.id, order_id)
        return Outcome.IGNORED
    problem = None
    if session.metadata.get("user_id") != order.user_id:
        problem = f"metadata.user_id {session.metadata.get('user_id')!r} is not the order's owner"
    elif session.amount_total != order.total or session.currency != order.currency:
        problem = (
            f"paid {session.amount_total} {session.currency}, "
            f"the order is {order.total} {order.currency}"
        )
    elif order.stripe_checkout_session_id not in (None, session.id):
        problem = f"the order's session is {order.stripe_checkout_session_id}"
    if problem is not None:
        security_log.warning(
            "refused checkout session %s for order %s: %s", session.id, order.id, problem
        )
        return Outcome.REJECTED
    if session.payment_status != "paid":
        log.info("checkout session %s completed unpaid; waiting for the payment", session.id)
        return Outcome.IGNORED
    if order.payment_status == PaymentStatus.PAID or order.status != OrderStatus.PENDING_PAYMENT:
        return Outcome.UNCHANGED

    now = datetime.now(UTC)
    await change_order(
        order,
        status=OrderStatus.PAYMENT_CONFIRMED,
        payment_status=PaymentStatus.PAID,
        reason="payment received",
        actor=actor,
        fields={
            "paid_at": now,
            "shipping_address": session.shipping_address,
            "is_locked": True,
            "stripe_checkout_session_id": session.id,
            "stripe_payment_intent_id": session.payment_intent_id,
            "customer_email": session.customer_email,
        },
    )
    await PaymentTracker.create(
        order_id=order.id,
        provider="stripe",
        session_id=session.id,
        payment_intent_id=session.payment_intent_id,
        amount=session.amount_total,
        currency=order.currency,
        status="paid",
    )
    await _enqueue_receipt(order)
    return Outcome.APPLIED


async def _enqueue_receipt(order: Order) -> None:
    user = await User.get(id=order.user_id)
    recipient = user.email or order.customer_email
    if not recipient:
        log.warning("order %s has no email address to send its receipt to", order.id)
        return
    items = await OrderItem.filter(order_id=order.id).order_by("id")
    await mail.enqueue_email(
        dedupe_key=f"receipt:{order.id}",
        recipient=recipient,
        composed=mail.compose_receipt(order, list(items)),
        order=order,
    )


async def _on_session_completed(obj: dict[str, Any], actor: str) -> Outcome:
    return await confirm_checkout(session_from_stripe(obj), actor=actor)


EventHandler = Callable[[dict[str, Any], str], Awaitable[Outcome]]

HANDLERS: dict[str, EventHandler] = {
    "checkout.session.completed": _on_session_completed,
}


async def apply_stripe_event(event: dict[str, Any]) -> Outcome:
    """Apply a verified Stripe event at most once."""
    handler = HANDLERS.get(event["type"])
    if handler is None:
        return Outcome.IGNORED
    try:
        async with transaction():
            try:
                await ProcessedStripeEvent.create(event_id=event["id"], type=event["type"])
            except IntegrityError:
                raise _Discard(Outcome.DUPLICATE) from None
            outcome = await handler(event["data"]["object"], f"stripe:{event['id']}")
            if outcome in (Outcome.IGNORED, Outcome.REJECTED):
                raise _Discard(outcome)
    except _Discard as discard:
        return discard.outcome
    return outcome
