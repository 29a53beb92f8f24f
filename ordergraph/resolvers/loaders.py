"""DataLoaders: one query per kind of related row for a whole response, not one per order.

Loaders cache, so they are built per HTTP request and per subscription event, never kept for
the life of a WebSocket.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from strawberry.dataloader import DataLoader

from ordergraph.db import get_connection
from ordergraph.db.sql import select
from ordergraph.models import OrderItem, OrderNote, OrderReturn, OrderStatusChange


class _OfOrder(Protocol):
    order_id: Any


R = TypeVar("R", bound=_OfOrder)


def _by_order(model: Any, ordering: str) -> Callable[[Sequence[str]], Awaitable[list[list[R]]]]:
    """A load function for the rows of `model` that belong to each order, in `ordering`."""

    async def load(order_ids: Sequence[str]) -> list[list[R]]:
        where = f"order_id IN ({', '.join('?' * len(order_ids))})"
        found: dict[str, list[R]] = defaultdict(list)
        for row in await select(get_connection(), model, where, *order_ids, order_by=ordering):
            found[str(row.order_id)].append(row)
        return [found[str(i)] for i in order_ids]

    return load


class Loaders:
    def __init__(self) -> None:
        self.order_items: DataLoader[str, list[OrderItem]] = DataLoader(
            load_fn=_by_order(OrderItem, "id")
        )
        self.status_changes: DataLoader[str, list[OrderStatusChange]] = DataLoader(
            load_fn=_by_order(OrderStatusChange, "id")
        )
        self.order_returns: DataLoader[str, list[OrderReturn]] = DataLoader(
            load_fn=_by_order(OrderReturn, "requested_at")
        )
        self.order_notes: DataLoader[str, list[OrderNote]] = DataLoader(
            load_fn=_by_order(OrderNote, "id")
        )
