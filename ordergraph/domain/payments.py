"""What a payment does to an order: confirmation, failure, cancellation, refunds.

`confirm_checkout` is the one confirmation, whether the news comes by webhook
(`stripe_events`), by the shopper's success page asking Stripe (`syncOrderPayment`) or by the
sweeper reconciling an overdue order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NoReturn

from ordergraph.db import transaction
from ordergraph.db.sql import Rider
from ordergraph.domain.discrepancies import Discrepancy, already_recorded, record_discrepancy
from ordergraph.domain.errors import BusinessError, ErrorCode, order_not_found
from ordergraph.domain.ids import parse_uuid
from ordergraph.domain.money import amount_problem, money_fields
from ordergraph.domain.order_state import (
    as_changed,
    can_transition,
    change_order,
    lock_order_and_lines,
)
from ordergraph.mail import messages as emails
from ordergraph.models import (
    Order,
    OrderItem,
    OrderStatus,
    PaymentStatus,
    PaymentTracker,
)
from ordergraph.settings import Settings
from ordergraph.stripe_gateway import PaymentProviderError, StripeGateway
from ordergraph.stripe_objects import CheckoutSession

log = logging.getLogger(__name__)
security_log = logging.getLogger("ordergraph.security")


class Outcome(StrEnum):
    APPLIED = "applied"
    UNCHANGED = "unchanged"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    REJECTED = "rejected"
    # Refused, and settled: the money went back and the finding is recorded.
    REFUSED = "refused"


class RetryLater(Exception):
    """The event cannot apply yet (or a provider call failed): roll back, let Stripe resend."""


@dataclass(frozen=True)
class PaymentServices:
    settings: Settings
    gateway: StripeGateway


class Discard(Exception):
    """Roll back the event's transaction (its id included) and report `outcome`."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


async def _named_order(session: CheckoutSession) -> tuple[Order, list[OrderItem]] | None:
    """The order the session names, locked, with its lines (the receipt's); None (logged)
    when it names none of ours."""
    order_id = parse_uuid(session.metadata.get("order_id"))
    if order_id is None:
        log.warning("checkout session %s carries no valid metadata.order_id", session.id)
        return None
    named = await lock_order_and_lines(str(order_id))
    if named is None:
        log.warning("checkout session %s names unknown order %s", session.id, order_id)
    return named


def _refusal(session: CheckoutSession, order: Order) -> str | None:
    """Why the session cannot pay for the order, or None when it is really the order's own."""
    if session.metadata.get("user_id") != order.user_id:
        return f"metadata.user_id {session.metadata.get('user_id')!r} is not the order's owner"
    money = amount_problem(session, order)
    if money is not None:
        return money
    if order.stripe_checkout_session_id not in (None, session.id):
        return f"the order's session is {order.stripe_checkout_session_id}"
    return None


async def order_of_session(session: CheckoutSession) -> Order | None:
    """The session's order, locked, if the session is really its own; None (logged) otherwise.

    A session that names an order it cannot pay for rolls its event back (`Discard`): no money
    moved with it. A paid one is settled instead, by `confirm_checkout`.
    """
    named = await _named_order(session)
    if named is None:
        return None
    order = named[0]
    problem = _refusal(session, order)
    if problem is not None:
        _reject(session, order, problem)
    return order


def _reject(session: CheckoutSession, order: Order, problem: str) -> NoReturn:
    security_log.warning(
        "refused checkout session %s for order %s: %s", session.id, order.id, problem
    )
    raise Discard(Outcome.REJECTED)


async def _give_back(
    session: CheckoutSession, amount: int, *, key: str, why: str, services: PaymentServices
) -> None:
    """Refund a session's payment at Stripe, once whatever the retries (`key`).

    Called inside the event's transaction, with the order locked, for at most the gateway's
    deadline: the refund and the order's change then commit or retry together, and Stripe's
    idempotency makes the retry refund nothing twice. A failure rolls the event back for
    Stripe (or the sweeper) to bring again.
    """
    if not session.payment_intent_id:
        raise RetryLater(f"the payment of session {session.id} has no payment intent yet")
    try:
        await services.gateway.create_refund(
            session.payment_intent_id, amount, idempotency_key=key, reason=why
        )
    except PaymentProviderError as exc:
        raise RetryLater(f"refund of session {session.id} ({why}) failed") from exc


async def refuse_payment(
    order: Order, session: CheckoutSession, problem: str, *, actor: str, services: PaymentServices
) -> Outcome:
    """Money Stripe took that the service cannot accept is never left standing: it is refunded
    at once (one refund per session, by idempotency key), the order it came for leaves
    PENDING_PAYMENT when the session was its own (its stock released), and the finding is
    recorded as a `PaymentDiscrepancy`. Runs inside the caller's transaction."""
    if await already_recorded(Discrepancy.REFUSED_PAYMENT, session_id=session.id):
        return Outcome.REFUSED  # refunded and recorded when it was first seen
    security_log.warning(
        "refused payment of session %s for order %s: %s", session.id, order.id, problem
    )
    amount = session.amount_total or 0
    await _give_back(
        session,
        amount,
        key=f"refused-payment-refund-{session.id}",
        why=f"payment refused: {problem}",
        services=services,
    )
    action = f"refunded {amount} {session.currency or ''}".strip()
    own = order.stripe_checkout_session_id in (None, session.id)
    if own and order.status == OrderStatus.PENDING_PAYMENT:
        await change_order(
            order,
            status=OrderStatus.PAYMENT_FAILED,
            payment_status=PaymentStatus.FAILED,
            reason=f"payment refused: {problem}"[:255],
            actor=actor,
            fields={"stripe_checkout_session_id": session.id},
        )
        await change_order(
            order,
            payment_status=PaymentStatus.REFUNDED,
            reason="refused payment refunded",
            actor=actor,
        )
        action += "; order failed, stock released"
        await emails.email_shopper(
            order,
            dedupe_key=f"refund:refused:{session.id}",
            composed=emails.compose_refund(
                order, amount, "We could not accept this payment and have refunded it."
            ),
        )
    await record_discrepancy(
        Discrepancy.REFUSED_PAYMENT,
        detail=problem,
        action=action,
        order_id=str(order.id),
        session_id=session.id,
    )
    return Outcome.REFUSED


def _payment_fields(session: CheckoutSession, order: Order) -> dict[str, Any]:
    return {
        "stripe_checkout_session_id": session.id,
        "stripe_payment_intent_id": session.payment_intent_id,
        "customer_email": session.customer_email,
        "shipping_address": session.shipping_address,
        **money_fields(session, order),
    }


async def _described(session: CheckoutSession, services: PaymentServices) -> CheckoutSession:
    """The session with its shipping rate's name and promotion code, asked of Stripe if need be;
    Stripe unreachable: the event is brought again later."""
    try:
        return await services.gateway.described(session)
    except PaymentProviderError as exc:
        raise RetryLater(f"the shipping rate or promotion code of {session.id} is unknown") from exc


async def confirm_checkout(
    session: CheckoutSession, *, actor: str, services: PaymentServices
) -> Outcome:
    """Apply a completed Checkout Session to its order (inside a transaction).

    Paid: the order is confirmed, locked, tracked and receipted; a late payment for an order
    that already gave its stock back is confirmed if the stock can be taken again, refunded at
    once if not. Unpaid (a delayed method): the payment is PROCESSING and the order keeps its
    stock until Stripe says how it ended.
    """
    named = await _named_order(session)
    if named is None or session.status != "complete":
        return Outcome.IGNORED
    order, lines = named
    problem = _refusal(session, order)
    if problem is not None:
        if session.payment_status != "paid":
            _reject(session, order, problem)
        return await refuse_payment(order, session, problem, actor=actor, services=services)
    if session.payment_status == "unpaid":
        if (
            order.status != OrderStatus.PENDING_PAYMENT
            or order.payment_status != PaymentStatus.PENDING
        ):
            return Outcome.UNCHANGED
        session = await _described(session, services)
        await change_order(
            order,
            payment_status=PaymentStatus.PROCESSING,
            reason="payment processing",
            actor=actor,
            fields=_payment_fields(session, order),
        )
        return Outcome.APPLIED
    if session.payment_status != "paid":
        return Outcome.IGNORED
    if order.paid_at is not None:
        return Outcome.UNCHANGED
    if order.status == OrderStatus.PENDING_PAYMENT or can_transition(
        order.status, OrderStatus.PAYMENT_CONFIRMED
    ):
        session = await _described(session, services)
    if order.status == OrderStatus.PENDING_PAYMENT:
        await _confirm(order, lines, session, actor=actor, reason="payment received")
    elif can_transition(order.status, OrderStatus.PAYMENT_CONFIRMED):
        try:
            reason = "late payment: stock reserved again"
            await _confirm(order, lines, session, actor=actor, reason=reason)
        except BusinessError as error:
            if error.code != ErrorCode.OUT_OF_STOCK:
                raise
            await _refund_late_payment(order, session, actor=actor, services=services)
    else:
        return Outcome.UNCHANGED
    return Outcome.APPLIED


async def _confirm(
    order: Order, lines: list[OrderItem], session: CheckoutSession, *, actor: str, reason: str
) -> None:
    # A late payment takes its stock again and, short of it, is refunded by the caller, so its
    # attempt must be undone alone (a savepoint); an order that still holds its stock cannot
    # fail that way, and saves the savepoint's two round trips.
    late = order.status != OrderStatus.PENDING_PAYMENT
    fields = {**_payment_fields(session, order), "paid_at": datetime.now(UTC), "is_locked": True}
    paid = as_changed(order, fields)  # for its receipt
    receipt = emails.compose_receipt(paid, lines)
    riders = [
        _tracker(order, session, "paid"),
        *await emails.shopper_mail_rider(paid, dedupe_key=f"receipt:{order.id}", composed=receipt),
    ]
    async with transaction(savepoint=late):
        await change_order(
            order,
            status=OrderStatus.PAYMENT_CONFIRMED,
            payment_status=PaymentStatus.PAID,
            reason=reason,
            actor=actor,
            fields=fields,
            riders=riders,
        )


_TRACKER_COLUMNS = (
    *("order_id", "provider", "session_id", "payment_intent_id", "amount", "currency", "status"),
    "created",
)


def _tracker(order: Order, session: CheckoutSession, status: str) -> Rider:
    """The payment's tracker row, to be written with the order's change."""
    return Rider(
        table="payment_trackers",
        columns=_TRACKER_COLUMNS,
        values=(
            order.id,
            "stripe",
            session.id,
            session.payment_intent_id,
            session.amount_total,
            order.currency,
            status,
        ),
        constants="now()",
        alone=lambda: _track(order, session, status),
    )


async def _track(order: Order, session: CheckoutSession, status: str) -> None:
    await PaymentTracker.create(
        order_id=order.id,
        provider="stripe",
        session_id=session.id,
        payment_intent_id=session.payment_intent_id,
        amount=session.amount_total,
        currency=order.currency,
        status=status,
    )


async def _refund_late_payment(
    order: Order, session: CheckoutSession, *, actor: str, services: PaymentServices
) -> None:
    """Money arrived for an order whose stock is gone: give it straight back, and say why."""
    reason = "Your payment arrived after the order had expired and the items sold out."
    # What Stripe charged (the order's total until then is its subtotal).
    charged = order.total if session.amount_total is None else session.amount_total
    await _give_back(
        session,
        charged,
        key=f"late-payment-refund-{order.id}",
        why="late payment, out of stock",
        services=services,
    )
    await change_order(
        order,
        payment_status=PaymentStatus.REFUNDED,
        reason="late payment refunded: out of stock",
        actor=actor,
        fields={
            **_payment_fields(session, order),
            "paid_at": datetime.now(UTC),
            "amount_refunded": charged,
        },
    )
    await _track(order, session, "refunded")
    await emails.email_shopper(
        order,
        dedupe_key=f"refund:{order.id}:{charged}",
        composed=emails.compose_refund(order, charged, reason),
    )


async def fail_payment(order: Order, *, actor: str) -> Outcome:
    """Stripe says the payment failed (a delayed method bounced): the order gives its stock
    back and the shopper hears of it. `order` is locked by the caller."""
    if order.status != OrderStatus.PENDING_PAYMENT or order.paid_at is not None:
        return Outcome.UNCHANGED
    await change_order(
        order,
        status=OrderStatus.PAYMENT_FAILED,
        payment_status=PaymentStatus.FAILED,
        reason="payment failed",
        actor=actor,
    )
    await emails.email_shopper(
        order,
        dedupe_key=f"payment-failed:{order.id}",
        composed=emails.compose_payment_failed(order),
    )
    return Outcome.APPLIED


async def cancel_pending(order: Order, *, reason: str, actor: str) -> bool:
    """Cancel an unpaid order and release its stock; False if it is no longer cancellable."""
    if order.status != OrderStatus.PENDING_PAYMENT or order.payment_status != PaymentStatus.PENDING:
        return False
    await change_order(
        order,
        status=OrderStatus.CANCELLED,
        payment_status=PaymentStatus.EXPIRED,
        reason=reason,
        actor=actor,
    )
    return True


async def sync_order_payment(
    order_id: str, *, user_id: str, staff: bool, services: PaymentServices
) -> Order:
    """The success page asks: apply what Stripe says of the order's session, now."""
    query = Order.filter(id=order_id)
    if not staff:
        query = query.filter(user_id=user_id)
    order = await query.first()
    if order is None:
        raise order_not_found()
    await sync_checkout(order, actor=f"user:{user_id}", services=services)
    await order.refresh_from_db()
    return order


async def sync_checkout(order: Order, *, actor: str, services: PaymentServices) -> Outcome:
    """Ask Stripe for the order's session and apply what it says (no webhook needed)."""
    if not order.stripe_checkout_session_id:
        return Outcome.UNCHANGED
    session = await services.gateway.retrieve_checkout_session(order.stripe_checkout_session_id)
    return await settle_session(session, actor=actor, services=services)


async def settle_session(
    session: CheckoutSession, *, actor: str, services: PaymentServices
) -> Outcome:
    """Apply what Stripe says of a session, in a transaction of its own, outside a webhook:
    a refund that Stripe could not make now is a provider error for the caller to retry."""
    try:
        async with transaction():
            return await confirm_checkout(session, actor=actor, services=services)
    except Discard as discard:
        return discard.outcome
    except RetryLater as exc:
        raise PaymentProviderError(str(exc), uncertain=True) from exc
