"""Orders: reading them (shopper's own, staff all), cancelling, syncing, and fulfilment."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import strawberry
from tortoise.expressions import Q
from tortoise.queryset import QuerySet

from ordergraph import logs
from ordergraph.auth import order_id_from_access_token
from ordergraph.domain import expiry, fulfilment, payments
from ordergraph.domain.errors import ErrorCode, order_not_found
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
from ordergraph.resolvers.context import Info
from ordergraph.resolvers.types import (
    Order,
    OrderConnection,
    OrderEdge,
    OrderPayload,
    PageInfo,
    decode_cursor,
    encode_cursor,
)


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
    query = OrderModel.filter(id=key)
    opened = access_token is not None and order_id_from_access_token(
        context.settings.jwt_secret, access_token
    ) == str(key)
    if not opened:
        if identity is None:
            return None
        if not identity.is_staff:
            query = query.filter(user_id=identity.user_id)
    row = await query.first()
    return Order.from_model(row) if row else None


def _order_cursor(row: OrderModel) -> str:
    return encode_cursor(f"{row.created_at.isoformat()}|{row.id}")


async def _order_page(
    query: QuerySet[OrderModel], first: int | None, after: str | None
) -> OrderConnection:
    size = page_size(first, 20)
    if after is not None:
        decoded = decode_cursor(after) or ""
        stamp, _, last_id = decoded.partition("|")
        try:
            created = datetime.fromisoformat(stamp)
            if created.tzinfo is None or parse_uuid(last_id) is None:
                raise ValueError(after)
            created = created.astimezone(UTC)
        except (ValueError, OverflowError):
            raise graphql_error(
                ErrorCode.INVALID_INPUT, "after is not a cursor from this API"
            ) from None
        query = query.filter(Q(created_at__lt=created) | Q(created_at=created, id__lt=last_id))
    rows = await query.order_by("-created_at", "-id").limit(size + 1)
    edges = [OrderEdge(cursor=_order_cursor(r), node=Order.from_model(r)) for r in rows[:size]]
    return OrderConnection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=len(rows) > size, end_cursor=edges[-1].cursor if edges else None
        ),
    )


async def my_orders(
    info: Info, first: int | None = 20, after: str | None = None
) -> OrderConnection:
    identity = await require_user(info)
    return await _order_page(OrderModel.filter(user_id=identity.user_id), first, after)


async def orders(
    info: Info,
    status: OrderStatus | None = None,
    first: int | None = 20,
    after: str | None = None,
) -> OrderConnection:
    await require_staff(info)
    query = OrderModel.all() if status is None else OrderModel.filter(status=status)
    return await _order_page(query, first, after)


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


async def refund_order(info: Info, order_id: strawberry.ID) -> OrderPayload:
    services = info.context.services
    return await _staff_order_action(
        info,
        lambda actor: fulfilment.refund_order(_order_id(order_id), actor=actor, services=services),
    )
