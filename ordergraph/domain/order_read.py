"""Reading one order: the row alone, with the lines and history a page shows with it, or
locked with its lines (a payment's receipt).

The success page, the staff console and every subscription message read an order with its
lines and its history. On PostgreSQL that is one statement: the lines and the history come as
arrays of their tables' rows beside the order's row (asyncpg decodes them as records), where
three statements cost three round trips and most of the read's CPU. SQLite reads the three.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from ordergraph.db import get_connection, is_postgres
from ordergraph.db.sql import fetch, select
from ordergraph.models import Order, OrderItem, OrderStatusChange

_LINES = "ARRAY(SELECT i FROM order_items i WHERE i.order_id = o.id ORDER BY i.id) AS og_lines"
_HISTORY = (
    "ARRAY(SELECT c FROM order_status_changes c WHERE c.order_id = o.id ORDER BY c.id)"
    " AS og_history"
)
_WITH_LINES_AND_HISTORY = f"SELECT o.*, {_LINES}, {_HISTORY} FROM orders o WHERE {{where}}"
# Locks the order's row only. Its lines are read as of the statement's start, before any wait
# for the lock: what they are read for (a receipt's names, prices and quantities) never changes
# after checkout.
_LOCKED_WITH_LINES = f"SELECT o.*, {_LINES} FROM orders o WHERE o.id = ? FOR UPDATE OF o"


@dataclass(frozen=True, slots=True)
class OrderRead:
    order: Order
    lines: list[OrderItem]  # by id, as checkout wrote them
    history: list[OrderStatusChange]  # oldest first


def _where(order_id: uuid.UUID | str, owner: str | None) -> tuple[str, list[object]]:
    if owner is None:
        return "id = ?", [order_id]
    return "id = ? AND user_id = ?", [order_id, owner]


async def find_order(order_id: uuid.UUID | str, *, owner: str | None = None) -> Order | None:
    """The order `order_id`, or None; given `owner`, only if it is that user's."""
    where, values = _where(order_id, owner)
    rows = await select(get_connection(), Order, where, *values)
    return rows[0] if rows else None


async def read_order(order_id: uuid.UUID | str, *, owner: str | None = None) -> OrderRead | None:
    """`find_order` with the order's lines and history, as of one moment."""
    connection = get_connection()
    if not is_postgres(connection):
        order = await find_order(order_id, owner=owner)
        if order is None:
            return None
        history = await select(
            connection, OrderStatusChange, "order_id = ?", order.id, order_by="id"
        )
        return OrderRead(order, await _lines(order), history)
    where, values = _where(order_id, owner)
    rows = await fetch(connection, _WITH_LINES_AND_HISTORY.format(where=where), *values)
    if not rows:
        return None
    order, lines = _with_lines(rows[0])
    history = [OrderStatusChange._init_from_db(**change) for change in rows[0]["og_history"]]
    return OrderRead(order, lines, history)


async def lock_with_lines(order_id: uuid.UUID | str) -> tuple[Order, list[OrderItem]] | None:
    """The order, locked until the transaction ends, with its lines as of the read."""
    connection = get_connection()
    if not is_postgres(connection):  # one transaction at a time: it is the lock
        order = await find_order(order_id)
        return None if order is None else (order, await _lines(order))
    rows = await fetch(connection, _LOCKED_WITH_LINES, order_id)
    return _with_lines(rows[0]) if rows else None


async def _lines(order: Order) -> list[OrderItem]:
    return await select(get_connection(), OrderItem, "order_id = ?", order.id, order_by="id")


def _with_lines(row: dict[str, Any]) -> tuple[Order, list[OrderItem]]:
    """The order and its lines from a row of `_LINES`' statements (its arrays are not the
    order's columns: Tortoise takes only those)."""
    lines = [OrderItem._init_from_db(**line) for line in row["og_lines"]]
    return Order._init_from_db(**row), lines
