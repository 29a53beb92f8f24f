"""The product catalogue: what can be bought, at what price, and how many are left."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ordergraph.domain.errors import BusinessError, ErrorCode, Problem
from ordergraph.models import Product

# The largest amount of money, in minor units, that the service takes or shows: GraphQL's `Int`
# is a signed 32-bit number, so a price, a line total, a cart's total or an order's total past
# it could not be answered (the columns are 64-bit; the API is not). Every limit on money is
# this one: a price (below), a cart's total (`cart`), an order's total (`checkout`).
MAX_AMOUNT = 2**31 - 1
# One million in major units: a typo guard, not a business rule; never above MAX_AMOUNT.
MAX_PRICE = min(100_000_000, MAX_AMOUNT)
MAX_STOCK = 10_000_000
# Stripe Tax's product tax codes: txcd_ and eight digits.
TAX_CODE = re.compile(r"^txcd_[0-9]{8}$")


@dataclass(frozen=True)
class ProductDraft:
    sku: str
    name: str
    description: str
    price: int
    stock: int
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


async def upsert_product(draft: ProductDraft) -> Product:
    """Create the product with this SKU, or update it; `stock` is the new reservable count."""
    _validate(draft)
    values = {
        "name": draft.name.strip(),
        "description": draft.description,
        "price": draft.price,
        "stock": draft.stock,
        "active": True,
        "tax_code": draft.tax_code,
    }
    product, created = await Product.get_or_create(sku=draft.sku.strip(), defaults=values)
    if not created:
        await Product.filter(id=product.id).update(**values)
        await product.refresh_from_db()
    return product
