"""The order state machine: the one place where an order's status or payment status changes.

Every change is checked against `TRANSITIONS`, made with a conditional UPDATE on the order's
version (so two writers cannot both win), recorded as an `OrderStatusChange`, and announced to
subscribers after commit. Stock is released here and only here: on the one transition of an
order from a state that holds stock into one that does not, which can happen at most once.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from ordergraph import events
from ordergraph.db import transaction
from ordergraph.errors import BusinessError, ErrorCode
from ordergraph.inventory import release_stock
from ordergraph.models import Order, OrderItem, OrderStatus, OrderStatusChange, PaymentStatus

log = logging.getLogger(__name__)

S = OrderStatus

TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.PENDING_PAYMENT: frozenset({S.PAYMENT_CONFIRMED, S.CANCELLED, S.PAYMENT_FAILED}),
    S.PAYMENT_CONFIRMED: frozenset({S.AWAITING_SHIPMENT, S.REFUNDED}),
    S.AWAITING_SHIPMENT: frozenset({S.SHIPPED, S.REFUNDED}),
    S.SHIPPED: frozenset({S.DELIVERED}),
    S.DELIVERED: frozenset({S.REFUNDED}),
    S.CANCELLED: frozenset(),
    S.PAYMENT_FAILED: frozenset(),
    S.REFUNDED: frozenset(),
}

HOLDS_STOCK = frozenset(
    {S.PENDING_PAYMENT, S.PAYMENT_CONFIRMED, S.AWAITING_SHIPMENT, S.SHIPPED, S.DELIVERED}
)


def can_transition(current: OrderStatus, target: OrderStatus) -> bool:
    return target in TRANSITIONS[current]


async def lock_order(order_id: str) -> Order | None:
    """Read an order for change: on PostgreSQL the row stays locked until the transaction ends.

    (SQLite runs one transaction at a time, so there the lock is the transaction itself.)
    """
    return await Order.filter(id=order_id).select_for_update().first()


async def change_order(
    order: Order,
    *,
    status: OrderStatus | None = None,
    payment_status: PaymentStatus | None = None,
    reason: str,
    actor: str,
    fields: dict[str, Any] | None = None,
) -> Order:
    """Move `order` (read with `lock_order`) to a new status and/or payment status.

    Raises INVALID_TRANSITION, changing nothing, when the status change is not allowed.
    """
    old_status, old_payment = order.status, order.payment_status
    new_status = status or order.status
    new_payment = payment_status or order.payment_status
    if new_status != order.status and not can_transition(order.status, new_status):
        raise BusinessError.of(
            ErrorCode.INVALID_TRANSITION,
            f"An order that is {order.status.name} cannot become {new_status.name}",
        )
    if new_status == order.status and new_payment == order.payment_status:
        raise BusinessError.of(
            ErrorCode.INVALID_TRANSITION, f"The order is already {new_status.name}"
        )
    values: dict[str, Any] = dict(fields or {})
    values.update(
        status=new_status,
        payment_status=new_payment,
        version=order.version + 1,
        updated_at=datetime.now(UTC),
    )
    async with transaction():
        changed = await Order.filter(id=order.id, version=order.version).update(**values)
        if changed != 1:
            raise BusinessError.of(
                ErrorCode.INVALID_TRANSITION, "The order was changed by someone else; try again"
            )
        for name, value in values.items():
            setattr(order, name, value)
        await OrderStatusChange.create(
            order_id=order.id,
            status=new_status,
            payment_status=new_payment,
            reason=reason,
            actor=actor,
        )
        if old_status in HOLDS_STOCK and new_status not in HOLDS_STOCK:
            items = await OrderItem.filter(order_id=order.id).values_list("product_id", "quantity")
            await release_stock((str(p), q) for p, q in items)
        await events.announce(events.OrderEvent(str(order.id), order.version))
    log.info(
        "order %s: %s/%s -> %s/%s (%s, by %s)",
        order.id,
        old_status,
        old_payment,
        new_status,
        new_payment,
        reason,
        actor,
    )
    return order
