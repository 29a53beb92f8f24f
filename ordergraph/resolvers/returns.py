"""Withdrawals (the shopper's two steps) and returns (staff receive or decline them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import strawberry

from ordergraph.auth import order_id_from_access_token
from ordergraph.domain import returns
from ordergraph.domain.errors import BusinessError, ErrorCode, order_not_found
from ordergraph.domain.ids import parse_uuid
from ordergraph.models import Order as OrderModel
from ordergraph.models import OrderReturn as OrderReturnModel
from ordergraph.resolvers.base import forbidden, payload, require_user
from ordergraph.resolvers.context import Info
from ordergraph.resolvers.return_types import OrderReturn, ReturnLineInput
from ordergraph.resolvers.types import Order, ReturnPayload

# A staff step on a return: (return id, actor) -> the return and its order.
Step = Callable[[str, str], Awaitable[tuple[OrderReturnModel, OrderModel]]]


def _answer(found: tuple[OrderReturnModel, OrderModel]) -> ReturnPayload:
    order_return, order = found
    return ReturnPayload(
        order_return=OrderReturn.from_model(order_return, order.currency),
        order=Order.from_model(order),
    )


def return_lines(lines: list[ReturnLineInput] | None) -> tuple[tuple[str, int], ...] | None:
    """The lines as (product id, units); a product id that is no id names no line."""
    if lines is None:
        return None
    return tuple((str(parse_uuid(line.product_id)), line.quantity) for line in lines)


async def _shopper(info: Info, order_id: str | None, access_token: str | None) -> str:
    """Who withdraws from `order_id`: its owner, or whoever holds its access token (the mail's
    link). Anyone else, staff included (the declaration is the shopper's), finds no order."""
    context = info.context
    if access_token is None or context.identity is not None:
        identity = await require_user(info)
    else:
        identity = None
    if order_id is None:
        raise order_not_found()
    if access_token is not None:
        if order_id_from_access_token(context.settings.jwt_secret, access_token) == order_id:
            return "order-link"
    if identity is None or not await OrderModel.exists(id=order_id, user_id=identity.user_id):
        raise order_not_found()
    return f"user:{identity.user_id}"


async def _return_payload(run: Callable[[], Awaitable[ReturnPayload]]) -> ReturnPayload:
    return await payload(ReturnPayload, run())


async def request_withdrawal(
    info: Info,
    order_id: strawberry.ID,
    lines: list[ReturnLineInput] | None = None,
    reason: str | None = None,
    access_token: str | None = None,
) -> ReturnPayload:
    key = parse_uuid(order_id)
    settings = info.context.settings

    async def run() -> ReturnPayload:
        actor = await _shopper(info, str(key) if key else None, access_token)
        found = await returns.request_withdrawal(
            str(key), return_lines(lines), reason, actor=actor, settings=settings
        )
        return _answer(found)

    return await _return_payload(run)


async def confirm_withdrawal(
    info: Info, return_id: strawberry.ID, access_token: str | None = None
) -> ReturnPayload:
    context = info.context

    async def run() -> ReturnPayload:
        key = parse_uuid(return_id)
        order_id = await returns.return_order_id(str(key)) if key else None
        try:
            actor = await _shopper(info, order_id, access_token)
        except BusinessError:
            raise BusinessError.of(
                ErrorCode.NOT_FOUND, "No such return", field=("returnId",)
            ) from None
        found = await returns.confirm_withdrawal(
            str(key), actor=actor, settings=context.settings, services=context.services
        )
        return _answer(found)

    return await _return_payload(run)


async def _staff_step(info: Info, return_id: strawberry.ID, step: Step) -> ReturnPayload:
    identity = await require_user(info)
    if not identity.is_staff:
        return ReturnPayload(user_errors=forbidden())

    async def run() -> ReturnPayload:
        key = parse_uuid(return_id)
        if key is None:
            raise BusinessError.of(ErrorCode.NOT_FOUND, "No such return", field=("returnId",))
        return _answer(await step(str(key), f"staff:{identity.user_id}"))

    return await _return_payload(run)


async def receive_return(
    info: Info, return_id: strawberry.ID, restock: bool | None = True
) -> ReturnPayload:
    services = info.context.services
    return await _staff_step(
        info,
        return_id,
        lambda key, actor: returns.receive_return(
            key, restock=restock is not False, actor=actor, services=services
        ),
    )


async def reject_return(info: Info, return_id: strawberry.ID, reason: str) -> ReturnPayload:
    return await _staff_step(
        info, return_id, lambda key, actor: returns.reject_return(key, reason, actor=actor)
    )
