"""Staff moving a paid order on: packed, shipped (with tracking), delivered.

Each step is a state-machine transition and a short mail to the shopper, committed together.
The state machine refuses a step (INVALID_TRANSITION, nothing changed, no mail) for an order
whose payment is not PAID or PARTIALLY_REFUNDED: refunded, lost or still open in a dispute.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ordergraph.db import transaction
from ordergraph.domain.errors import BusinessError, ErrorCode, order_not_found
from ordergraph.domain.order_state import change_order, lock_order
from ordergraph.mail import messages as emails
from ordergraph.models import Order, OrderStatus


async def _advance(
    order_id: str,
    status: OrderStatus,
    *,
    actor: str,
    reason: str,
    fields: dict[str, Any] | None = None,
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
    return await _advance(
        order_id,
        OrderStatus.DELIVERED,
        actor=actor,
        reason="delivered",
        fields={"delivered_at": datetime.now(UTC)},
    )
