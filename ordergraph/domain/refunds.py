"""Refunds, whole or in part: by amount, or by lines at their share of what Stripe charged.

A refund is one Stripe refund per request, in two steps. First, in the caller's transaction
with the order locked, `prepare_refund` checks the request, takes its lines and writes an
`OrderRefund` PENDING with the amount, keyed by the request (`RefundRequest.key`: the same
request again, a retry or a double click, finds that row). Then `settle_refund` asks Stripe,
outside any transaction, always with the same idempotency key and amount, and records the answer:
restock, the return refunded, the payment's running total. A refund whose answer was lost (a
timeout, a crash) stays PENDING until the same request comes again or the sweeper settles it
(`settle_pending_refunds`); one Stripe refuses is undone, its lines given back. To refund the
same amount again on purpose, staff say why in other words (the reason is part of the key).

A line's ledger (`OrderItem.quantity_refunded`, `quantity_restocked`, `quantity_returning`)
moves only by conditional UPDATEs, so each unit is refunded, and given back to stock, at most
once whatever runs at the same time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ordergraph.db import get_connection, transaction
from ordergraph.db.sql import fetch
from ordergraph.domain.errors import BusinessError, ErrorCode, order_not_found
from ordergraph.domain.order_state import can_transition, change_order, lock_order, note_change
from ordergraph.domain.payments import Outcome, PaymentServices
from ordergraph.mail import messages as emails
from ordergraph.models import (
    Order,
    OrderItem,
    OrderRefund,
    OrderReturn,
    OrderStatus,
    PaymentStatus,
    RefundStatus,
    ReturnStatus,
    StockMovement,
)
from ordergraph.outgoing_webhooks.events import ORDER_REFUNDED
from ordergraph.settings import Settings
from ordergraph.stripe_gateway import PaymentProviderError
from ordergraph.stripe_objects import Refund

log = logging.getLogger(__name__)

REFUNDABLE = frozenset({PaymentStatus.PAID, PaymentStatus.PARTIALLY_REFUNDED})
MAX_REASON = 255
MAX_LINES = 100

Lines = Sequence[tuple[str, int]]


@dataclass(frozen=True)
class RefundRequest:
    """What staff (or a return) asked for: an amount, lines (product id, units), or neither
    (the whole remainder); `restock` puts the lines' units back on sale."""

    amount: int | None = None
    # None: no lines named; () is refused (an empty list is a mistake, not "everything").
    lines: tuple[tuple[str, int], ...] | None = None
    restock: bool = False
    reason: str | None = None

    def key(self, order_id: str) -> str:
        made_of = [order_id, self.amount, sorted(self.lines or ()), self.restock, self.reason]
        return hashlib.sha256(json.dumps(made_of).encode()).hexdigest()


def _bad(message: str, field: str) -> BusinessError:
    return BusinessError.of(ErrorCode.INVALID_INPUT, message, field=(field,))


def checked_reason(reason: str | None) -> str | None:
    reason = (reason or "").strip() or None
    if reason is not None and (len(reason) > MAX_REASON or "\x00" in reason):
        raise _bad(f"The reason must be at most {MAX_REASON} characters", "reason")
    return reason


def checked_lines(items: Sequence[OrderItem], lines: Lines) -> list[tuple[OrderItem, int]]:
    """Each named product a line of the order, named once, with at least one unit."""
    if len(lines) > MAX_LINES:
        raise _bad(f"At most {MAX_LINES} lines", "lines")
    by_product = {str(item.product_id): item for item in items}
    chosen: list[tuple[OrderItem, int]] = []
    for product_id, quantity in lines:
        item = by_product.pop(product_id, None)
        if item is None:
            raise _bad(f"{product_id} is not a line of this order (or is named twice)", "lines")
        if quantity < 1:
            raise _bad("Each line needs at least one unit", "lines")
        chosen.append((item, quantity))
    return chosen


def share_of_lines(order: Order, items: Sequence[OrderItem], chosen: Lines) -> int:
    """What `chosen` units are worth of what Stripe charged: the charge less shipping, spread
    over the units by their price (so discount and tax are shared the same way), and the
    shipping with the last units refunded. Counted cumulatively over every unit refunded by
    line so far, so that refunding every line, in any steps, gives back exactly the total."""
    weight = sum(item.unit_price * item.quantity for item in items)
    before = sum(item.unit_price * item.quantity_refunded for item in items)
    price = {str(item.product_id): item.unit_price for item in items}
    after = before + sum(price[product_id] * quantity for product_id, quantity in chosen)
    goods = order.total - order.shipping_cost
    if weight == 0:
        return 0
    share = goods * after // weight - goods * before // weight
    return share + (order.shipping_cost if after == weight else 0)


async def take_lines(chosen: Sequence[tuple[OrderItem, int]], *, returning: bool) -> None:
    """Count the units as refunded: free ones (not refunded, not in a confirmed return), or,
    for a return, its own returning units."""
    connection = get_connection()
    for item, quantity in chosen:
        if returning:
            sql = (
                "UPDATE order_items SET quantity_refunded = quantity_refunded + ?, "
                "quantity_returning = quantity_returning - ? WHERE id = ? "
                "AND quantity_returning >= ? RETURNING id"
            )
            args: tuple[int, ...] = (quantity, quantity, item.id, quantity)
        else:
            sql = (
                "UPDATE order_items SET quantity_refunded = quantity_refunded + ? WHERE id = ? "
                "AND quantity_refunded + quantity_returning + ? <= quantity RETURNING id"
            )
            args = (quantity, item.id, quantity)
        if not await fetch(connection, sql, *args):
            free = item.quantity - item.quantity_refunded - item.quantity_returning
            raise _bad(
                f"Only {free} of {item.product_name} can still be refunded, {quantity} asked",
                "lines",
            )
        item.quantity_refunded += quantity
        if returning:
            item.quantity_returning -= quantity


async def give_lines_back(chosen: Sequence[tuple[OrderItem, int]], *, returning: bool) -> None:
    """Undo `take_lines` for a refund Stripe refused."""
    connection = get_connection()
    back = ", quantity_returning = quantity_returning + ?" if returning else ""
    for item, quantity in chosen:
        args = (quantity, quantity) if returning else (quantity,)
        await fetch(
            connection,
            f"UPDATE order_items SET quantity_refunded = quantity_refunded - ?{back} "
            "WHERE id = ? AND quantity_refunded >= ? RETURNING id",
            *args,
            item.id,
            quantity,
        )


async def restock_lines(
    chosen: Sequence[tuple[OrderItem, int]], *, actor: str, reason: str
) -> None:
    """Refunded units back on sale (reserved ones released before shipping, returned goods
    after), each at most once."""
    connection = get_connection()
    for item, quantity in sorted(chosen, key=lambda pair: str(pair[0].product_id)):
        sql = (
            "UPDATE order_items SET quantity_restocked = quantity_restocked + ? WHERE id = ? "
            "AND quantity_restocked + ? <= quantity_refunded RETURNING id"
        )
        if not await fetch(connection, sql, quantity, item.id, quantity):
            raise _bad(f"{item.product_name} has no {quantity} refunded units to restock", "lines")
        item.quantity_restocked += quantity
        [row] = await fetch(
            connection,
            "UPDATE products SET stock = stock + ? WHERE id = ? RETURNING stock",
            quantity,
            uuid.UUID(str(item.product_id)),
        )
        await StockMovement.create(
            product_id=item.product_id,
            delta=quantity,
            stock_after=row["stock"],
            reason=f"restocked: {reason}"[:255],
            actor=actor,
        )


def refundable(order: Order) -> None:
    if order.payment_status not in REFUNDABLE or not order.stripe_payment_intent_id:
        raise BusinessError.of(
            ErrorCode.INVALID_TRANSITION,
            f"A payment that is {order.payment_status.name} cannot be refunded",
        )
    if not can_transition(order.status, OrderStatus.REFUNDED):
        raise BusinessError.of(
            ErrorCode.INVALID_TRANSITION, f"An order that is {order.status.name} cannot be refunded"
        )


async def prepare_refund(
    order: Order,
    request: RefundRequest,
    *,
    key: str,
    actor: str,
    return_id: str | None = None,
) -> OrderRefund:
    """The refund of `request` (a new PENDING one, its lines taken, or the one this request
    already made), inside the caller's transaction with `order` locked. A return's refund takes
    the return's own units (`quantity_returning`)."""
    existing = await OrderRefund.get_or_none(request_key=key)
    if existing is not None:
        return existing
    # A return whose money already went back (the remainder refunded) still takes its units:
    # it is recorded with nothing to pay.
    if return_id is None or order.amount_refunded < order.total:
        refundable(order)
    items = list(await OrderItem.filter(order_id=order.id).order_by("id"))
    lines = request.lines or ()
    chosen = checked_lines(items, lines)
    # Refunds still waiting for Stripe's answer are spoken for (conservatively: one whose
    # `charge.refunded` already arrived is counted twice until it is recorded).
    pending = OrderRefund.filter(order_id=order.id, status=RefundStatus.PENDING)
    waiting = sum(r.amount for r in await pending)
    remaining = max(0, order.total - order.amount_refunded - waiting)
    if request.amount is not None:
        amount = request.amount
        if not 1 <= amount <= remaining:
            raise _bad(f"The amount must be between 1 and {remaining}, what remains", "amount")
    elif chosen:
        amount = min(share_of_lines(order, items, lines), remaining)
    else:
        amount = remaining
    if not chosen and request.restock:
        raise _bad("Name the lines to restock", "restock")
    if amount == 0 and not chosen:
        raise _bad("Nothing is left to refund (some refunds may still wait for Stripe)", "amount")
    await take_lines(chosen, returning=return_id is not None)
    refund = await OrderRefund.create(
        request_key=key,
        order_id=order.id,
        amount=amount,
        lines=[{"product_id": p, "quantity": q} for p, q in lines],
        restock=request.restock,
        return_id=return_id,
        reason=request.reason,
        actor=actor,
    )
    if amount == 0:  # free lines: nothing to ask Stripe
        await _complete(order, refund, None)
    return refund


def _lines_of(refund: OrderRefund, items: Sequence[OrderItem]) -> list[tuple[OrderItem, int]]:
    by_product = {str(item.product_id): item for item in items}
    return [(by_product[str(line["product_id"])], int(line["quantity"])) for line in refund.lines]


async def _complete(order: Order, refund: OrderRefund, stripe_refund: Refund | None) -> None:
    """Record a refund Stripe made (or one of nothing): restock, the return, the money."""
    refund.status = RefundStatus.SUCCEEDED
    refund.stripe_refund_id = stripe_refund.id if stripe_refund else None
    refund.completed_at = datetime.now(UTC)
    await refund.save()
    what = f"return {refund.return_id}" if refund.return_id else (refund.reason or "refund")
    if refund.restock:
        items = list(await OrderItem.filter(order_id=order.id))
        await restock_lines(_lines_of(refund, items), actor=refund.actor, reason=what)
    if refund.return_id is not None:
        await OrderReturn.filter(id=refund.return_id).update(
            status=ReturnStatus.REFUNDED, refunded_amount=refund.amount
        )
    if stripe_refund is None:
        return
    # Stripe's own running total: refunds made elsewhere (the dashboard) included, this one
    # counted once even if `charge.refunded` recorded it first.
    running_total = stripe_refund.charge_amount_refunded
    if running_total is None:
        running_total = order.amount_refunded + stripe_refund.amount
    note = f"refunded {emails.money(refund.amount, order.currency)}: {what}"
    await apply_refund(order, running_total, actor=refund.actor, note=note)


def _idempotency_key(refund: OrderRefund) -> str:
    key = f"refund-{refund.request_key}"
    return key if refund.attempt == 0 else f"{key}-{refund.attempt}"


def stale_after(settings: Settings) -> timedelta:
    """How old a PENDING refund is when no request can still be waiting for Stripe's answer:
    twice the gateway's whole deadline (its tries included)."""
    attempts = settings.stripe_max_retries + 1
    return timedelta(seconds=2 * (settings.stripe_timeout_seconds * attempts + 2))


async def settle_refund(
    refund_id: int, services: PaymentServices, *, look_up: bool | None = None
) -> None:
    """Ask Stripe for a PENDING refund and record its answer. Stripe unsure (a timeout):
    `PaymentProviderError` with the refund still PENDING, for a later try. Stripe refusing: the
    refund is undone (its lines given back) and BusinessError PAYMENT_PROVIDER_ERROR says why.

    `look_up` (by default: when the refund is older than `stale_after`, so that no request can
    still be waiting on an earlier try): first ask Stripe whether the refund exists (its metadata
    names the request), and record it if so. If not, the earlier try failed; since Stripe keeps a
    failed answer (a 500 included) under its idempotency key, the next try goes under a new one,
    claimed by a conditional update so that two settlers never both try."""
    refund = await OrderRefund.get(id=refund_id)
    order = await Order.get(id=refund.order_id)
    if refund.status != RefundStatus.PENDING or not order.stripe_payment_intent_id:
        return
    intent = order.stripe_payment_intent_id
    if look_up is None:
        look_up = refund.created_at < datetime.now(UTC) - stale_after(services.settings)
    if look_up:
        found = await services.gateway.find_refund(intent, refund.request_key)
        if found is not None:
            await _settled(refund_id, found)
            return
        moved = await OrderRefund.filter(
            id=refund_id, status=RefundStatus.PENDING, attempt=refund.attempt
        ).update(attempt=refund.attempt + 1)
        if moved != 1:
            return  # settled, or retried, meanwhile
        refund.attempt += 1
    try:
        made = await services.gateway.create_refund(
            intent,
            refund.amount,
            idempotency_key=_idempotency_key(refund),
            reason=refund.reason or "refund",
            request_key=refund.request_key,
        )
    except PaymentProviderError as exc:
        if exc.uncertain:
            raise
        await _settled(refund_id, None)
        raise BusinessError.of(
            ErrorCode.PAYMENT_PROVIDER_ERROR, f"Stripe refused the refund: {exc}"
        ) from exc
    await _settled(refund_id, made)


async def _settled(refund_id: int, made: Refund | None) -> None:
    """Record Stripe's answer, once: `made`, or a refusal (None) that undoes the refund."""
    async with transaction():
        pending = await OrderRefund.get(id=refund_id)
        order = await lock_order(str(pending.order_id))
        refund = await OrderRefund.get(id=refund_id)  # as it is under the order's lock
        if order is None or refund.status != RefundStatus.PENDING:
            return
        if made is not None:
            await _complete(order, refund, made)
            return
        items = list(await OrderItem.filter(order_id=order.id))
        await give_lines_back(_lines_of(refund, items), returning=refund.return_id is not None)
        await refund.delete()


async def settle_pending_refunds(services: PaymentServices, *, older_than: datetime) -> int:
    """The sweeper's part: finish refunds whose answer was lost. Answers how many it tried."""
    pending = OrderRefund.filter(status=RefundStatus.PENDING, created_at__lt=older_than)
    refunds = await pending.order_by("id").limit(100)
    for refund in refunds:
        try:
            await settle_refund(refund.id, services, look_up=True)
        except (BusinessError, PaymentProviderError) as exc:
            log.warning("pending refund %s not settled: %s", refund.id, exc)
    return len(refunds)


async def refund_order(
    order_id: str, request: RefundRequest, *, actor: str, services: PaymentServices
) -> Order:
    """Staff's `refundOrder`."""
    if request.lines == ():
        raise _bad("Name at least one line, or no lines at all", "lines")
    request = RefundRequest(
        request.amount, request.lines, request.restock, checked_reason(request.reason)
    )
    async with transaction():
        order = await lock_order(order_id)
        if order is None:
            raise order_not_found()
        refund = await prepare_refund(order, request, key=request.key(order_id), actor=actor)
    try:
        await settle_refund(refund.id, services)
    except PaymentProviderError as exc:
        raise BusinessError.of(
            ErrorCode.PAYMENT_PROVIDER_ERROR,
            "Stripe did not answer in time. The refund is pending and will be completed; "
            "asking again is safe.",
        ) from exc
    return await Order.get(id=order_id)


async def apply_refund(
    order: Order, amount_refunded: int, *, actor: str, note: str | None = None
) -> Outcome:
    """Record that `amount_refunded` (a running total, as Stripe reports it) went back: the
    payment is PARTIALLY_REFUNDED, or REFUNDED with the order when nothing is left."""
    if amount_refunded <= order.amount_refunded:
        return Outcome.UNCHANGED
    full = amount_refunded >= order.total
    payment = PaymentStatus.REFUNDED if full else PaymentStatus.PARTIALLY_REFUNDED
    status = (
        OrderStatus.REFUNDED
        if full and can_transition(order.status, OrderStatus.REFUNDED)
        else order.status
    )
    refunded_now = amount_refunded - order.amount_refunded
    reason = (note or ("refunded" if full else "partially refunded"))[:255]
    if status == order.status and payment == order.payment_status:
        await Order.filter(id=order.id).update(amount_refunded=amount_refunded)
        order.amount_refunded = amount_refunded
        await note_change(order, reason=reason, actor=actor, webhook_event=ORDER_REFUNDED)
    else:
        await change_order(
            order,
            status=status,
            payment_status=payment,
            reason=reason,
            actor=actor,
            fields={"amount_refunded": amount_refunded},
        )
    await emails.email_shopper(
        order,
        dedupe_key=f"refund:{order.id}:{amount_refunded}",
        composed=emails.compose_refund(order, refunded_now, "Your refund is on its way."),
    )
    return Outcome.APPLIED
