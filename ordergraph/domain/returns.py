"""Returns and the statutory withdrawal (EU: Art. 11a of the Consumer Rights Directive).

A shopper, guest or not, withdraws in two steps: `request_withdrawal` names what goes back
(every unit still theirs when nothing is named), `confirm_withdrawal` is the declaration, mailed
back with its time as the acknowledgement on a durable medium. Before the goods leave, the
confirmation refunds their share and releases their units at once. Once they have left, it
opens a return that staff finish: `receive_return` refunds (and restocks, when asked), or
`reject_return` says why not, by mail.

The period runs from delivery for `WITHDRAWAL_DAYS` (0: no withdrawals); an order in transit
can be withdrawn from too, since the period has not even begun. Each step is a change of the
order told as every other (`note_change`: a history row, an event), taken with the order
locked, and repeating a step that is done answers what it did.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from ordergraph.db import get_connection, transaction
from ordergraph.db.sql import fetch
from ordergraph.domain.discrepancies import LEFT_FOR_STAFF, Discrepancy, record_discrepancy
from ordergraph.domain.errors import BusinessError, ErrorCode, order_not_found
from ordergraph.domain.order_state import HOLDS_STOCK, lock_order, note_change
from ordergraph.domain.payments import PaymentServices
from ordergraph.domain.refunds import (
    REFUNDABLE,
    Lines,
    RefundRequest,
    checked_lines,
    checked_reason,
    prepare_refund,
    settle_refund,
)
from ordergraph.mail import messages as emails
from ordergraph.models import (
    Order,
    OrderItem,
    OrderRefund,
    OrderReturn,
    OrderStatus,
    RefundStatus,
    ReturnStatus,
)
from ordergraph.outgoing_webhooks.events import (
    RETURN_CONFIRMED,
    RETURN_RECEIVED,
    RETURN_REJECTED,
    RETURN_REQUESTED,
)
from ordergraph.settings import Settings
from ordergraph.stripe_gateway import PaymentProviderError

log = logging.getLogger(__name__)

WITHDRAWABLE = frozenset(
    {
        OrderStatus.PAYMENT_CONFIRMED,
        OrderStatus.AWAITING_SHIPMENT,
        OrderStatus.SHIPPED,
        OrderStatus.DELIVERED,
    }
)


def withdrawal_deadline(order: Order, settings: Settings) -> datetime | None:
    if order.delivered_at is None or settings.withdrawal_days == 0:
        return None
    return order.delivered_at + timedelta(days=settings.withdrawal_days)


def withdrawal_problem(order: Order, settings: Settings, now: datetime) -> BusinessError | None:
    """Why the shopper may not withdraw from `order` now, or None."""
    if settings.withdrawal_days == 0:
        return BusinessError.of(
            ErrorCode.WITHDRAWAL_PERIOD_OVER, "This shop takes withdrawals by other means"
        )
    if order.status not in WITHDRAWABLE or order.payment_status not in REFUNDABLE:
        return BusinessError.of(
            ErrorCode.INVALID_TRANSITION,
            f"An order that is {order.status.name} with a payment that is "
            f"{order.payment_status.name} cannot be withdrawn from",
        )
    deadline = withdrawal_deadline(order, settings)
    if deadline is not None and now > deadline:
        return BusinessError.of(
            ErrorCode.WITHDRAWAL_PERIOD_OVER,
            f"The withdrawal period of this order ended at {deadline.isoformat()}",
        )
    return None


def free_units(item: OrderItem) -> int:
    """Units of a line that are still the shopper's: not refunded, not on their way back."""
    return item.quantity - item.quantity_refunded - item.quantity_returning


def _too_many(item: OrderItem) -> BusinessError:
    return BusinessError.of(
        ErrorCode.INVALID_INPUT,
        f"Only {free_units(item)} of {item.product_name} can still be withdrawn",
        field=("lines",),
    )


def can_withdraw(order: Order, items: Sequence[OrderItem], settings: Settings) -> bool:
    if withdrawal_problem(order, settings, datetime.now(UTC)) is not None:
        return False
    return any(free_units(item) > 0 for item in items)


def _pairs(order_return: OrderReturn) -> list[tuple[str, int]]:
    return [(str(line["product_id"]), int(line["quantity"])) for line in order_return.lines]


async def _locked_return(return_id: str) -> tuple[OrderReturn, Order]:
    """The return and its order, the order locked, the return read again under that lock."""
    found = await OrderReturn.get_or_none(id=return_id)
    order = await lock_order(str(found.order_id)) if found is not None else None
    if found is None or order is None:
        raise BusinessError.of(ErrorCode.NOT_FOUND, "No such return", field=("returnId",))
    await found.refresh_from_db()
    return found, order


async def return_order_id(return_id: str) -> str | None:
    found = await OrderReturn.filter(id=return_id).only("order_id").first()
    return str(found.order_id) if found is not None else None


async def _hold_lines(chosen: Sequence[tuple[OrderItem, int]], *, hold: bool) -> None:
    """Units on their way back (`hold`), or no longer (a return refused): each unit is either
    the shopper's, returning, or refunded, never two of them at once."""
    connection = get_connection()
    for item, quantity in chosen:
        if hold:
            sql = (
                "UPDATE order_items SET quantity_returning = quantity_returning + ? WHERE id = ? "
                "AND quantity_refunded + quantity_returning + ? <= quantity RETURNING id"
            )
            args = (quantity, item.id, quantity)
        else:
            sql = (
                "UPDATE order_items SET quantity_returning = quantity_returning - ? WHERE id = ? "
                "AND quantity_returning >= ? RETURNING id"
            )
            args = (quantity, item.id, quantity)
        if not await fetch(connection, sql, *args):
            raise _too_many(item)


async def _chosen(order: Order, lines: Lines) -> list[tuple[OrderItem, int]]:
    items = list(await OrderItem.filter(order_id=order.id).order_by("id"))
    return checked_lines(items, lines)


async def request_withdrawal(
    order_id: str, lines: Lines | None, reason: str | None, *, actor: str, settings: Settings
) -> tuple[OrderReturn, Order]:
    reason = checked_reason(reason)
    async with transaction():
        order = await lock_order(order_id)
        if order is None:
            raise order_not_found()
        problem = withdrawal_problem(order, settings, datetime.now(UTC))
        if problem is not None:
            raise problem
        items = list(await OrderItem.filter(order_id=order.id).order_by("id"))
        if lines is None:
            chosen = [(item, free_units(item)) for item in items if free_units(item) > 0]
        else:
            chosen = checked_lines(items, lines)
        for item, quantity in chosen:
            if quantity > free_units(item):
                raise _too_many(item)
        if not chosen:
            raise BusinessError.of(
                ErrorCode.INVALID_INPUT, "Nothing of this order is left to withdraw from"
            )
        order_return = await OrderReturn.create(
            order_id=order.id,
            is_withdrawal=True,
            reason=reason,
            lines=[
                {"product_id": str(i.product_id), "product_name": i.product_name, "quantity": q}
                for i, q in chosen
            ],
        )
        await note_change(
            order, reason="withdrawal requested", actor=actor, webhook_event=RETURN_REQUESTED
        )
    return order_return, order


async def confirm_withdrawal(
    return_id: str, *, actor: str, settings: Settings, services: PaymentServices
) -> tuple[OrderReturn, Order]:
    """The shopper's declaration. It stands once committed, whatever Stripe then does with the
    refund it starts before shipping: one Stripe does not answer is finished later (the same
    request again, or the sweeper); one Stripe refuses is left for staff as a discrepancy."""
    async with transaction():
        order_return, order = await _locked_return(return_id)
        if order_return.status == ReturnStatus.REJECTED:
            raise BusinessError.of(ErrorCode.INVALID_TRANSITION, "This return was declined")
        if order_return.status == ReturnStatus.REQUESTED:
            problem = withdrawal_problem(order, settings, datetime.now(UTC))
            if problem is not None:
                raise problem
            await _hold_lines(await _chosen(order, _pairs(order_return)), hold=True)
            order_return.status = ReturnStatus.CONFIRMED
            order_return.confirmed_at = datetime.now(UTC)
            await order_return.save()
            await emails.email_shopper(
                order,
                dedupe_key=f"withdrawal:{order_return.id}",
                composed=emails.compose_withdrawal_confirmed(order, order_return),
            )
            await note_change(
                order, reason="withdrawal confirmed", actor=actor, webhook_event=RETURN_CONFIRMED
            )
            if order.status in HOLDS_STOCK:  # nothing has left: refund and release at once
                await _prepare_refund(order_return, order, restock=True, actor=actor)
        pending = await _pending_refund(order_return)
    if pending is not None:
        try:
            await settle_refund(pending, services)
        except PaymentProviderError:
            log.warning("refund of withdrawal %s pending: Stripe did not answer", return_id)
        except BusinessError as refused:
            await record_discrepancy(
                Discrepancy.REFUND_REFUSED,
                detail=f"withdrawal {return_id}: {refused.problems[0].message}",
                action=LEFT_FOR_STAFF,
                order_id=str(order.id),
            )
    return await _reread(order_return)


async def _prepare_refund(
    order_return: OrderReturn, order: Order, *, restock: bool, actor: str
) -> OrderRefund:
    request = RefundRequest(
        lines=tuple(_pairs(order_return)), restock=restock, reason=f"return {order_return.id}"
    )
    return await prepare_refund(
        order,
        request,
        key=f"return:{order_return.id}",
        actor=actor,
        return_id=str(order_return.id),
    )


async def _pending_refund(order_return: OrderReturn) -> int | None:
    found = await OrderRefund.filter(return_id=order_return.id, status=RefundStatus.PENDING).first()
    return found.id if found is not None else None


async def _reread(order_return: OrderReturn) -> tuple[OrderReturn, Order]:
    await order_return.refresh_from_db()
    return order_return, await Order.get(id=order_return.order_id)


async def receive_return(
    return_id: str, *, restock: bool, actor: str, services: PaymentServices
) -> tuple[OrderReturn, Order]:
    """Staff have the goods back: RECEIVED, then refunded (Stripe's refusal or silence is the
    answer's error; the same request again finishes or retries the refund)."""
    async with transaction():
        order_return, order = await _locked_return(return_id)
        if order_return.status == ReturnStatus.REFUNDED:
            return order_return, order
        if order_return.status not in (ReturnStatus.CONFIRMED, ReturnStatus.RECEIVED):
            raise BusinessError.of(
                ErrorCode.INVALID_TRANSITION,
                f"A return that is {order_return.status.name} cannot be received",
            )
        if order_return.status == ReturnStatus.CONFIRMED:
            order_return.status = ReturnStatus.RECEIVED
            order_return.received_at = datetime.now(UTC)
            await order_return.save()
            await note_change(
                order, reason="return received", actor=actor, webhook_event=RETURN_RECEIVED
            )
        refund = await _prepare_refund(order_return, order, restock=restock, actor=actor)
    try:
        await settle_refund(refund.id, services)
    except PaymentProviderError as exc:
        raise BusinessError.of(
            ErrorCode.PAYMENT_PROVIDER_ERROR,
            "Stripe did not answer in time. The refund is pending and will be completed; "
            "asking again is safe.",
        ) from exc
    return await _reread(order_return)


async def reject_return(return_id: str, reason: str, *, actor: str) -> tuple[OrderReturn, Order]:
    why = checked_reason(reason)
    if why is None:
        raise BusinessError.of(ErrorCode.INVALID_INPUT, "Say why", field=("reason",))
    async with transaction():
        order_return, order = await _locked_return(return_id)
        if order_return.status == ReturnStatus.REJECTED:
            return order_return, order
        if order_return.status not in (ReturnStatus.REQUESTED, ReturnStatus.CONFIRMED):
            raise BusinessError.of(
                ErrorCode.INVALID_TRANSITION,
                f"A return that is {order_return.status.name} cannot be declined",
            )
        if order_return.status == ReturnStatus.CONFIRMED:
            await _hold_lines(await _chosen(order, _pairs(order_return)), hold=False)
        order_return.status = ReturnStatus.REJECTED
        order_return.rejection_reason = why
        await order_return.save()
        await emails.email_shopper(
            order,
            dedupe_key=f"return-rejected:{order_return.id}",
            composed=emails.compose_return_rejected(order, order_return),
        )
        await note_change(
            order,
            reason=f"return declined: {why}"[:255],
            actor=actor,
            webhook_event=RETURN_REJECTED,
        )
    return order_return, order
