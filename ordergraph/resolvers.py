"""GraphQL resolvers: who may ask, then one call into the domain, then the answer's shape.

Business refusals come back as `userErrors`; a caller who is not signed in (or not allowed to
use a staff-only query) gets a GraphQL error whose `extensions.code` says so.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import strawberry
from graphql import GraphQLError
from strawberry.types import Info
from tortoise.expressions import Q
from tortoise.queryset import QuerySet

from ordergraph import cart, catalog, expiry, fulfilment, logs, mail, payments
from ordergraph import checkout as checkout_domain
from ordergraph.auth import Identity, ensure_user
from ordergraph.context import Context
from ordergraph.errors import BusinessError, ErrorCode, Problem, order_not_found
from ordergraph.graphql_types import (
    Cart,
    CartPayload,
    CheckoutPayload,
    EmailPayload,
    Order,
    OrderConnection,
    OrderEdge,
    OrderPayload,
    PageInfo,
    Product,
    ProductConnection,
    ProductEdge,
    ProductInput,
    ProductPayload,
    UndeliveredEmail,
    UserError,
    decode_cursor,
    encode_cursor,
)
from ordergraph.models import Order as OrderModel
from ordergraph.models import OrderStatus
from ordergraph.models import Product as ProductModel
from ordergraph.stripe_gateway import PaymentProviderError

MAX_PAGE = 100
P = TypeVar("P")


def _context(info: Info) -> Context:
    context: Context = info.context
    return context


def _error(code: ErrorCode, message: str) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code.value})


async def require_user(info: Info) -> Identity:
    context = _context(info)
    if context.identity is None:
        raise _error(ErrorCode.UNAUTHENTICATED, context.auth_error or "Sign in first")
    await ensure_user(context.identity)
    return context.identity


async def require_staff(info: Info) -> Identity:
    identity = await require_user(info)
    if not identity.is_staff:
        raise _error(ErrorCode.FORBIDDEN, "Staff only")
    return identity


def _page_size(first: int | None, default: int) -> int:
    size = default if first is None else first
    if not 0 <= size <= MAX_PAGE:
        raise _error(ErrorCode.INVALID_INPUT, f"first must be between 0 and {MAX_PAGE}")
    return size


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


PROVIDER_DOWN = Problem(
    ErrorCode.PAYMENT_PROVIDER_ERROR,
    "The payment provider could not be reached; nothing was charged or changed. Try again.",
)


async def _payload(make: Callable[..., P], action: Awaitable[P]) -> P:
    """Run a mutation's domain call, answering its business errors (and a payment provider
    that failed it, after the domain undid what it had prepared) as `userErrors`."""
    try:
        return await action
    except BusinessError as error:
        problems = error.problems
    except PaymentProviderError:
        problems = [PROVIDER_DOWN]
    return make(user_errors=[UserError.from_problem(p) for p in problems])


# Queries


async def products(
    info: Info, first: int | None = 50, after: str | None = None
) -> ProductConnection:
    size = _page_size(first, 50)
    query = ProductModel.filter(active=True).order_by("sku")
    if after is not None:
        sku = decode_cursor(after)
        if sku is None:
            raise _error(ErrorCode.INVALID_INPUT, "after is not a cursor from this API")
        query = query.filter(sku__gt=sku)
    rows = await query.limit(size + 1)
    currency = _context(info).settings.shop_currency
    edges = [
        ProductEdge(cursor=encode_cursor(p.sku), node=Product.from_model(p, currency))
        for p in rows[:size]
    ]
    return ProductConnection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=len(rows) > size, end_cursor=edges[-1].cursor if edges else None
        ),
    )


async def product(info: Info, id: strawberry.ID) -> Product | None:
    key = _uuid(id)
    row = await ProductModel.filter(id=key, active=True).first() if key else None
    return Product.from_model(row, _context(info).settings.shop_currency) if row else None


async def _cart(user_id: str, info: Info) -> Cart:
    return Cart.from_items(await cart.cart_lines(user_id), _context(info).settings.shop_currency)


async def my_cart(info: Info) -> Cart:
    identity = await require_user(info)
    return await _cart(identity.user_id, info)


async def order(info: Info, id: strawberry.ID) -> Order | None:
    identity = await require_user(info)
    key = _uuid(id)
    if key is None:
        return None
    query = OrderModel.filter(id=key)
    if not identity.is_staff:
        query = query.filter(user_id=identity.user_id)
    row = await query.first()
    return Order.from_model(row) if row else None


def _order_cursor(row: OrderModel) -> str:
    return encode_cursor(f"{row.created_at.isoformat()}|{row.id}")


async def _order_page(
    query: QuerySet[OrderModel], first: int | None, after: str | None
) -> OrderConnection:
    size = _page_size(first, 20)
    if after is not None:
        decoded = decode_cursor(after) or ""
        stamp, _, last_id = decoded.partition("|")
        try:
            created = datetime.fromisoformat(stamp)
            if created.tzinfo is None or _uuid(last_id) is None:
                raise ValueError(after)
            created = created.astimezone(UTC)
        except (ValueError, OverflowError):
            raise _error(ErrorCode.INVALID_INPUT, "after is not a cursor from this API") from None
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


# Mutations


async def add_to_cart(info: Info, product_id: strawberry.ID, quantity: int = 1) -> CartPayload:
    identity = await require_user(info)

    async def run() -> CartPayload:
        await cart.add_to_cart(identity.user_id, product_id, quantity)
        return CartPayload(cart=await _cart(identity.user_id, info))

    return await _payload(CartPayload, run())


async def set_cart_quantity(info: Info, product_id: strawberry.ID, quantity: int) -> CartPayload:
    identity = await require_user(info)

    async def run() -> CartPayload:
        await cart.set_cart_quantity(identity.user_id, product_id, quantity)
        return CartPayload(cart=await _cart(identity.user_id, info))

    return await _payload(CartPayload, run())


async def remove_from_cart(info: Info, product_id: strawberry.ID) -> CartPayload:
    identity = await require_user(info)

    async def run() -> CartPayload:
        await cart.remove_from_cart(identity.user_id, product_id)
        return CartPayload(cart=await _cart(identity.user_id, info))

    return await _payload(CartPayload, run())


async def checkout(info: Info) -> CheckoutPayload:
    identity = await require_user(info)
    context = _context(info)

    async def run() -> CheckoutPayload:
        result = await checkout_domain.checkout(
            identity.user_id, identity.email, context.settings, context.services.gateway
        )
        return CheckoutPayload(
            order_id=strawberry.ID(str(result.order.id)),
            client_secret=result.client_secret,
            order=Order.from_model(result.order),
        )

    return await _payload(CheckoutPayload, run())


def _forbidden() -> list[UserError]:
    return [UserError(code=ErrorCode.FORBIDDEN, message="Staff only")]


async def upsert_product(info: Info, input: ProductInput) -> ProductPayload:
    identity = await require_user(info)
    if not identity.is_staff:
        return ProductPayload(user_errors=_forbidden())

    async def run() -> ProductPayload:
        row = await catalog.upsert_product(
            catalog.ProductDraft(
                sku=input.sku,
                name=input.name,
                description=input.description or "",
                price=input.price,
                stock=input.stock,
            )
        )
        return ProductPayload(
            product=Product.from_model(row, _context(info).settings.shop_currency)
        )

    return await _payload(ProductPayload, run())


def _order_id(order_id: str) -> str:
    """The order a mutation acts on; it is the subject of the request's log lines from here."""
    key = _uuid(order_id)
    if key is None:
        raise order_not_found()
    logs.bind_order(str(key))
    return str(key)


async def _order_payload(action: Callable[[], Awaitable[OrderModel]]) -> OrderPayload:
    async def run() -> OrderPayload:
        return OrderPayload(order=Order.from_model(await action()))

    return await _payload(OrderPayload, run())


async def cancel_order(info: Info, order_id: strawberry.ID) -> OrderPayload:
    identity = await require_user(info)
    services = _context(info).services
    return await _order_payload(
        lambda: expiry.cancel_order(
            _order_id(order_id), user_id=identity.user_id, services=services
        )
    )


async def sync_order_payment(info: Info, order_id: strawberry.ID) -> OrderPayload:
    identity = await require_user(info)
    services = _context(info).services
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
        return OrderPayload(user_errors=_forbidden())
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
    services = _context(info).services
    return await _staff_order_action(
        info,
        lambda actor: fulfilment.refund_order(_order_id(order_id), actor=actor, services=services),
    )


async def undelivered_emails(info: Info, first: int | None = 20) -> list[UndeliveredEmail]:
    await require_staff(info)
    rows = await mail.undelivered(_page_size(first, 20))
    return [UndeliveredEmail.from_model(row) for row in rows]


async def retry_email(info: Info, id: strawberry.ID) -> EmailPayload:
    identity = await require_user(info)
    if not identity.is_staff:
        return EmailPayload(user_errors=_forbidden())
    row = await mail.retry_dead(int(id)) if re.fullmatch(r"[0-9]{1,9}", str(id)) else None
    if row is None:
        return EmailPayload(
            user_errors=[
                UserError(
                    code=ErrorCode.NOT_FOUND, message="No dead mail with that id", field=["id"]
                )
            ]
        )
    return EmailPayload(email=UndeliveredEmail.from_model(row))
