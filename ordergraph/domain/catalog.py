"""The product catalogue: what can be bought, at what price, and how many are left."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError

from ordergraph.db import transaction
from ordergraph.db.sql import fetch
from ordergraph.domain import stock
from ordergraph.domain.errors import BusinessError, ErrorCode, Problem
from ordergraph.domain.stock import MAX_STOCK
from ordergraph.models import Product

# The largest amount of money, in minor units, that the service takes or shows: GraphQL's `Int`
# is a signed 32-bit number, so a price, a line total, a cart's total or an order's total past
# it could not be answered (the columns are 64-bit; the API is not). Every limit on money is
# this one: a price (below), a cart's total (`cart`), an order's total (`checkout`).
MAX_AMOUNT = 2**31 - 1
# One million in major units: a typo guard, not a business rule; never above MAX_AMOUNT.
MAX_PRICE = min(100_000_000, MAX_AMOUNT)
# Stripe Tax's product tax codes: txcd_ and eight digits.
TAX_CODE = re.compile(r"^txcd_[0-9]{8}$")


@dataclass(frozen=True)
class ProductDraft:
    sku: str
    name: str
    description: str
    price: int
    stock: int
    active: bool = True
    tax_code: str | None = None


def _validate(draft: ProductDraft) -> None:
    problems = []
    if not draft.sku.strip() or len(draft.sku) > 64:
        problems.append(("sku", "SKU must be 1 to 64 characters"))
    if not draft.name.strip() or len(draft.name) > 200:
        problems.append(("name", "Name must be 1 to 200 characters"))
    if len(draft.description) > 10_000:
        problems.append(("description", "Description must be at most 10,000 characters"))
    if not 0 <= draft.price <= MAX_PRICE:
        problems.append(("price", f"Price must be between 0 and {MAX_PRICE} minor units"))
    if not 0 <= draft.stock <= MAX_STOCK:
        problems.append(("stock", f"Stock must be between 0 and {MAX_STOCK}"))
    if draft.tax_code is not None and not TAX_CODE.match(draft.tax_code):
        problems.append(("taxCode", "A tax code is txcd_ and eight digits"))
    for name in ("sku", "name", "description"):
        if "\x00" in getattr(draft, name):
            problems.append((name, "Text cannot contain NUL characters"))
    if problems:
        raise BusinessError(
            *(Problem(ErrorCode.INVALID_INPUT, msg, field=("input", f)) for f, msg in problems)
        )


async def _locked_stock(connection: BaseDBAsyncClient, sku: str) -> tuple[str, int] | None:
    """The product with this SKU and its stock, its row locked until the transaction ends: a
    write that changes nothing takes PostgreSQL's row lock (and SQLite's one write lock), and
    its RETURNING reads the stock under that lock, where a checkout cannot move it."""
    rows = await fetch(
        connection, "UPDATE products SET stock = stock WHERE sku = ? RETURNING id, stock", sku
    )
    return (str(rows[0]["id"]), int(rows[0]["stock"])) if rows else None


async def upsert_product(draft: ProductDraft, *, actor: str = "system") -> Product:
    """Create the product with this SKU, or update it; `stock` is the new reservable count and
    `active` False archives it.

    A stock that the upsert sets (on a new product, or a different one than the product had)
    is a movement (reason "upsert", the actor's name) of `new - old`, `old` read under the
    row's lock, so units that checkouts take meanwhile are never counted in it.
    """
    _validate(draft)
    sku = draft.sku.strip()
    values: dict[str, Any] = {
        "name": draft.name.strip(),
        "description": draft.description,
        "price": draft.price,
        "stock": draft.stock,
        "active": draft.active,
        "tax_code": draft.tax_code,
    }
    async with transaction() as connection:
        current = await _locked_stock(connection, sku)
        if current is None:
            try:
                async with transaction(savepoint=True):
                    product = await Product.create(sku=sku, **values)
            except IntegrityError:  # another upsert created this SKU meanwhile
                current = await _locked_stock(connection, sku)
                if current is None:
                    raise
            else:
                if draft.stock:
                    await stock.record(
                        product.id, draft.stock, draft.stock, reason="upsert", actor=actor
                    )
                return product
        product_id, before = current
        await Product.filter(id=product_id).update(**values)
        if draft.stock != before:
            await stock.record(
                product_id, draft.stock - before, draft.stock, reason="upsert", actor=actor
            )
        return await Product.get(id=product_id)
