"""Orders: reading them (shopper's own, staff all), cancelling, syncing, and fulfilment."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import strawberry
from strawberry.types.nodes import SelectedField, Selection

from ordergraph import logs
from ordergraph.auth import order_id_from_access_token
from ordergraph.domain import (
    expiry,
    fulfilment,
    notes,
    order_read,
    order_search,
    payments,
    refunds,
)
from ordergraph.domain.errors import BusinessError, ErrorCode, order_not_found
from ordergraph.domain.ids import parse_uuid
from ordergraph.models import Order as OrderModel
from ordergraph.models import OrderStatus
from ordergraph.resolvers.base import (
    forbidden,
    graphql_error,
    page_size,
    payload,
    require_staff,
    require_user,
)
from ordergraph.resolvers.common_types import PageInfo, decode_cursor, encode_cursor
from ordergraph.resolvers.context import Info
from ordergraph.resolvers.return_types import ReturnLineInput
from ordergraph.resolvers.returns import return_lines
from ordergraph.resolvers.staff_types import OrderFilter, OrderSort
from ordergraph.resolvers.types import Order, OrderConnection, OrderEdge, OrderPayload

T = TypeVar("T")


async def order(info: Info, id: strawberry.ID, access_token: str | None = None) -> Order | None:
    """The one rule of who may read (and follow) an order: its owner, staff, and whoever holds
    the order's own access token. Everyone else, a holder of another order's token included,
    is told it does not exist. Without a bearer token, only an access token opens anything."""
    context = info.context
    if access_token is None or context.identity is not None:
        identity = await require_user(info)
    else:
        identity = None
    key = parse_uuid(id)
    if key is None:
        return None
    opened = access_token is not None and order_id_from_access_token(
        context.settings.jwt_secret, access_token
    ) == str(key)
    owner = None
    if not opened:
        if identity is None:
            return None
        if not identity.is_staff:
            owner = identity.user_id
    read = await order_read.read_order(key, owner=owner)
    if read is None:
        return None
    context.loaders.order_items.prime(str(key), read.lines)
    context.loaders.status_changes.prime(str(key), read.history)
    return Order.from_model(read.order)


def _selects(selections: list[Selection], name: str) -> bool:
    for selection in selections:
        if isinstance(selection, SelectedField):
            if selection.name == name:
                return True
        elif _selects(selection.selections, name):  # a fragment's fields are the type's
            return True
    return False


def _checked(make: Callable[[], T]) -> T:
    """A domain refusal of the list's arguments, as the list's GraphQL error."""
    try:
        return make()
    except BusinessError as error:
        raise graphql_error(ErrorCode.INVALID_INPUT, str(error)) from None


async def _order_page(
    info: Info,
    query: order_search.OrderQuery,
    sort: order_search.OrderSort,
    first: int | None,
    after: str | None,
) -> OrderConnection:
    """One keyset page (see domain/order_search.py for what a walk through the pages
    guarantees), and `totalCount` when it is asked for: the page and the count are read at
    the same time, on two connections where there is a pool."""
    size = page_size(first, 20)
    start = None
    if after is not None:
        start = _checked(lambda: order_search.position(sort, decode_cursor(after)))
    wants_total = any(_selects(field.selections, "totalCount") for field in info.selected_fields)
    if wants_total:
        page, total = await asyncio.gather(
            order_search.find_orders(query, sort, size, start), order_search.count_orders(query)
        )
    else:
        page, total = await order_search.find_orders(query, sort, size, start), 0
    edges = [
        OrderEdge(
            cursor=encode_cursor(order_search.cursor_text(sort, row)), node=Order.from_model(row)
        )
        for row in page.orders
    ]
    return OrderConnection(
        edges=edges,
        total_count=total,
        page_info=PageInfo(
            has_next_page=page.has_next, end_cursor=edges[-1].cursor if edges else None
        ),
    )


async def my_orders(
    info: Info, first: int | None = 20, after: str | None = None
) -> OrderConnection:
    identity = await require_user(info)
    query = order_search.order_query(user_id=identity.user_id)
    return await _order_page(info, query, order_search.OrderSort.CREATED_DESC, first, after)


async def orders(
    info: Info,
    status: OrderStatus | None = None,
    first: int | None = 20,
    after: str | None = None,
    filter: OrderFilter | None = None,
    sort: OrderSort | None = OrderSort.CREATED_DESC,
) -> OrderConnection:
    """Staff's order list: `status` (the older single filter) and `filter` both apply."""
    await require_staff(info)
    given = filter or OrderFilter()
    query = _checked(
        lambda: order_search.order_query(
            status=status,
            statuses=given.status,
            payment_statuses=given.payment_status,
            search=given.search,
            created_from=given.created_from,
            created_to=given.created_to,
        )
    )
    order = order_search.OrderSort((sort or OrderSort.CREATED_DESC).value)
    return await _order_page(info, query, order, first, after)


def _order_id(order_id: str) -> str:
    """The order a mutation acts on; it is the subject of the request's log lines from here."""
    key = parse_uuid(order_id)
    if key is None:
        raise order_not_found()
    logs.bind_order(str(key))
    return str(key)


async def _order_payload(action: Callable[[], Awaitable[OrderModel]]) -> OrderPayload:
    async def run() -> OrderPayload:
        return OrderPayload(order=Order.from_model(await action()))

    return await payload(OrderPayload, run())


async def cancel_order(info: Info, order_id: strawberry.ID) -> OrderPayload:
    identity = await require_user(info)
    services = info.context.services
    return await _order_payload(
        lambda: expiry.cancel_order(
            _order_id(order_id), user_id=identity.user_id, services=services
        )
    )


async def sync_order_payment(info: Info, order_id: strawberry.ID) -> OrderPayload:
    identity = await require_user(info)
    services = info.context.services
    return await _order_payload(
        lambda: payments.sync_order_payment(
            _order_id(order_id),
            user_id=identity.user_id,
            staff=identity.is_staff,
            services=services,
        )
    )


async def _staff_order_action(
    info: Info, action: Callable[[str], Awaitable[OrderModel]]
) -> OrderPayload:
    identity = await require_user(info)
    if not identity.is_staff:
        return OrderPayload(user_errors=forbidden())
    return await _order_payload(lambda: action(f"staff:{identity.user_id}"))


async def mark_order_awaiting_shipment(info: Info, order_id: strawberry.ID) -> OrderPayload:
    return await _staff_order_action(
        info, lambda actor: fulfilment.mark_awaiting_shipment(_order_id(order_id), actor=actor)
    )


async def mark_order_shipped(
    info: Info, order_id: strawberry.ID, tracking_number: str, carrier: str | None = None
) -> OrderPayload:
    return await _staff_order_action(
        info,
        lambda actor: fulfilment.mark_shipped(
            _order_id(order_id), tracking_number=tracking_number, carrier=carrier, actor=actor
        ),
    )


async def mark_order_delivered(info: Info, order_id: strawberry.ID) -> OrderPayload:
    return await _staff_order_action(
        info, lambda actor: fulfilment.mark_delivered(_order_id(order_id), actor=actor)
    )


async def refund_order(
    info: Info,
    order_id: strawberry.ID,
    amount: int | None = None,
    lines: list[ReturnLineInput] | None = None,
    restock: bool | None = False,
    reason: str | None = None,
) -> OrderPayload:
    services = info.context.services
    request = refunds.RefundRequest(amount, return_lines(lines), bool(restock), reason)
    return await _staff_order_action(
        info,
        lambda actor: refunds.refund_order(
            _order_id(order_id), request, actor=actor, services=services
        ),
    )


async def add_order_note(info: Info, order_id: strawberry.ID, body: str) -> OrderPayload:
    return await _staff_order_action(
        info, lambda actor: notes.add_note(_order_id(order_id), body, author=actor)
    )
