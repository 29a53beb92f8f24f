"""Shared steps of the end-to-end tests: stock the shop, fill a cart, check out, pay."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from ordergraph.db import transaction
from ordergraph.domain.order_state import change_order, lock_order
from ordergraph.models import Product

ORDER_FIELDS = """
  id status paymentStatus isLocked paidAt expiresAt carrier trackingNumber
  total { amount currency }
  lines { productId productName unitPrice { amount currency } quantity lineTotal { amount } }
  shippingAddress { name line1 line2 city state postalCode country }
  history { status reason at }
"""

ADD_TO_CART = """
mutation($p: ID!, $q: Int!) {
  addToCart(productId: $p, quantity: $q) {
    cart { itemCount total { amount currency } lines { quantity product { id stock } } }
    userErrors { code message field productId available }
  }
}"""

CHECKOUT = (
    """
mutation { checkout {
  orderId clientSecret
  order { %s }
  userErrors { code message field productId available }
} }"""
    % ORDER_FIELDS
)

ORDER = "query($id: ID!) { order(id: $id) { %s } }" % ORDER_FIELDS
CART = "{ cart { itemCount total { amount } lines { quantity product { id } } } }"


async def make_product(
    sku: str = "TEE-1", *, price: int = 2500, stock: int = 10, name: str | None = None
) -> Product:
    return await Product.create(sku=sku, name=name or f"Product {sku}", price=price, stock=stock)


async def stock_of(product: Product) -> int:
    await product.refresh_from_db()
    return product.stock


async def add_to_cart(app: Any, token: str, product: Product, quantity: int = 1) -> dict[str, Any]:
    body = await app.gql(ADD_TO_CART, {"p": str(product.id), "q": quantity}, token=token)
    assert "errors" not in body, body
    payload: dict[str, Any] = body["data"]["addToCart"]
    return payload


async def checkout(app: Any, token: str) -> dict[str, Any]:
    body = await app.gql(CHECKOUT, token=token)
    assert "errors" not in body, body
    payload: dict[str, Any] = body["data"]["checkout"]
    return payload


async def checked_out_order(
    app: Any, token: str, product: Product, quantity: int = 1
) -> dict[str, Any]:
    await add_to_cart(app, token, product, quantity)
    payload = await checkout(app, token)
    assert payload["userErrors"] == [], payload
    return payload


async def run_ordergraph(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """The `ordergraph` command in a subprocess, without blocking this event loop (the emulator
    that answers the command may be served by it)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ordergraph.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def change_order_now(order_id: str, **change: Any) -> None:
    """`change` applied to the order through the state machine, as the test's own actor."""
    async with transaction():
        order = await lock_order(order_id)
        assert order is not None
        await change_order(order, reason="test", actor="test", **change)
