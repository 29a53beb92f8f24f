"""The order state machine: the one place where an order's status or payment status changes.

Every change is checked against the two transition tables, made with a conditional UPDATE on
the order's version (so two writers cannot both win), recorded as an `OrderStatusChange` with
its reason and actor, and announced to subscribers at commit.

Stock moves here and only here, by status:
- `HOLDS_STOCK` states keep the order's units reserved (taken out of `Product.stock`);
- `SHIPPED_STATES` have consumed them: they left the warehouse and never come back;
- every other state holds nothing.
Units are released on the one transition from a holding state to a state that holds nothing,
and reserved again on the one transition back (a late payment for an expired order), so they
can never be released or taken twice. A line refunded in part before shipping settles its own
units when it is refunded (`refunds.take_lines`: released, or written off when they are gone);
from then on the order holds, and may release, only the rest.

No fulfilment without money. Beside the two tables, the pair (status, payment status) obeys:
- an order enters a `FULFILMENT_STATES` status (being packed, shipped, delivered) only while
  its payment is `FUNDED` (PAID or PARTIALLY_REFUNDED). A fully refunded payment (a refund, or
  a dispute lost, which Stripe settles as a refund of the whole charge) cannot be shipped or
  delivered, and neither can a DISPUTED one while its dispute is open: staff wait for the
  outcome (won: PAID again, and fulfilment goes on; lost: see below). That holds for a parcel
  already in transit too: SHIPPED -> DELIVERED is refused while the payment is not funded.
  A payment may still change under an order that is already in one of these states (a
  dispute opening on a SHIPPED order): the rule is about moving the goods, not the money.
- a payment becomes REFUNDED only together with the order leaving every holding and
  fulfilment status, i.e. becoming REFUNDED (the callers, `payments.apply_refund` and the
  dispute-lost handler in `stripe_events`, do so whenever the table allows). Before shipping
  that releases the order's stock; after shipping nothing comes back, the goods are gone.
  So no order is ever left holding stock, or on its way to the shopper, with its money gone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ordergraph import events, logs, metrics
from ordergraph.db import AfterCommit, after_commit, get_connection, is_postgres, transaction
from ordergraph.db.sql import Rider, fetch, rider_ctes, select
from ordergraph.domain import order_read
from ordergraph.domain.errors import BusinessError, ErrorCode
from ordergraph.domain.inventory import release_stock, reserve_stock
from ordergraph.models import Order, OrderItem, OrderStatus, OrderStatusChange, PaymentStatus
from ordergraph.outgoing_webhooks.events import (
    PreparedEvent,
    change_event_type,
    event_cte,
    prepare_order_event,
    write_event,
)

log = logging.getLogger(__name__)

S = OrderStatus
P = PaymentStatus

TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.PENDING_PAYMENT: frozenset({S.PAYMENT_CONFIRMED, S.CANCELLED, S.PAYMENT_FAILED}),
    S.PAYMENT_CONFIRMED: frozenset({S.AWAITING_SHIPMENT, S.REFUNDED}),
    S.AWAITING_SHIPMENT: frozenset({S.SHIPPED, S.REFUNDED}),
    # Extension: a parcel lost in transit is refunded without ever being delivered.
    S.SHIPPED: frozenset({S.DELIVERED, S.REFUNDED}),
    S.DELIVERED: frozenset({S.REFUNDED}),
    # Extension: a payment that completes after the order expired or failed is kept when its
    # stock can be reserved again ("late payment"), instead of refunding a sale we can make.
    S.CANCELLED: frozenset({S.PAYMENT_CONFIRMED}),
    S.PAYMENT_FAILED: frozenset({S.PAYMENT_CONFIRMED}),
    S.REFUNDED: frozenset(),
}

PAYMENT_TRANSITIONS: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    P.PENDING: frozenset({P.PROCESSING, P.PAID, P.FAILED, P.EXPIRED}),
    P.PROCESSING: frozenset({P.PAID, P.FAILED}),
    P.PAID: frozenset({P.REFUNDED, P.PARTIALLY_REFUNDED, P.DISPUTED}),
    P.PARTIALLY_REFUNDED: frozenset({P.REFUNDED, P.DISPUTED}),
    P.DISPUTED: frozenset({P.PAID, P.REFUNDED, P.PARTIALLY_REFUNDED}),
    # A late payment is either kept (PAID) or given straight back (REFUNDED).
    P.FAILED: frozenset({P.PAID, P.REFUNDED}),
    P.EXPIRED: frozenset({P.PAID, P.REFUNDED}),
    P.REFUNDED: frozenset(),
}

HOLDS_STOCK = frozenset({S.PENDING_PAYMENT, S.PAYMENT_CONFIRMED, S.AWAITING_SHIPMENT})
SHIPPED_STATES = frozenset({S.SHIPPED, S.DELIVERED})

# No fulfilment without money (see the module's docstring).
FULFILMENT_STATES = frozenset({S.AWAITING_SHIPMENT, S.SHIPPED, S.DELIVERED})
FUNDED = frozenset({P.PAID, P.PARTIALLY_REFUNDED})


def can_transition(current: OrderStatus, target: OrderStatus) -> bool:
    return target in TRANSITIONS[current]


def can_change_payment(current: PaymentStatus, target: PaymentStatus) -> bool:
    return target in PAYMENT_TRANSITIONS[current]


def _holds_nothing(status: OrderStatus) -> bool:
    return status not in HOLDS_STOCK and status not in SHIPPED_STATES


def funding_problem(
    old_status: OrderStatus, new_status: OrderStatus, new_payment: PaymentStatus
) -> str | None:
    """Why the order may not be `new_status` with `new_payment`, or None when it may."""
    if new_status != old_status and new_status in FULFILMENT_STATES and new_payment not in FUNDED:
        return f"An order whose payment is {new_payment.name} cannot become {new_status.name}"
    if new_payment == P.REFUNDED and (new_status in HOLDS_STOCK or new_status in FULFILMENT_STATES):
        return f"An order whose payment is REFUNDED cannot stay {new_status.name}"
    return None


async def lock_order(order_id: str) -> Order | None:
    """Read an order for change: on PostgreSQL the row stays locked until the transaction ends.

    (SQLite runs one transaction at a time, so there the lock is the transaction itself.)
    The order is the subject of what this task logs from here on.
    """
    logs.bind_order(order_id)
    rows = await select(get_connection(), Order, "id = ?", order_id, for_update=True)
    return rows[0] if rows else None


async def lock_order_and_lines(order_id: str) -> tuple[Order, list[OrderItem]] | None:
    """`lock_order`, with the order's lines (`order_read.lock_with_lines`): on PostgreSQL one
    round trip, where a receipt read them with another."""
    logs.bind_order(order_id)
    return await order_read.lock_with_lines(order_id)


async def _order_lines(order: Order) -> list[tuple[str, int]]:
    """The units the order holds: a line's refunded units went back (or were written off) when
    they were refunded (`refunds.take_lines`), so they are not the order's to release."""
    items = await OrderItem.filter(order_id=order.id).values_list(
        "product_id", "quantity", "quantity_refunded"
    )
    return [(str(p), held) for p, quantity, refunded in items if (held := quantity - refunded)]


def _count_change(
    old_status: OrderStatus,
    new_status: OrderStatus,
    old_payment: PaymentStatus,
    new_payment: PaymentStatus,
) -> AfterCommit:
    async def count() -> None:
        if new_status != old_status:
            metrics.ORDER_TRANSITIONS.labels(old_status.name, new_status.name).inc()
        if new_payment != old_payment:
            metrics.PAYMENT_TRANSITIONS.labels(old_payment.name, new_payment.name).inc()

    return count


async def change_order(
    order: Order,
    *,
    status: OrderStatus | None = None,
    payment_status: PaymentStatus | None = None,
    reason: str,
    actor: str,
    fields: dict[str, Any] | None = None,
    riders: Sequence[Rider] = (),
) -> Order:
    """Move `order` (read with `lock_order`) to a new status and/or payment status, and write
    `riders` with it (a payment's tracker and receipt).

    Raises INVALID_TRANSITION, changing nothing, when a change is not in the tables or leaves
    an order to be fulfilled without its money (`funding_problem`), and OUT_OF_STOCK when an
    order that held nothing cannot take its units back.

    Each change adds exactly one history row with its version, so clients can tell the newer of
    two copies of an order by the length of its `history` (the reference success page does).
    """
    old_status, old_payment = order.status, order.payment_status
    new_status = status or old_status
    new_payment = payment_status or old_payment
    if new_status == old_status and new_payment == old_payment:
        raise BusinessError.of(
            ErrorCode.INVALID_TRANSITION, f"The order is already {new_status.name}"
        )
    if new_status != old_status and not can_transition(old_status, new_status):
        raise BusinessError.of(
            ErrorCode.INVALID_TRANSITION,
            f"An order that is {old_status.name} cannot become {new_status.name}",
        )
    if new_payment != old_payment and not can_change_payment(old_payment, new_payment):
        raise BusinessError.of(
            ErrorCode.INVALID_TRANSITION,
            f"A payment that is {old_payment.name} cannot become {new_payment.name}",
        )
    problem = funding_problem(old_status, new_status, new_payment)
    if problem is not None:
        raise BusinessError.of(ErrorCode.INVALID_TRANSITION, problem)
    values: dict[str, Any] = dict(fields or {})
    values.update(
        status=new_status,
        payment_status=new_payment,
        version=order.version + 1,
        updated_at=datetime.now(UTC),
    )
    async with transaction():
        if _holds_nothing(old_status) and new_status in HOLDS_STOCK:
            await reserve_stock(await _order_lines(order))
        event_type = change_event_type(old_status, new_status, old_payment, new_payment)
        event = await prepare_order_event(order, event_type, values)
        await _write_change(order, values, reason=reason, actor=actor, event=event, riders=riders)
        if old_status in HOLDS_STOCK and _holds_nothing(new_status):
            await release_stock(await _order_lines(order))
        after_commit(_count_change(old_status, new_status, old_payment, new_payment))
    _apply(order, values)
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


_CHANGE_AND_HISTORY = """
WITH changed AS (
    UPDATE orders SET {assignments} WHERE id = ? AND version = ?
    RETURNING id, status, payment_status
){event}
INSERT INTO order_status_changes (order_id, status, payment_status, reason, actor, at)
SELECT id, status, payment_status, ?, ?, ? FROM changed RETURNING id{announce}
"""


async def _write_change(
    order: Order,
    values: dict[str, Any],
    *,
    reason: str,
    actor: str,
    event: PreparedEvent | None = None,
    riders: Sequence[Rider] = (),
) -> None:
    """The order's new values, if its version is still the one read, its history row, the
    event for the shop's endpoints, if any, `riders`, and the announcement to subscribers.

    On PostgreSQL one statement of fixed shape (the UPDATE in a CTE, the history row and the
    event inserted from what it changed, the notification sent from it when PostgreSQL carries
    the order events): building the ORM's UPDATE cost more CPU than running it, and each
    statement more is a round trip more for every change.
    """
    hint = events.OrderEvent(str(order.id), values["version"])
    connection = get_connection()
    announce = events.announcement_sql(hint) if is_postgres(connection) else None
    if is_postgres(connection):
        names = sorted(values)
        meta = Order._meta
        assignments = ", ".join(f'"{meta.fields_db_projection[name]}" = ?' for name in names)
        stored = {name: meta.fields_map[name].to_db_value(values[name], order) for name in names}
        values["updated_at"] = stored["updated_at"]  # auto_now: what is stored, and the row's time
        cte, event_params = event_cte(event, source=" FROM changed")
        rider_sql, rider_params = rider_ctes(riders, "changed")
        params = [*(stored[name] for name in names), order.id, order.version, *event_params]
        params += rider_params
        params += [reason, actor, stored["updated_at"]]
        if announce is not None:
            params += announce[1]
        query = _CHANGE_AND_HISTORY.format(
            assignments=assignments,
            event=cte + rider_sql,
            announce=f", {announce[0]}" if announce is not None else "",
        )
        changed = len(await fetch(connection, query, *params))
    else:
        changed = await Order.filter(id=order.id, version=order.version).update(**values)
        if changed == 1:
            await OrderStatusChange.create(
                order_id=order.id,
                status=values.get("status", order.status),
                payment_status=values.get("payment_status", order.payment_status),
                reason=reason,
                actor=actor,
            )
            if event is not None:
                await write_event(event)
            for rider in riders:
                await rider.alone()
    if changed != 1:
        raise BusinessError.of(
            ErrorCode.INVALID_TRANSITION, "The order was changed by someone else; try again"
        )
    if announce is None:
        await events.announce(hint)


def _apply(order: Order, values: dict[str, Any]) -> None:
    for name, value in values.items():
        setattr(order, name, value)


def as_changed(order: Order, fields: dict[str, Any]) -> Order:
    """A copy of `order` with `fields` as a change will write them (what a mail written with
    the change shows); `order` itself is untouched until the change is written."""
    changed = order.clone(pk=order.id)
    _apply(changed, fields)
    return changed


async def note_change(
    order: Order, *, reason: str, actor: str, webhook_event: str | None = None
) -> Order:
    """Record a change that moves neither status (a return requested, confirmed, refused):
    one more history row with its version and an event to subscribers, as `change_order`
    does, so every change of an order is told the same way; `webhook_event` is what the
    shop's endpoints hear of it."""
    values: dict[str, Any] = {"version": order.version + 1, "updated_at": datetime.now(UTC)}
    async with transaction():
        event = None
        if webhook_event is not None:
            event = await prepare_order_event(order, webhook_event, values)
        await _write_change(order, values, reason=reason, actor=actor, event=event)
    _apply(order, values)
    log.info("order %s: %s (by %s)", order.id, reason, actor)
    return order
