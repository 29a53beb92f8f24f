"""DataLoaders: one query per kind of related row for a whole response, not one per order.

Loaders cache, so they are built per HTTP request and per subscription event, never kept for
the life of a WebSocket.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from strawberry.dataloader import DataLoader

from ordergraph.models import OrderItem, OrderStatusChange


async def _order_items(order_ids: Sequence[str]) -> list[list[OrderItem]]:
    found: dict[str, list[OrderItem]] = defaultdict(list)
    for item in await OrderItem.filter(order_id__in=list(order_ids)).order_by("id"):
        found[str(item.order_id)].append(item)
    return [found[str(i)] for i in order_ids]


async def _status_changes(order_ids: Sequence[str]) -> list[list[OrderStatusChange]]:
    found: dict[str, list[OrderStatusChange]] = defaultdict(list)
    for change in await OrderStatusChange.filter(order_id__in=list(order_ids)).order_by("id"):
        found[str(change.order_id)].append(change)
    return [found[str(i)] for i in order_ids]


class Loaders:
    def __init__(self) -> None:
        self.order_items: DataLoader[str, list[OrderItem]] = DataLoader(load_fn=_order_items)
        self.status_changes: DataLoader[str, list[OrderStatusChange]] = DataLoader(
            load_fn=_status_changes
        )
