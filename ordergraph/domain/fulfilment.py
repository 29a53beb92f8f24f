"""Staff moving a paid order on: packed, shipped (with tracking), delivered, or refunded.

Each step is a state-machine transition and a short mail to the shopper, committed together.
The state machine refuses a step (INVALID_TRANSITION, nothing changed, no mail) for an order
whose payment is not PAID or PARTIALLY_REFUNDED: refunded, lost or still open in a dispute.
"""

from __future__ import annotations

from ordergraph.db import transaction
from ordergraph.domain.errors import BusinessError, ErrorCode, order_not_found
from ordergraph.domain.order_state import can_transition, change_order, lock_order
from ordergraph.domain.payments import Outcome, PaymentServices, apply_refund
from ordergraph.mail import messages as emails
from ordergraph.models import Order, OrderStatus, PaymentStatus


async def _advance(
    order_id: str,
    status: OrderStatus,
    *,
    actor: str,
    reason: str,
    fields: dict[str, str | None] | None = None,
) -> Order:
    async with transaction():
        order = await lock_order(order_id)
        if order is None:
            raise order_not_found()
        await change_order(order, status=status, reason=reason, actor=actor, fields=fields)
        composer = {
            OrderStatus.AWAITING_SHIPMENT: emails.compose_awaiting_shipment,
            OrderStatus.SHIPPED: emails.compose_shipped,
            OrderStatus.DELIVERED: emails.compose_delivered,
        }[status]
        await emails.email_shopper(
            order, dedupe_key=f"{status.value}:{order.id}", composed=composer(order)
        )
    return order


async def mark_awaiting_shipment(order_id: str, *, actor: str) -> Order:
    return await _advance(
        order_id, OrderStatus.AWAITING_SHIPMENT, actor=actor, reason="being packed"
    )


async def mark_shipped(
    order_id: str, *, tracking_number: str, carrier: str | None, actor: str
) -> Order:
    tracking_number = tracking_number.strip()
    carrier = (carrier or "").strip() or None
    if not 1 <= len(tracking_number) <= 128 or "\x00" in tracking_number:
        raise BusinessError.of(
            ErrorCode.INVALID_INPUT,
            "The tracking number must be 1 to 128 characters",
            field=("trackingNumber",),
        )
    if carrier is not None and (len(carrier) > 64 or "\x00" in carrier):
        raise BusinessError.of(
            ErrorCode.INVALID_INPUT, "The carrier must be at most 64 characters", field=("carrier",)
        )
    return await _advance(
        order_id,
        OrderStatus.SHIPPED,
        actor=actor,
        reason=f"shipped: {carrier or 'carrier'} {tracking_number}",
        fields={"tracking_number": tracking_number, "carrier": carrier},
    )


async def mark_delivered(order_id: str, *, actor: str) -> Order:
    return await _advance(order_id, OrderStatus.DELIVERED, actor=actor, reason="delivered")


REFUNDABLE = frozenset({PaymentStatus.PAID, PaymentStatus.PARTIALLY_REFUNDED})


async def refund_order(order_id: str, *, actor: str, services: PaymentServices) -> Order:
    """Refund what is left of the payment through Stripe, then record it at once.

    Stripe's `charge.refunded` for the same refund arrives later and changes nothing, because
    refunds are recorded by their running total.
    """
    order = await Order.filter(id=order_id).first()
    if order is None:
        raise order_not_found()
    if order.payment_status not in REFUNDABLE or not order.stripe_payment_intent_id:
        raise BusinessError.of(
            ErrorCode.INVALID_TRANSITION,
            f"A payment that is {order.payment_status.name} cannot be refunded",
        )
    if not can_transition(order.status, OrderStatus.REFUNDED):
        raise BusinessError.of(
            ErrorCode.INVALID_TRANSITION, f"An order that is {order.status.name} cannot be refunded"
        )
    remaining = order.total - order.amount_refunded
    refund = await services.gateway.create_refund(
        order.stripe_payment_intent_id,
        remaining,
        # Same order, same refunded-so-far: the same request, so a retry cannot refund twice.
        idempotency_key=f"refund-{order.id}-{order.amount_refunded}",
        reason=f"refund by {actor}",
    )
    async with transaction():
        locked = await lock_order(order_id)
        assert locked is not None
        outcome = await apply_refund(locked, order.amount_refunded + refund.amount, actor=actor)
    if outcome == Outcome.UNCHANGED:
        await locked.refresh_from_db()
    return locked
