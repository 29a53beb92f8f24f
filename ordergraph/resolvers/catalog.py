"""Products: the public catalogue, and staff keeping it."""

from __future__ import annotations

import strawberry

from ordergraph.domain import catalog as catalog_domain
from ordergraph.domain import stock
from ordergraph.domain.errors import ErrorCode
from ordergraph.domain.ids import parse_uuid
from ordergraph.models import Product as ProductModel
from ordergraph.resolvers.base import (
    forbidden,
    graphql_error,
    page_size,
    payload,
    require_user,
)
from ordergraph.resolvers.common_types import PageInfo, decode_cursor, encode_cursor
from ordergraph.resolvers.context import Info
from ordergraph.resolvers.types import (
    Product,
    ProductConnection,
    ProductEdge,
    ProductInput,
    ProductPayload,
)


async def products(
    info: Info, first: int | None = 50, after: str | None = None
) -> ProductConnection:
    size = page_size(first, 50)
    query = ProductModel.filter(active=True).order_by("sku")
    if after is not None:
        sku = decode_cursor(after)
        if sku is None:
            raise graphql_error(ErrorCode.INVALID_INPUT, "after is not a cursor from this API")
        query = query.filter(sku__gt=sku)
    rows = await query.limit(size + 1)
    currency = info.context.settings.shop_currency
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
    """An archived product is absent for shoppers and strangers; staff still see it (its
    stock, its movements), as they see archived shipping rates."""
    key = parse_uuid(id)
    if key is None:
        return None
    identity = info.context.identity
    query = ProductModel.filter(id=key)
    if identity is None or not identity.is_staff:
        query = query.filter(active=True)
    row = await query.first()
    return Product.from_model(row, info.context.settings.shop_currency) if row else None


async def upsert_product(info: Info, input: ProductInput) -> ProductPayload:
    identity = await require_user(info)
    if not identity.is_staff:
        return ProductPayload(user_errors=forbidden())

    async def run() -> ProductPayload:
        row = await catalog_domain.upsert_product(
            catalog_domain.ProductDraft(
                sku=input.sku,
                name=input.name,
                description=input.description or "",
                price=input.price,
                stock=input.stock,
                active=input.active is not False,
                tax_code=input.tax_code,
            ),
            actor=f"staff:{identity.user_id}",
        )
        return ProductPayload(product=Product.from_model(row, info.context.settings.shop_currency))

    return await payload(ProductPayload, run())


async def adjust_stock(
    info: Info, product_id: strawberry.ID, delta: int, reason: str
) -> ProductPayload:
    identity = await require_user(info)
    if not identity.is_staff:
        return ProductPayload(user_errors=forbidden())

    async def run() -> ProductPayload:
        row = await stock.adjust_stock(
            str(product_id), delta, reason, actor=f"staff:{identity.user_id}"
        )
        return ProductPayload(product=Product.from_model(row, info.context.settings.shop_currency))

    return await payload(ProductPayload, run())
