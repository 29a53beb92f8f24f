"""Stock with an audit trail: every change of `Product.stock` that is not a sale is a
`StockMovement`, written in the transaction of the change, with who made it and why.

Sales move stock through `inventory` (checkout takes units, an order that will not ship gives
them back) and show in the order's history. Everything else is a movement: a staff adjustment
(`adjust_stock`), an upsert that sets the stock (`catalog.upsert_product`), units back on sale
from a refund or a return (`refunds.restock_lines`). Each movement's `stock_after` is read in
the very statement that changed the stock (`RETURNING`) or under the row's lock, so concurrent
changes each record the stock they left, and the trail adds up.

Example:
    await adjust_stock(product_id, -2, "two broken in the warehouse", actor="staff:sam")
"""

from __future__ import annotations

from ordergraph.db import transaction
from ordergraph.db.sql import fetch
from ordergraph.domain.errors import BusinessError, ErrorCode, Problem
from ordergraph.domain.ids import parse_uuid
from ordergraph.models import Product, StockMovement

# The most units a product may hold for sale: a typo guard, as `catalog.MAX_PRICE` is, and far
# below the 32-bit column's 2,147,483,647. An upsert cannot set more, an adjustment cannot add
# past it; taking units out is never refused for it (restocks may have left more).
MAX_STOCK = 10_000_000
MAX_REASON = 255


def _invalid(
    message: str, field: str, *, product_id: str | None = None, available: int | None = None
) -> BusinessError:
    problem = Problem(
        ErrorCode.INVALID_INPUT,
        message,
        field=(field,),
        product_id=product_id,
        available=available,
    )
    return BusinessError(problem)


def _no_product() -> BusinessError:
    return BusinessError.of(ErrorCode.NOT_FOUND, "No such product", field=("productId",))


def checked_reason(reason: str) -> str:
    """Why stock changed: 1 to 255 characters once stripped, no NUL."""
    reason = reason.strip()
    if not 1 <= len(reason) <= MAX_REASON or "\x00" in reason:
        raise _invalid(f"Say why, in 1 to {MAX_REASON} characters", "reason")
    return reason


async def record(
    product_id: object, delta: int, stock_after: int, *, reason: str, actor: str
) -> None:
    """The movement of a change already made, in the caller's transaction."""
    await StockMovement.create(
        product_id=product_id,
        delta=delta,
        stock_after=stock_after,
        reason=reason[:MAX_REASON],
        actor=actor[:255],
    )


async def adjust_stock(product_id: str, delta: int, reason: str, *, actor: str) -> Product:
    """Add (`delta` > 0) or take out units, in one conditional UPDATE: concurrent adjustments
    and checkouts can never drive the stock below zero, nor an adjustment past MAX_STOCK. A
    refused adjustment changes nothing and says how many units there are."""
    key = parse_uuid(product_id)
    if key is None:
        raise _no_product()
    if delta == 0:
        raise _invalid("The change must not be zero", "delta")
    reason = checked_reason(reason)
    ceiling = MAX_STOCK if delta > 0 else 2**31 - 1
    async with transaction() as connection:
        # BIGINT: `stock + delta` must not overflow PostgreSQL's 32-bit integer before the
        # condition refuses it (a delta near 2**31 would be an error, not a refusal).
        rows = await fetch(
            connection,
            "UPDATE products SET stock = stock + CAST(? AS BIGINT) WHERE id = ? "
            "AND stock + CAST(? AS BIGINT) BETWEEN 0 AND ? RETURNING stock",
            delta,
            key,
            delta,
            ceiling,
        )
        if not rows:
            raise await _refusal(str(key), delta)
        await record(key, delta, rows[0]["stock"], reason=reason, actor=actor)
        return await Product.get(id=key)


async def _refusal(product_id: str, delta: int) -> BusinessError:
    product = await Product.filter(id=product_id).only("id", "name", "stock").first()
    if product is None:
        return _no_product()
    have = product.stock
    if delta < 0:
        message = f"Only {have} of {product.name} in stock; {-delta} cannot be taken out"
    else:
        message = (
            f"Stock cannot pass {MAX_STOCK}: {product.name} has {have}, so at most "
            f"{max(0, MAX_STOCK - have)} can be added"
        )
    return _invalid(message, "delta", product_id=product_id, available=have)


async def movements(product_id: str, limit: int) -> list[StockMovement]:
    """A product's movements, newest first."""
    if limit <= 0:
        return []
    return list(await StockMovement.filter(product_id=product_id).order_by("-id").limit(limit))
