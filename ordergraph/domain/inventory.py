"""Stock reservation: units leave `Product.stock` when an order is placed and come back when an
order that will not ship gives them back.

Each change is a single conditional UPDATE, never a read followed by a write, so concurrent
checkouts cannot both take the last unit; the database's `stock >= 0` check backs it up.
Rows are touched in product-id order so that two checkouts never wait on each other in a cycle.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from tortoise.expressions import F

from ordergraph.db import get_connection
from ordergraph.db.sql import fetch_each
from ordergraph.domain.errors import BusinessError, ErrorCode, Problem
from ordergraph.models import Product


async def reserve_stock(lines: Iterable[tuple[str, int]]) -> None:
    """Take `quantity` units of each product, or raise OUT_OF_STOCK naming every short line.

    Must run inside a transaction: on a short line the caller's rollback returns what the
    earlier lines took. Each product's row stays locked until the commit, so a checkout
    reserves last, right before it commits.
    """
    # Every checkout locks products in the same order (UUIDs sort as PostgreSQL sorts them).
    wanted = sorted((uuid.UUID(product_id), quantity) for product_id, quantity in lines)
    rows = await fetch_each(
        get_connection(),
        "UPDATE products SET stock = stock - ? WHERE id = ? AND active AND stock >= ? RETURNING id",
        [[quantity, product_id, quantity] for product_id, quantity in wanted],
    )
    reserved = {uuid.UUID(str(row["id"])) for row in rows}
    short = [await _shortage(pid, quantity) for pid, quantity in wanted if pid not in reserved]
    if short:
        raise BusinessError(*short)


async def _shortage(product_id: uuid.UUID, quantity: int) -> Problem:
    """Why a line could not be reserved: too few units, or a product no longer sold (archived,
    or gone), which has none. OUT_OF_STOCK with `available` either way, so that a client that
    sets each short line to what is available removes it."""
    product = await Product.filter(id=product_id).only("name", "stock", "active").first()
    if product is None or not product.active:
        name = product.name if product is not None else "A product in your cart"
        message = f"{name} is no longer sold; remove it from your cart"
        available = 0
    else:
        available = product.stock
        message = f"Only {available} of {product.name} left, {quantity} wanted"
    return Problem(
        ErrorCode.OUT_OF_STOCK,
        message,
        field=("cart",),
        product_id=str(product_id),
        available=available,
    )


async def release_stock(lines: Iterable[tuple[str, int]]) -> None:
    for product_id, quantity in sorted(lines):
        await Product.filter(id=product_id).update(stock=F("stock") + quantity)
