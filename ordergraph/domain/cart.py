"""The shopper's cart: one row per product, quantities always positive."""

from __future__ import annotations

import uuid

from tortoise.exceptions import IntegrityError
from tortoise.expressions import F

from ordergraph.domain.errors import BusinessError, ErrorCode, Problem
from ordergraph.models import CartItem, Product

MAX_LINE_QUANTITY = 1000


async def _product(product_id: str) -> Product:
    try:
        key = uuid.UUID(product_id)
    except ValueError:
        key = None
    product = await Product.filter(id=key, active=True).first() if key else None
    if product is None:
        raise BusinessError.of(ErrorCode.NOT_FOUND, "No such product", field=("productId",))
    return product


def _check_quantity(product: Product, quantity: int) -> None:
    if quantity > MAX_LINE_QUANTITY:
        raise BusinessError.of(
            ErrorCode.INVALID_INPUT,
            f"At most {MAX_LINE_QUANTITY} of one product per order",
            field=("quantity",),
        )
    if quantity > product.stock:
        raise BusinessError(
            Problem(
                ErrorCode.OUT_OF_STOCK,
                f"Only {product.stock} of {product.name} left",
                field=("quantity",),
                product_id=str(product.id),
                available=product.stock,
            )
        )


async def add_to_cart(user_id: str, product_id: str, quantity: int) -> None:
    if quantity < 1:
        raise BusinessError.of(
            ErrorCode.INVALID_INPUT, "Quantity must be at least 1", field=("quantity",)
        )
    product = await _product(product_id)
    current = await CartItem.filter(user_id=user_id, product_id=product.id).first()
    _check_quantity(product, quantity + (current.quantity if current else 0))
    if current is not None:
        await CartItem.filter(id=current.id).update(quantity=F("quantity") + quantity)
        return
    try:
        await CartItem.create(user_id=user_id, product_id=product.id, quantity=quantity)
    except IntegrityError:
        # Another request added the same product a moment ago.
        await CartItem.filter(user_id=user_id, product_id=product.id).update(
            quantity=F("quantity") + quantity
        )


async def set_cart_quantity(user_id: str, product_id: str, quantity: int) -> None:
    """Set the line's quantity; 0 removes it."""
    if quantity < 0:
        raise BusinessError.of(
            ErrorCode.INVALID_INPUT, "Quantity cannot be negative", field=("quantity",)
        )
    product = await _product(product_id)
    if quantity == 0:
        await CartItem.filter(user_id=user_id, product_id=product.id).delete()
        return
    _check_quantity(product, quantity)
    changed = await CartItem.filter(user_id=user_id, product_id=product.id).update(
        quantity=quantity
    )
    if not changed:
        try:
            await CartItem.create(user_id=user_id, product_id=product.id, quantity=quantity)
        except IntegrityError:
            await CartItem.filter(user_id=user_id, product_id=product.id).update(quantity=quantity)


async def remove_from_cart(user_id: str, product_id: str) -> None:
    try:
        key = uuid.UUID(product_id)
    except ValueError:
        raise BusinessError.of(
            ErrorCode.NOT_FOUND, "No such product", field=("productId",)
        ) from None
    await CartItem.filter(user_id=user_id, product_id=key).delete()


async def cart_lines(user_id: str) -> list[CartItem]:
    return await CartItem.filter(user_id=user_id).select_related("product").order_by("id")
