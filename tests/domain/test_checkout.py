"""Checkout end to end: cart to PENDING_PAYMENT order, stock reserved, Stripe asked correctly,
and every refusal leaving the shop exactly as it was."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from ordergraph.models import CartItem, Order, OrderItem, OrderStatusChange, Product
from ordergraph.stripe_gateway import StripeGateway
from tests.conftest import Harness, free_port, postgres_only
from tests.utils.helpers import (
    ADD_TO_CART,
    CART,
    ORDER,
    add_to_cart,
    checked_out_order,
    checkout,
    make_product,
    stock_of,
)


async def test_checkout_creates_pending_order_reserves_stock_and_clears_cart(app: Harness) -> None:
    tee = await make_product("TEE", price=2500, stock=10)
    mug = await make_product("MUG", price=1200, stock=3)
    token = app.token("alice")
    await add_to_cart(app, token, tee, 2)
    await add_to_cart(app, token, mug, 3)

    payload = await checkout(app, token)

    assert payload["userErrors"] == []
    assert payload["clientSecret"].startswith("cs_test_")
    order = payload["order"]
    assert order["id"] == payload["orderId"]
    assert order["status"] == "PENDING_PAYMENT"
    assert order["paymentStatus"] == "PENDING"
    assert order["total"] == {"amount": 2 * 2500 + 3 * 1200, "currency": "USD"}
    assert sorted((line["productName"], line["quantity"]) for line in order["lines"]) == [
        ("Product MUG", 3),
        ("Product TEE", 2),
    ]
    assert [h["status"] for h in order["history"]] == ["PENDING_PAYMENT"]
    assert await stock_of(tee) == 8
    assert await stock_of(mug) == 0
    assert await CartItem.filter(user_id="alice").count() == 0
    row = await Order.get(id=payload["orderId"])
    assert row.stripe_checkout_session_id is not None
    assert row.expires_at is not None
    assert await OrderItem.filter(order_id=row.id).count() == 2


async def test_stripe_session_carries_order_user_and_return_url(app: Harness) -> None:
    tee = await make_product("TEE", price=2500, stock=5)
    token = app.token("alice")
    payload = await checked_out_order(app, token, tee, 2)
    order_id = payload["orderId"]

    creates = [r for r in app.emulator.requests if r.path == "/v1/checkout/sessions"]
    assert len(creates) == 1
    params = creates[0].params
    assert params["metadata"] == {"order_id": order_id, "user_id": "alice"}
    assert params["client_reference_id"] == order_id
    assert params["ui_mode"] == "embedded_page"
    assert params["mode"] == "payment"
    assert params["return_url"].startswith(f"http://shop.test/order-success/{order_id}")
    assert params["line_items"][0]["quantity"] == "2" or params["line_items"][0]["quantity"] == 2
    assert int(params["line_items"][0]["price_data"]["unit_amount"]) == 2500
    assert creates[0].idempotency_key == f"checkout-session-{order_id}"
    row = await Order.get(id=order_id)
    assert row.expires_at is not None
    assert int(params["expires_at"]) == int(row.expires_at.timestamp())
    session = app.emulator.sessions[row.stripe_checkout_session_id or ""]
    assert session["client_secret"] == payload["clientSecret"]


async def test_order_is_readable_at_once_and_by_its_owner_only(app: Harness) -> None:
    tee = await make_product("TEE", stock=5)
    alice = app.token("alice")
    payload = await checked_out_order(app, alice, tee)
    order_id = payload["orderId"]

    mine = await app.gql(ORDER, {"id": order_id}, token=alice)
    assert mine["data"]["order"]["status"] == "PENDING_PAYMENT"
    theirs = await app.gql(ORDER, {"id": order_id}, token=app.token("mallory"))
    assert theirs == {"data": {"order": None}}
    staff = await app.gql(ORDER, {"id": order_id}, token=app.token("sam", staff=True))
    assert staff["data"]["order"]["id"] == order_id
    anonymous = await app.gql(ORDER, {"id": order_id})
    assert anonymous["data"] == {"order": None}
    assert anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    garbage = await app.gql(ORDER, {"id": "not-a-uuid"}, token=alice)
    assert garbage == {"data": {"order": None}}


async def test_empty_cart_is_refused_and_changes_nothing(app: Harness) -> None:
    tee = await make_product("TEE", stock=5)
    payload = await checkout(app, app.token("alice"))
    assert payload["orderId"] is None
    assert [e["code"] for e in payload["userErrors"]] == ["CART_EMPTY"]
    assert await Order.all().count() == 0
    assert await stock_of(tee) == 5
    assert app.emulator.requests == []


async def test_short_stock_rolls_back_every_line(app: Harness) -> None:
    tee = await make_product("TEE", stock=5)
    mug = await make_product("MUG", stock=2)
    token = app.token("alice")
    await add_to_cart(app, token, tee, 2)
    await add_to_cart(app, token, mug, 2)
    # Someone else buys a mug between add-to-cart and checkout.
    await Product.filter(id=mug.id).update(stock=1)

    payload = await checkout(app, token)

    assert payload["orderId"] is None
    assert payload["userErrors"] == [
        {
            "code": "OUT_OF_STOCK",
            "message": payload["userErrors"][0]["message"],
            "field": ["cart"],
            "productId": str(mug.id),
            "available": 1,
        }
    ]
    assert await stock_of(tee) == 5  # the tee line's reservation was rolled back
    assert await stock_of(mug) == 1
    assert await Order.all().count() == 0
    assert await CartItem.filter(user_id="alice").count() == 2
    assert app.emulator.requests == []


async def test_add_to_cart_refusals(app: Harness) -> None:
    tee = await make_product("TEE", stock=3)
    token = app.token("alice")
    too_many = await app.gql(ADD_TO_CART, {"p": str(tee.id), "q": 4}, token=token)
    assert too_many["data"]["addToCart"]["userErrors"][0]["code"] == "OUT_OF_STOCK"
    assert too_many["data"]["addToCart"]["userErrors"][0]["available"] == 3
    zero = await app.gql(ADD_TO_CART, {"p": str(tee.id), "q": 0}, token=token)
    assert zero["data"]["addToCart"]["userErrors"][0]["code"] == "INVALID_INPUT"
    unknown = await app.gql(
        ADD_TO_CART, {"p": "00000000-0000-0000-0000-000000000000", "q": 1}, token=token
    )
    assert unknown["data"]["addToCart"]["userErrors"][0]["code"] == "NOT_FOUND"
    assert await CartItem.all().count() == 0
    anonymous = await app.gql(ADD_TO_CART, {"p": str(tee.id), "q": 1})
    assert anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_cart_quantity_and_removal(app: Harness) -> None:
    tee = await make_product("TEE", price=1000, stock=9)
    token = app.token("alice")
    await add_to_cart(app, token, tee, 2)
    await add_to_cart(app, token, tee, 1)
    cart = (await app.gql(CART, token=token))["data"]["cart"]
    assert cart["itemCount"] == 3 and cart["total"]["amount"] == 3000
    body = await app.gql(
        "mutation($p: ID!) { setCartQuantity(productId: $p, quantity: 5) { cart { itemCount } } }",
        {"p": str(tee.id)},
        token=token,
    )
    assert body["data"]["setCartQuantity"]["cart"]["itemCount"] == 5
    body = await app.gql(
        "mutation($p: ID!) { removeFromCart(productId: $p) { cart { itemCount } } }",
        {"p": str(tee.id)},
        token=token,
    )
    assert body["data"]["removeFromCart"]["cart"]["itemCount"] == 0
    assert await CartItem.all().count() == 0


@pytest.mark.parametrize("fault", ["error500", "timeout", "refused"])
async def test_stripe_failure_leaves_stock_cart_and_orders_as_before(
    app: Harness, fault: str
) -> None:
    tee = await make_product("TEE", stock=5)
    token = app.token("alice")
    await add_to_cart(app, token, tee, 2)
    if fault == "error500":
        app.emulator.inject_fault("error500", count=5)
        payload = await checkout(app, token)
    elif fault == "timeout":
        app.emulator.inject_fault("delay", count=1, delay=3.0)
        payload = await checkout(app, token)
    else:
        nowhere = replace(app.settings, stripe_api_base=f"http://127.0.0.1:{free_port()}")
        running = app.asgi.state.services
        app.asgi.state.services = replace(running, gateway=StripeGateway(nowhere))
        try:
            payload = await checkout(app, token)
        finally:
            await app.asgi.state.services.gateway.close()
            app.asgi.state.services = running

    assert payload["orderId"] is None
    assert [e["code"] for e in payload["userErrors"]] == ["PAYMENT_PROVIDER_ERROR"]
    assert await stock_of(tee) == 5
    assert await CartItem.filter(user_id="alice").values_list("product_id", "quantity") == [
        (tee.id, 2)
    ]
    # The attempt is kept for the record, cancelled, holding nothing.
    orders = await Order.all()
    assert [o.status.value for o in orders] == ["cancelled"]
    changes = await OrderStatusChange.filter(order_id=orders[0].id).order_by("id")
    assert [c.status.value for c in changes] == ["pending_payment", "cancelled"]
    assert "payment provider" in (changes[1].reason or "")
    if fault == "timeout":
        # Stripe made the session after we gave up on it: it must not stay payable.
        order_id = str(orders[0].id)
        sessions = await _sessions_settled(app, order_id)
        assert sessions and all(s["status"] == "expired" for s in sessions)


async def _sessions_settled(app: Harness, order_id: str, timeout: float = 15) -> list[dict]:  # type: ignore[type-arg]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        sessions = [
            s for s in app.emulator.sessions.values() if s["metadata"].get("order_id") == order_id
        ]
        settled = sessions and all(s["status"] != "open" for s in sessions)
        if settled or asyncio.get_running_loop().time() > deadline:
            return sessions
        await asyncio.sleep(0.1)


@postgres_only
async def test_concurrent_checkouts_of_the_same_products_never_deadlock(app: Harness) -> None:
    """Every line is reserved in one statement, its rows locked in product-id order, so carts
    holding the same products, filled in opposite orders, all check out: none waits on another
    in a cycle (PostgreSQL would abort one with a deadlock)."""
    products = [await make_product(f"P{n}", stock=100) for n in range(3)]
    tokens = [app.token(f"buyer-{i}") for i in range(24)]
    for i, token in enumerate(tokens):
        for product in products if i % 2 else reversed(products):
            await add_to_cart(app, token, product, 1)

    results = await asyncio.gather(*(checkout(app, t) for t in tokens))

    assert [r["userErrors"] for r in results] == [[]] * len(tokens)
    assert [await stock_of(p) for p in products] == [100 - len(tokens)] * 3
    assert await OrderItem.all().count() == 3 * len(tokens)


@postgres_only
async def test_fifty_concurrent_checkouts_for_ten_units(app: Harness) -> None:
    tee = await make_product("TEE", stock=10)
    tokens = [app.token(f"buyer-{i}") for i in range(50)]
    await asyncio.gather(*(add_to_cart(app, t, tee, 1) for t in tokens))

    results = await asyncio.gather(*(checkout(app, t) for t in tokens))

    placed = [r for r in results if r["orderId"]]
    refused = [r for r in results if not r["orderId"]]
    assert len(placed) == 10
    assert {e["code"] for r in refused for e in r["userErrors"]} == {"OUT_OF_STOCK"}
    assert await stock_of(tee) == 0
    assert await Order.filter(status="pending_payment").count() == 10
    assert await OrderItem.all().count() == 10
