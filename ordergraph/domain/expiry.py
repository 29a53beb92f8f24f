"""Giving back the stock of orders that will not be paid: shopper cancels, and the sweeper.

Before an order is cancelled its Stripe session is expired, so it can no longer be paid; and
before the sweeper cancels an overdue order it asks Stripe how the session ended, so an order
whose webhook was lost is confirmed rather than cancelled after the shopper paid.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from tortoise.expressions import Q

from ordergraph import logs
from ordergraph.db import transaction
from ordergraph.domain.checkout import session_request, undo_checkout
from ordergraph.domain.discrepancies import Discrepancy, record_discrepancy
from ordergraph.domain.errors import BusinessError, ErrorCode, order_not_found
from ordergraph.domain.order_state import lock_order
from ordergraph.domain.payments import (
    Outcome,
    PaymentServices,
    cancel_pending,
    fail_payment,
    sync_checkout,
)
from ordergraph.models import Order, OrderItem, OrderStatus, PaymentStatus
from ordergraph.settings import Settings
from ordergraph.stripe_gateway import PaymentProviderError

log = logging.getLogger(__name__)

SWEEP_BATCH = 100
# A checkout whose session is still unknown this long after its order was committed was cut
# short (its Stripe call gives up long before).
INTERRUPTED_AFTER = timedelta(minutes=2)
# How long a sweeper's claim on an order lasts: no other sweeper asks Stripe about it before.
CLAIM = timedelta(minutes=1)
CLAIM_PROCESSING = timedelta(minutes=30)


async def _expire_session(order: Order, services: PaymentServices) -> str:
    """Make the order's session unpayable; answer how Stripe says the session ended."""
    assert order.stripe_checkout_session_id
    try:
        session = await services.gateway.expire_checkout_session(order.stripe_checkout_session_id)
    except PaymentProviderError:
        # Expiring fails for a session that is no longer open: ask what became of it.
        session = await services.gateway.retrieve_checkout_session(order.stripe_checkout_session_id)
    return session.status or "unknown"


async def _cancel(order_id: str, *, reason: str, actor: str) -> bool:
    """Cancel the order if it is still unpaid and pending; whether this call cancelled it."""
    async with transaction():
        order = await lock_order(order_id)
        return order is not None and await cancel_pending(order, reason=reason, actor=actor)


async def cancel_order(order_id: str, *, user_id: str, services: PaymentServices) -> Order:
    """The shopper cancels an unpaid order: expire its session first, then release its stock."""
    order = await Order.filter(id=order_id, user_id=user_id).first()
    if order is None:
        raise order_not_found()
    if order.is_locked or order.paid_at is not None:
        raise BusinessError.of(ErrorCode.ORDER_LOCKED, "A paid order cannot be cancelled")
    if order.status != OrderStatus.PENDING_PAYMENT or order.payment_status != PaymentStatus.PENDING:
        raise BusinessError.of(
            ErrorCode.INVALID_TRANSITION,
            f"An order that is {order.status.name} with a payment {order.payment_status.name} "
            "cannot be cancelled",
        )
    if order.stripe_checkout_session_id:
        ended = await _expire_session(order, services)
        if ended == "complete":
            # The shopper paid in the meantime: apply the payment instead of cancelling. A
            # payment the service refuses is refunded and fails the order, which is then as
            # settled as a cancelled one.
            synced = await sync_checkout(order, actor=f"user:{user_id}", services=services)
            if synced == Outcome.REFUSED:
                await order.refresh_from_db()
                return order
            raise BusinessError.of(
                ErrorCode.ORDER_LOCKED, "The order was paid and cannot be cancelled"
            )
    await _cancel(order_id, reason="cancelled by shopper", actor=f"user:{user_id}")
    return await Order.get(id=order_id)


async def _settle_missing(order: Order) -> Outcome:
    """Stripe does not know the order's session: nobody can pay it, so the order is cancelled
    and its stock released (a definite answer, not an outage)."""
    if not await _cancel(str(order.id), reason="session unknown at Stripe", actor="sweeper"):
        return Outcome.UNCHANGED
    await record_discrepancy(
        Discrepancy.UNKNOWN_AT_STRIPE,
        detail="Stripe answered resource_missing for the order's Checkout Session",
        action="cancelled, stock released",
        order_id=str(order.id),
        session_id=order.stripe_checkout_session_id,
    )
    return Outcome.APPLIED


async def _settle_processing(order: Order, services: PaymentServices) -> Outcome:
    """A delayed payment whose result event was lost: ask its payment intent how it ended."""
    intent = order.stripe_payment_intent_id  # stored when the session completed unpaid
    payment = await services.gateway.retrieve_payment_intent(intent) if intent else None
    if payment is None or payment.status not in ("requires_payment_method", "canceled"):
        return Outcome.UNCHANGED  # still processing (bank transfers take days), or paid
    async with transaction():
        locked = await lock_order(str(order.id))
        if locked is None:
            return Outcome.UNCHANGED
        return await fail_payment(locked, actor="sweeper")


async def _settle_interrupted(order: Order, services: PaymentServices) -> Outcome:
    """A checkout cut short between committing the order and storing its session.

    The same request, sent again with the same idempotency key, answers with the session
    Stripe made for it (or makes it now). Nobody was given that session's client secret, so
    it is expired; if it was paid already the order is confirmed, else the order is cancelled
    and its lines go back to the shopper's cart.
    """
    items = await OrderItem.filter(order_id=order.id).order_by("id")
    request = session_request(order, list(items), services.settings)
    try:
        session = await services.gateway.create_checkout_session(request)
    except PaymentProviderError as exc:
        if exc.uncertain:
            raise
        session = None  # refused outright: Stripe holds no session under this key
    if session is not None:
        await Order.filter(id=order.id, stripe_checkout_session_id__isnull=True).update(
            stripe_checkout_session_id=session.id
        )
        order.stripe_checkout_session_id = session.id
        # A replay answers as Stripe first did ("open"): expiring tells how it stands now.
        if await _expire_session(order, services) == "complete":
            return await sync_checkout(order, actor="sweeper", services=services)
    await undo_checkout(str(order.id), "checkout interrupted")
    return Outcome.APPLIED


async def reconcile_overdue(order: Order, services: PaymentServices) -> Outcome:
    """Settle one unsettled order: confirm it if Stripe took the money, fail it if Stripe says
    the payment failed, else cancel it and release its stock."""
    try:
        if not order.stripe_checkout_session_id:
            return await _settle_interrupted(order, services)
        synced = await sync_checkout(order, actor="sweeper", services=services)
        if synced == Outcome.REFUSED:
            return synced
        await order.refresh_from_db()
        if order.status != OrderStatus.PENDING_PAYMENT:  # settled, by this sync or meanwhile
            return synced if synced == Outcome.APPLIED else Outcome.UNCHANGED
        if order.payment_status == PaymentStatus.PROCESSING:  # perhaps since this very sync
            failed = await _settle_processing(order, services)
            return Outcome.APPLIED if Outcome.APPLIED in (synced, failed) else Outcome.UNCHANGED
        if synced == Outcome.APPLIED:
            return synced
        ended = await _expire_session(order, services)
    except PaymentProviderError as exc:
        if exc.missing:
            return await _settle_missing(order)
        log.warning("sweeper: Stripe unreachable for order %s; trying next round", order.id)
        return Outcome.UNCHANGED
    if ended == "complete":
        return await sync_checkout(order, actor="sweeper", services=services)
    cancelled = await _cancel(str(order.id), reason="expired", actor="sweeper")
    return Outcome.APPLIED if cancelled else Outcome.UNCHANGED


def _unsettled(now: datetime, settings: Settings) -> Q:
    """Orders the sweeper must settle: unpaid past their expiry (and grace), and checkouts
    that a crash left without a session; only those no other sweeper has claimed."""
    overdue = now - timedelta(minutes=settings.expiry_grace_minutes)
    return (
        Q(status=OrderStatus.PENDING_PAYMENT)
        & (Q(next_check_at__isnull=True) | Q(next_check_at__lte=now))
        & (
            Q(
                payment_status__in=[PaymentStatus.PENDING, PaymentStatus.PROCESSING],
                expires_at__lt=overdue,
            )
            | Q(
                payment_status=PaymentStatus.PENDING,
                stripe_checkout_session_id__isnull=True,
                created_at__lt=now - INTERRUPTED_AFTER,
            )
        )
    )


async def _claim(order: Order, now: datetime) -> bool:
    """Take the order for this sweeper: one conditional UPDATE, so that of many processes
    sweeping at once exactly one asks Stripe about it. The claim lapses by itself, so an
    order that could not be settled (Stripe away, a payment still processing) is looked at
    again later, by whichever sweeper comes first."""
    lease = CLAIM_PROCESSING if order.payment_status == PaymentStatus.PROCESSING else CLAIM
    claimed = await Order.filter(
        Q(next_check_at__isnull=True) | Q(next_check_at__lte=now), id=order.id
    ).update(next_check_at=datetime.now(UTC) + lease)  # from now: a pass may be slow
    return claimed == 1


async def sweep_overdue_orders(services: PaymentServices, *, now: datetime | None = None) -> int:
    """One pass over unsettled orders; returns how many were settled.

    Safe with several processes sweeping at once: each order is claimed by one of them, then
    re-checked under its row lock, and every change goes through the state machine.
    """
    now = now or datetime.now(UTC)
    settled = 0
    seen: set[str] = set()
    while True:
        batch = [
            order
            for order in await Order.filter(_unsettled(now, services.settings))
            .order_by("expires_at")
            .limit(SWEEP_BATCH)
            if str(order.id) not in seen
        ]
        if not batch:
            return settled
        for order in batch:
            seen.add(str(order.id))
            if not await _claim(order, now):
                continue
            with logs.about_order(str(order.id)):
                if await reconcile_overdue(order, services) in (Outcome.APPLIED, Outcome.REFUSED):
                    settled += 1
