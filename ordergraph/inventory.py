"""Stock reservation: units leave `Product.stock` when an order is placed and come back when an
order that will not ship gives them back.

Each change is a single conditional UPDATE, never a read followed by a write, so concurrent
checkouts cannot both take the last unit; the database's `stock >= 0` check backs it up.
Rows are touched in product-id order so that two checkouts never wait on each other in a cycle.
"""

from __future__ import annotations

from collections.abc import Iterable

from tortoise.expressions import F

from ordergraph.errors import BusinessError, ErrorCode, Problem
from ordergraph.models import Product


async def reserve_stock(lines: Iterable[tuple[str, int]]) -> None:
    """Take `quantity` units of each product, or raise OUT_OF_STOCK naming every short line.

    Must run inside a transaction: on a short line the caller's rollback returns what the
    earlier lines took.
    """
    short: list[Problem] = []
    for product_id, quantity in sorted(lines):
        taken = await Product.filter(id=product_id, active=True, stock__gte=quantity).update(
            stock=F("stock") - quantity
        )
        if taken == 0:
            product = await Product.filter(id=product_id).only("name", "stock", "active").first()
            available = product.stock if product is not None and product.active else 0
            name = product.name if product is not None else product_id
            short.append(
                Problem(
                    ErrorCode.OUT_OF_STOCK,
                    f"Only {available} of {name} left, {quantity} wanted",
                    field=("cart",),
                    product_id=str(product_id),
                    available=available,
                )
            )
    if short:
        raise BusinessError(*short)


async def release_stock(lines: Iterable[tuple[str, int]]) -> None:
    for product_id, quantity in sorted(lines):
        await Product.filter(id=product_id).update(stock=F("stock") + quantity)
