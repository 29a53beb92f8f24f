"""The signed-in shopper's cart, and turning it into an order (`checkout`)."""

from __future__ import annotations

import strawberry

from ordergraph.domain import cart as cart_domain
from ordergraph.domain import checkout as checkout_domain
from ordergraph.resolvers.base import (
    payload,
    require_user,
)
from ordergraph.resolvers.context import Info
from ordergraph.resolvers.types import (
    Cart,
    CartPayload,
    CheckoutPayload,
    Order,
)


async def _cart(user_id: str, info: Info) -> Cart:
    return Cart.from_items(
        await cart_domain.cart_lines(user_id), info.context.settings.shop_currency
    )


async def my_cart(info: Info) -> Cart:
    identity = await require_user(info)
    return await _cart(identity.user_id, info)


async def add_to_cart(info: Info, product_id: strawberry.ID, quantity: int = 1) -> CartPayload:
    identity = await require_user(info)

    async def run() -> CartPayload:
        await cart_domain.add_to_cart(identity.user_id, product_id, quantity, info.context.settings)
        return CartPayload(cart=await _cart(identity.user_id, info))

    return await payload(CartPayload, run())


async def set_cart_quantity(info: Info, product_id: strawberry.ID, quantity: int) -> CartPayload:
    identity = await require_user(info)

    async def run() -> CartPayload:
        await cart_domain.set_cart_quantity(
            identity.user_id, product_id, quantity, info.context.settings
        )
        return CartPayload(cart=await _cart(identity.user_id, info))

    return await payload(CartPayload, run())


async def remove_from_cart(info: Info, product_id: strawberry.ID) -> CartPayload:
    identity = await require_user(info)

    async def run() -> CartPayload:
        await cart_domain.remove_from_cart(identity.user_id, product_id)
        return CartPayload(cart=await _cart(identity.user_id, info))

    return await payload(CartPayload, run())


async def checkout(info: Info) -> CheckoutPayload:
    identity = await require_user(info)
    context = info.context

    async def run() -> CheckoutPayload:
        result = await checkout_domain.checkout(
            identity.user_id, identity.email, context.settings, context.services.gateway
        )
        return CheckoutPayload(
            order_id=strawberry.ID(str(result.order.id)),
            client_secret=result.client_secret,
            order=Order.from_model(result.order),
        )

    return await payload(CheckoutPayload, run())
