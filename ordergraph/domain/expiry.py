"""Giving back the stock of orders that will not be paid: shopper cancels, and the sweeper.

Before an order is cancelled its Stripe session is expired, so it can no longer be paid; and
before the sweeper cancels an overdue order it asks Stripe how the session ended, so an order
whose webhook was lost is confirmed rather than cancelled after the shopper paid.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from ordergraph import logs
from ordergraph.db import transaction
from ordergraph.domain.errors import BusinessError, ErrorCode, order_not_found
from ordergraph.domain.order_state import lock_order
from ordergraph.domain.payments import Outcome, PaymentServices, cancel_pending, sync_checkout
from ordergraph.models import Order, OrderStatus, PaymentStatus
from ordergraph.stripe_gateway import PaymentProviderError

log = logging.getLogger(__name__)

SWEEP_BATCH = 100


async def _expire_session(order: Order, services: PaymentServices) -> str:
    """Make the order's session unpayable; answer how Stripe says the session ended."""
    assert order.stripe_checkout_session_id
    try:
        session = await services.gateway.expire_checkout_session(order.stripe_checkout_session_id)
    except PaymentProviderError:
        # Expiring fails for a session that is no longer open: ask what became of it.
        session = await services.gateway.retrieve_checkout_session(order.stripe_checkout_session_id)
    return session.status or "unknown"


async def _cancel(order_id: str, *, reason: str, actor: str) -> Order | None:
    async with transaction():
        order = await lock_order(order_id)
        if order is None:
            return None
        await cancel_pending(order, reason=reason, actor=actor)
        return order


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
            # The shopper paid in the meantime: apply the payment instead of cancelling.
            await sync_checkout(order, actor=f"user:{user_id}", services=services)
            raise BusinessError.of(
                ErrorCode.ORDER_LOCKED, "The order was paid and cannot be cancelled"
            )
    cancelled = await _cancel(order_id, reason="cancelled by shopper", actor=f"user:{user_id}")
    assert cancelled is not None
    return cancelled


async def reconcile_overdue(order: Order, services: PaymentServices) -> Outcome:
    """Settle one order past its expiry: confirm it if Stripe took the money, else cancel it."""
    if order.stripe_checkout_session_id:
        try:
            synced = await sync_checkout(order, actor="sweeper", services=services)
            if synced == Outcome.APPLIED:
                return synced
            ended = await _expire_session(order, services)
        except PaymentProviderError:
            log.warning("sweeper: Stripe unreachable for order %s; trying next round", order.id)
            return Outcome.UNCHANGED
        if ended == "complete":
            return await sync_checkout(order, actor="sweeper", services=services)
    cancelled = await _cancel(str(order.id), reason="expired", actor="sweeper")
    return (
        Outcome.APPLIED
        if cancelled and cancelled.status == OrderStatus.CANCELLED
        else Outcome.UNCHANGED
    )


async def sweep_overdue_orders(services: PaymentServices, *, now: datetime | None = None) -> int:
    """One pass over unpaid orders past expiry plus grace; returns how many were settled.

    Safe with several processes sweeping at once: each order is re-checked under its row lock
    and every change goes through the state machine's version check.
    """
    cutoff = (now or datetime.now(UTC)) - timedelta(minutes=services.settings.expiry_grace_minutes)
    settled = 0
    seen: set[str] = set()
    while True:
        batch = [
            order
            for order in await Order.filter(
                status=OrderStatus.PENDING_PAYMENT,
                payment_status=PaymentStatus.PENDING,
                expires_at__lt=cutoff,
            )
            .order_by("expires_at")
            .limit(SWEEP_BATCH)
            if str(order.id) not in seen
        ]
        if not batch:
            return settled
        for order in batch:
            seen.add(str(order.id))
            with logs.about_order(str(order.id)):
                if await reconcile_overdue(order, services) == Outcome.APPLIED:
                    settled += 1


class Sweeper:
    """Runs `sweep_overdue_orders` every `SWEEP_INTERVAL_SECONDS` in the server process."""

    def __init__(self, services: PaymentServices) -> None:
        self.services = services
        self._stop = asyncio.Event()

    async def run(self) -> None:
        interval = self.services.settings.sweep_interval_seconds
        if interval <= 0:
            return
        while not self._stop.is_set():
            try:
                settled = await sweep_overdue_orders(self.services)
                if settled:
                    log.info("sweeper settled %d overdue orders", settled)
            except Exception:
                log.exception("sweeper pass failed; trying next round")
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=interval)
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stop.set()
