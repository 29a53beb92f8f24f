"""Stock reservation: units leave `Product.stock` when an order is placed and come back when an
order that will not ship gives them back.

Each change is a single conditional UPDATE, never a read followed by a write, so concurrent
checkouts cannot both take the last unit; the database's `stock >= 0` check backs it up.
Rows are touched in product-id order so that two checkouts never wait on each other in a cycle.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from tortoise.expressions import F

from ordergraph.db import get_connection, is_postgres
from ordergraph.db.sql import fetch
from ordergraph.domain.errors import BusinessError, ErrorCode, Problem
from ordergraph.models import Product


@dataclass(frozen=True)
class Reserved:
    name: str
    price: int


# Every line in one statement: the products are locked in id order first (the materialised
# CTE's sort sits below its row locks), then each is taken from under its condition.
_RESERVE_ALL = """
WITH wanted AS MATERIALIZED (
    SELECT p.id, w.quantity FROM products p
    JOIN unnest($1::uuid[], $2::int[]) AS w(id, quantity) ON p.id = w.id
    ORDER BY p.id FOR NO KEY UPDATE OF p
)
UPDATE products p SET stock = p.stock - wanted.quantity FROM wanted
WHERE p.id = wanted.id AND p.active AND p.stock >= wanted.quantity
RETURNING p.id, p.name, p.price
"""


async def reserve_stock(lines: Iterable[tuple[str, int]]) -> dict[str, Reserved]:
    """Take `quantity` units of each product, or raise OUT_OF_STOCK naming every short line.

    Answers each product's name and price as they were when its row was locked, so the order
    is priced from the database without reading the products again. Must run inside a
    transaction: on a short line the caller's rollback returns what the other lines took.
    On PostgreSQL one round trip whatever the number of lines; SQLite, with one writer at a
    time and no round trips, takes them one by one.
    """
    wanted = dict(sorted(lines))
    connection = get_connection()
    if is_postgres(connection):
        rows = await connection.execute_query_dict(
            _RESERVE_ALL, [[uuid.UUID(p) for p in wanted], list(wanted.values())]
        )
    else:
        rows = []
        for product_id, quantity in wanted.items():
            rows += await fetch(
                connection,
                "UPDATE products SET stock = stock - ? WHERE id = ? AND active AND stock >= ? "
                "RETURNING id, name, price",
                quantity,
                uuid.UUID(product_id),
                quantity,
            )
    reserved = {str(uuid.UUID(str(r["id"]))): Reserved(r["name"], r["price"]) for r in rows}
    short = [await _shortage(p, q) for p, q in wanted.items() if p not in reserved]
    if short:
        raise BusinessError(*short)
    return reserved


async def _shortage(product_id: str, quantity: int) -> Problem:
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
