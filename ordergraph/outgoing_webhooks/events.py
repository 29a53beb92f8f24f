"""Events for the shop's endpoints, written with the change they report.

`prepare_order_event` runs inside the transaction of the change: when any endpoint wants the
event type, the change writes the event (in its own statement on PostgreSQL, `event_cte`): its
exact JSON body, the order as it is after the change, one row however many endpoints want it;
the sender writes one delivery per endpoint from it (fan_out.py). A rollback takes the event
with it, and a commit makes it durable before anyone could be told, so delivery is at least
once and only of what happened. With no endpoint registered a change costs nothing but a look
at a list this process keeps.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ordergraph.db import after_commit, get_connection, is_postgres
from ordergraph.db.sql import fetch
from ordergraph.models import (
    Order,
    OrderReturn,
    OrderStatus,
    PaymentStatus,
    WebhookEndpoint,
)
from ordergraph.wakeup import Wakeup

ORDER_CREATED = "order.created"
ORDER_PAID = "order.paid"
ORDER_STATUS_CHANGED = "order.status_changed"
ORDER_REFUNDED = "order.refunded"
ORDER_CANCELLED = "order.cancelled"
RETURN_REQUESTED = "return.requested"
RETURN_CONFIRMED = "return.confirmed"
RETURN_RECEIVED = "return.received"
# Beyond the contract's list: a return staff declined (the shopper is mailed the reason).
RETURN_REJECTED = "return.rejected"

EVENT_TYPES = (
    ORDER_CREATED,
    ORDER_PAID,
    ORDER_STATUS_CHANGED,
    ORDER_REFUNDED,
    ORDER_CANCELLED,
    RETURN_REQUESTED,
    RETURN_CONFIRMED,
    RETURN_RECEIVED,
    RETURN_REJECTED,
)
ALL_EVENTS = "*"

REFUNDED_PAYMENTS = frozenset({PaymentStatus.REFUNDED, PaymentStatus.PARTIALLY_REFUNDED})


def change_event_type(
    old_status: OrderStatus,
    new_status: OrderStatus,
    old_payment: PaymentStatus,
    new_payment: PaymentStatus,
) -> str:
    """The one event a status change is told as: the most specific that fits."""
    if new_payment != old_payment and new_payment in REFUNDED_PAYMENTS:
        return ORDER_REFUNDED
    if new_status != old_status and new_status == OrderStatus.PAYMENT_CONFIRMED:
        return ORDER_PAID
    if new_status != old_status and new_status == OrderStatus.CANCELLED:
        return ORDER_CANCELLED
    return ORDER_STATUS_CHANGED


def wants(types: list[str], event_type: str) -> bool:
    return ALL_EVENTS in types or event_type in types


# Which endpoint wants which types, as this process last read it: at most `ENDPOINTS_TTL` old,
# and forgotten at once when this process changes an endpoint. A change committed within that
# time of a registration on another process may not be told to the new endpoint. Which
# endpoints get an event is decided when it is fanned out, from the endpoints of that moment.
ENDPOINTS_TTL = 1.0
_endpoints: tuple[float, list[list[str]]] | None = None


def forget_endpoints() -> None:
    global _endpoints
    _endpoints = None


async def _anyone_wants(event_type: str) -> bool:
    global _endpoints
    if _endpoints is None or time.monotonic() - _endpoints[0] > ENDPOINTS_TTL:
        rows = await WebhookEndpoint.all().values_list("events", flat=True)
        _endpoints = (time.monotonic(), [list(types) for types in rows])
    return any(wants(types, event_type) for types in _endpoints[1])


# The order's lines as the JSON array of the body, read in SQL (PostgreSQL): the body's text is
# passed in two parts around `LINES_MARK`, where the array goes. The mark holds a NUL, which no
# text PostgreSQL stores can, so no field of the order is it.
LINES_MARK = "\x00lines"
_MARK_JSON = json.dumps(LINES_MARK)
_LINES_JSON = """(
    SELECT '[' || coalesce(string_agg(json_build_object(
        'name', product_name, 'productId', product_id::text, 'quantity', quantity,
        'quantityRefunded', quantity_refunded, 'unitPrice', unit_price)::text, ',' ORDER BY id
    ), '') || ']'
    FROM order_items WHERE order_id = ?
)"""
_INSERT_EVENT = """
INSERT INTO webhook_events (id, type, order_id, body, created_at, fan_out_pending)
SELECT ?, ?, ?, {body}, ?, TRUE{source}
"""


@dataclass(frozen=True)
class PreparedEvent:
    """An event ready to be written. `lines_in_sql`: its body holds `LINES_MARK` where the
    INSERT puts the order's lines, read by the INSERT itself."""

    id: uuid.UUID
    type: str
    order_id: Any
    created_at: datetime
    body: str
    lines_in_sql: bool


async def prepare_order_event(
    order: Order,
    event_type: str,
    changed: dict[str, Any] | None = None,
    *,
    lines: list[dict[str, Any]] | None = None,
) -> PreparedEvent | None:
    """`event_type` about `order` as it is with `changed` applied, or None when no endpoint
    wants it. Its lines are `lines` when the caller has them; otherwise, on PostgreSQL, the
    INSERT reads them (except for the events of returns, which read their returns too)."""
    if not await _anyone_wants(event_type):
        return None
    now = datetime.now(UTC)
    event_id = uuid.uuid4()
    payload = order_payload(order, changed or {})
    of_returns = event_type.startswith("return.")
    in_sql = lines is None and not of_returns and is_postgres(get_connection())
    if in_sql:
        payload["lines"] = LINES_MARK
    else:
        payload["lines"] = lines if lines is not None else await _lines(order.id)
    if of_returns:
        payload["returns"] = await _returns(order.id)
    body = {
        "id": str(event_id),
        "type": event_type,
        "createdAt": now.isoformat(),
        "data": {"order": payload},
    }
    text = json.dumps(body, separators=(",", ":"), sort_keys=True)
    return PreparedEvent(event_id, event_type, order.id, now, text, in_sql)


def _event_insert(event: PreparedEvent, *, source: str = "") -> tuple[str, list[Any]]:
    """The INSERT that writes `event`, and its parameters; `source` (" FROM changed") writes it
    only if that CTE of the caller's statement returned a row. The sender hears of it at
    commit."""
    params: list[Any] = [event.id, event.type, event.order_id]
    if event.lines_in_sql:
        before, after = event.body.split(_MARK_JSON)
        body = f"? || {_LINES_JSON} || ?"
        params += [before, event.order_id, after]
    else:
        body = "?"
        params.append(event.body)
    params.append(event.created_at)
    after_commit(_recorded)
    return _INSERT_EVENT.format(body=body, source=source), params


def event_cte(event: PreparedEvent | None, *, source: str = "") -> tuple[str, list[Any]]:
    """The INSERT of `event` as the CTE `, event AS (...)`, to follow the first CTE of a
    caller's statement (one round trip for a change and its event), and its parameters;
    nothing when there is no event."""
    if event is None:
        return "", []
    insert, params = _event_insert(event, source=source)
    return f", event AS ({insert})", params


async def write_event(event: PreparedEvent) -> None:
    """Write `event` in the caller's transaction."""
    query, params = _event_insert(event)
    await fetch(get_connection(), query, *params)


_LINES = """
SELECT product_id, product_name, unit_price, quantity, quantity_refunded
FROM order_items WHERE order_id = ? ORDER BY id
"""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def order_payload(order: Order, changed: dict[str, Any]) -> dict[str, Any]:
    """The order as a receiver sees it, the public API's names, money in minor units; its
    `lines` (and, in the events of returns, `returns`) are the caller's to add."""

    def get(name: str) -> Any:
        return changed.get(name, getattr(order, name))

    return {
        "id": str(order.id),
        "status": OrderStatus(get("status")).name,
        "paymentStatus": PaymentStatus(get("payment_status")).name,
        "version": get("version"),
        "email": get("email") or get("customer_email"),
        "currency": get("currency"),
        "subtotal": get("subtotal"),
        "discount": get("discount"),
        "shipping": get("shipping_cost"),
        "tax": get("tax"),
        "total": get("total"),
        "amountRefunded": get("amount_refunded"),
        "promotionCode": get("promotion_code"),
        "shippingAddress": get("shipping_address"),
        "carrier": get("carrier"),
        "trackingNumber": get("tracking_number"),
        "createdAt": _iso(get("created_at")),
        "updatedAt": _iso(get("updated_at")),
        "paidAt": _iso(get("paid_at")),
        "deliveredAt": _iso(get("delivered_at")),
    }


def line_payload(
    product_id: Any, product_name: str, unit_price: int, quantity: int, quantity_refunded: int
) -> dict[str, Any]:
    """One line of an order as a receiver sees it (the arguments: `order_items`' columns)."""
    return {
        "productId": str(product_id),
        "name": product_name,
        "unitPrice": unit_price,
        "quantity": quantity,
        "quantityRefunded": quantity_refunded,
    }


async def _lines(order_id: Any) -> list[dict[str, Any]]:
    return [line_payload(**row) for row in await fetch(get_connection(), _LINES, order_id)]


async def _returns(order_id: Any) -> list[dict[str, Any]]:
    return [
        {
            "id": str(r.id),
            "status": r.status.name,
            "lines": r.lines,
            "reason": r.reason,
            "rejectionReason": r.rejection_reason,
            "refundedAmount": r.refunded_amount,
            "requestedAt": _iso(r.requested_at),
            "confirmedAt": _iso(r.confirmed_at),
            "receivedAt": _iso(r.received_at),
        }
        for r in await OrderReturn.filter(order_id=order_id).order_by("requested_at")
    ]


# A delivery a few milliseconds later is no loss to a receiver; a request that answers later is.
COMMIT_WAKE_DELAY = 0.02
_wakeup = Wakeup(delay=COMMIT_WAKE_DELAY)
# The webhook sender of this process waits on `sender_wakeup()`; commits call `wake_sender`.
sender_wakeup = _wakeup.event
wake_sender = _wakeup.wake

# When this process last committed an event (time.monotonic()): its sender fans out after such
# a commit, and otherwise only at its poll (for other processes' events), not on every pass.
_last_recorded = float("-inf")


async def _recorded() -> None:
    global _last_recorded
    _last_recorded = time.monotonic()
    await wake_sender()


def recorded_since(moment: float) -> bool:
    """Whether this process committed an event at or after `moment`."""
    return _last_recorded >= moment
