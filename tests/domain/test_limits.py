"""Rule 6, no hoarding: the cart's and the shopper's limits hold under concurrent requests, and
a refusal changes nothing.

Units of one product per line and the 32-bit money ceiling are tried on the `app` harness with
the default settings; lines per cart and unpaid units on a real `ordergraph serve` process of
their own, started with small limits from its environment (CART_MAX_LINES,
MAX_UNPAID_UNITS_PER_SHOPPER) and without the checkout rate limit, which would otherwise refuse
a concurrent burst of checkouts before the limit under test is reached.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ordergraph.domain import catalog as catalog_domain
from ordergraph.domain.catalog import MAX_AMOUNT
from ordergraph.domain.errors import BusinessError, ErrorCode
from ordergraph.models import CartItem, Order, OrderItem, Product
from ordergraph.stripe_emulator import StripeEmulator
from tests.conftest import Harness, SmtpServer, service_env
from tests.utils.dbstate import constraint_violations, snapshot
from tests.utils.helpers import add_to_cart, checkout, make_product, stock_of
from tests.utils.live import ServerProcess, unique

CART_MAX_LINES = 5
MAX_UNPAID_UNITS = 50

SET_QUANTITY = """
mutation($p: ID!, $q: Int!) {
  setCartQuantity(productId: $p, quantity: $q) {
    cart { itemCount total { amount } lines { quantity product { id } } }
    userErrors { code message field productId }
  }
}"""

UPSERT = """mutation($input: ProductInput!) {
  upsertProduct(input: $input) {
    product { id price { amount } }
    userErrors { code message field }
  }
}"""


@pytest.fixture(scope="module")
async def limited(
    harness: Harness,
    database_url: str,
    stripe_server: tuple[StripeEmulator, str],
    smtp: SmtpServer,
) -> AsyncIterator[Harness]:
    """The service with small limits, as `ordergraph serve` on the harness's database: the
    harness with its URL and settings (the tests read the limits from them)."""
    env = service_env(
        database_url,
        stripe_server[1],
        smtp.port,
        CART_MAX_LINES=str(CART_MAX_LINES),
        MAX_UNPAID_UNITS_PER_SHOPPER=str(MAX_UNPAID_UNITS),
        CHECKOUT_RATE_PER_MINUTE="0",
        SWEEP_INTERVAL_SECONDS="0",
    )
    process = ServerProcess(env, "limits")
    await process.start()
    try:
        settings = dataclasses.replace(
            harness.settings,
            cart_max_lines=CART_MAX_LINES,
            max_unpaid_units_per_shopper=MAX_UNPAID_UNITS,
            checkout_rate_per_minute=0,
        )
        yield dataclasses.replace(harness, url=process.url, settings=settings)
    finally:
        await process.stop()


@pytest.fixture
async def small(limited: Harness, app: Harness) -> Harness:
    """The small-limits service over an emptied database (the `app` fixture empties it)."""
    return limited


def codes(payload: dict[str, Any]) -> list[str]:
    return [e["code"] for e in payload["userErrors"]]


async def set_quantity(app: Harness, token: str, product: Product, quantity: int) -> Any:
    body = await app.gql(SET_QUANTITY, {"p": str(product.id), "q": quantity}, token=token)
    assert "errors" not in body, body
    return body["data"]["setCartQuantity"]


async def cart_of(user_id: str) -> dict[str, int]:
    return {str(c.product_id): c.quantity for c in await CartItem.filter(user_id=user_id)}


# Units of one product per line (MAX_UNITS_PER_LINE, 1,000 by default).


@pytest.mark.parametrize("each", [1000, 300, 7])
async def test_concurrent_adds_never_pass_the_units_per_line(app: Harness, each: int) -> None:
    limit = app.settings.max_units_per_line
    tee = await make_product("TEE", stock=100_000)
    token = app.token("piler")

    results = await asyncio.gather(*(add_to_cart(app, token, tee, each) for _ in range(10)))

    added = [r for r in results if not r["userErrors"]]
    refused = [r for r in results if r["userErrors"]]
    line = (await CartItem.get(user_id="piler", product_id=tee.id)).quantity
    assert line <= limit
    assert line == each * len(added) == min(10, limit // each) * each
    assert all(codes(r) == ["LIMIT_EXCEEDED"] for r in refused), refused
    assert all(str(limit) in r["userErrors"][0]["message"] for r in refused)
    assert len(refused) == 10 - min(10, limit // each)
    assert await stock_of(tee) == 100_000


async def test_concurrent_sets_and_adds_never_pass_the_units_per_line(app: Harness) -> None:
    limit = app.settings.max_units_per_line
    tee = await make_product("TEE", stock=100_000)
    token = app.token("setter")
    await add_to_cart(app, token, tee, 1)

    results = await asyncio.gather(
        *(set_quantity(app, token, tee, limit) for _ in range(5)),
        *(add_to_cart(app, token, tee, limit // 2) for _ in range(5)),
        set_quantity(app, token, tee, limit + 1),
    )

    line = (await CartItem.get(user_id="setter", product_id=tee.id)).quantity
    assert line <= limit
    assert {c for r in results for c in codes(r)} <= {"LIMIT_EXCEEDED"}
    assert codes(results[-1]) == ["LIMIT_EXCEEDED"]
    assert await constraint_violations() == []


async def test_a_refused_add_changes_nothing(app: Harness) -> None:
    tee = await make_product("TEE", stock=5000)
    token = app.token("careful")
    await add_to_cart(app, token, tee, 600)
    before = await snapshot(app.emulator)

    over = await add_to_cart(app, token, tee, 401)
    at_once = await add_to_cart(app, token, tee, app.settings.max_units_per_line + 1)
    set_over = await set_quantity(app, token, tee, app.settings.max_units_per_line + 1)

    assert codes(over) == codes(at_once) == codes(set_over) == ["LIMIT_EXCEEDED"]
    assert await snapshot(app.emulator) == before
    assert codes(await add_to_cart(app, token, tee, 400)) == []
    assert await cart_of("careful") == {str(tee.id): 1000}


# Lines per cart (CART_MAX_LINES), on the small-limits service.


async def test_concurrent_adds_of_distinct_products_never_pass_the_lines_per_cart(
    small: Harness,
) -> None:
    user = unique("liner")
    token = small.token(user)
    products = [await make_product(f"P{i:02}", stock=10) for i in range(3 * CART_MAX_LINES)]

    results = await asyncio.gather(*(add_to_cart(small, token, p, 2) for p in products))

    added = [r for r in results if not r["userErrors"]]
    refused = [r for r in results if r["userErrors"]]
    assert len(await cart_of(user)) == len(added) == CART_MAX_LINES
    assert all(codes(r) == ["LIMIT_EXCEEDED"] for r in refused), refused
    assert all(str(CART_MAX_LINES) in r["userErrors"][0]["message"] for r in refused)

    # A full cart still takes more of what it holds, and refuses a new product however asked.
    kept = await cart_of(user)
    held = next(p for p in products if str(p.id) in kept)
    other = next(p for p in products if str(p.id) not in kept)
    assert codes(await add_to_cart(small, token, held, 3)) == []
    before = await snapshot(small.emulator)
    assert codes(await set_quantity(small, token, other, 1)) == ["LIMIT_EXCEEDED"]
    assert codes(await add_to_cart(small, token, other, 1)) == ["LIMIT_EXCEEDED"]
    assert await snapshot(small.emulator) == before


async def test_the_lines_per_cart_are_per_shopper(small: Harness) -> None:
    products = [await make_product(f"P{i:02}", stock=100) for i in range(CART_MAX_LINES + 1)]
    users = [unique("shopper") for _ in range(4)]

    results = await asyncio.gather(
        *(add_to_cart(small, small.token(u), p, 1) for u in users for p in products)
    )

    assert Counter(c for r in results for c in codes(r)) == {"LIMIT_EXCEEDED": len(users)}
    for user in users:
        assert len(await cart_of(user)) == CART_MAX_LINES


# Units held in unpaid orders (MAX_UNPAID_UNITS_PER_SHOPPER), on the small-limits service.


async def unpaid_units(user_id: str) -> int:
    orders = await Order.filter(user_id=user_id, status="pending_payment").values_list(
        "id", flat=True
    )
    return sum(i.quantity for i in await OrderItem.filter(order_id__in=list(orders)))


async def test_concurrent_checkouts_never_hold_more_unpaid_units_than_the_limit(
    small: Harness,
) -> None:
    user = unique("hoarder")
    token = small.token(user)
    products = [await make_product(f"P{i}", stock=1000) for i in range(CART_MAX_LINES)]
    each, rounds = 10, 12  # 120 units offered, 50 may be held unpaid

    async def add_then_checkout(product: Product) -> dict[str, Any]:
        assert codes(await add_to_cart(small, token, product, each)) == []
        return await checkout(small, token)

    results = await asyncio.gather(
        *(add_then_checkout(products[i % len(products)]) for i in range(rounds))
    )

    placed = [r for r in results if r["orderId"]]
    assert {c for r in results if not r["orderId"] for c in codes(r)} <= {
        "LIMIT_EXCEEDED",
        "CART_EMPTY",
    }
    held = await unpaid_units(user)
    assert held <= MAX_UNPAID_UNITS
    # Every unit added is in an unpaid order or still in the cart: a refused checkout gave
    # its cart back, and no order was made (and cancelled) for it.
    in_cart = sum((await cart_of(user)).values())
    assert held + in_cart == each * rounds
    assert await Order.filter(user_id=user).count() == len(placed)
    for product in products:
        taken = sum(
            i.quantity for i in await OrderItem.filter(product_id=product.id, order__user_id=user)
        )
        assert await stock_of(product) == 1000 - taken

    # Whatever the race left, the cart now holds what cannot be held unpaid: refused, unchanged.
    before = await snapshot(small.emulator)
    refused = await checkout(small, token)
    assert codes(refused) == ["LIMIT_EXCEEDED"]
    assert str(MAX_UNPAID_UNITS) in refused["userErrors"][0]["message"]
    assert await snapshot(small.emulator) == before

    # Cut to what still fits, the cart checks out, and the shopper then holds the limit.
    room = MAX_UNPAID_UNITS - held
    for product_id, quantity in (await cart_of(user)).items():
        keep = min(quantity, room)
        room -= keep
        product = next(p for p in products if str(p.id) == product_id)
        assert codes(await set_quantity(small, token, product, keep)) == []
    if await cart_of(user):
        assert (await checkout(small, token))["orderId"]
    assert await unpaid_units(user) == MAX_UNPAID_UNITS
    assert await constraint_violations() == []


async def test_a_checkout_within_the_unpaid_limit_passes_and_the_next_is_refused(
    small: Harness,
) -> None:
    user = unique("steady")
    token = small.token(user)
    tee = await make_product("TEE", stock=1000)
    await add_to_cart(small, token, tee, MAX_UNPAID_UNITS - 1)
    assert (await checkout(small, token))["orderId"]
    await add_to_cart(small, token, tee, 2)
    before = await snapshot(small.emulator)

    refused = await asyncio.gather(*(checkout(small, token) for _ in range(5)))

    assert all(codes(r) == ["LIMIT_EXCEEDED"] for r in refused), refused
    assert await snapshot(small.emulator) == before
    await set_quantity(small, token, tee, 1)
    assert (await checkout(small, token))["orderId"]
    assert await unpaid_units(user) == MAX_UNPAID_UNITS


# Money past what GraphQL's 32-bit Int can show (MAX_AMOUNT).

BIG = catalog_domain.MAX_PRICE  # the dearest price a product may have


async def test_a_cart_past_the_largest_amount_is_refused_at_the_add(app: Harness) -> None:
    gold = await make_product("GOLD", price=BIG, stock=1000)
    pin = await make_product("PIN", price=BIG // 2, stock=1000)
    token = app.token("rich")
    fits = MAX_AMOUNT // BIG
    assert codes(await add_to_cart(app, token, gold, fits)) == []
    before = await snapshot(app.emulator)

    refused = [
        await add_to_cart(app, token, gold, 1),
        await add_to_cart(app, token, pin, 1),
        await set_quantity(app, token, gold, fits + 1),
    ]

    for payload in refused:
        assert codes(payload) == ["LIMIT_EXCEEDED"], payload
        assert str(MAX_AMOUNT) in payload["userErrors"][0]["message"]
    assert await snapshot(app.emulator) == before
    cart = (await app.gql("{ cart { total { amount } } }", token=token))["data"]["cart"]
    assert cart["total"]["amount"] == fits * BIG <= MAX_AMOUNT
    # A cart can always be made smaller.
    assert codes(await set_quantity(app, token, gold, fits - 1)) == []


async def test_concurrent_adds_never_pass_the_largest_amount(app: Harness) -> None:
    products = [await make_product(f"G{i}", price=BIG, stock=1000) for i in range(8)]
    token = app.token("spree")

    results = await asyncio.gather(*(add_to_cart(app, token, p, 3) for p in products))

    total = sum(
        line.quantity * line.product.price
        for line in await CartItem.filter(user_id="spree").select_related("product")
    )
    assert total == 7 * 3 * BIG <= MAX_AMOUNT
    assert Counter(c for r in results for c in codes(r)) == {"LIMIT_EXCEEDED": 1}
    assert await stock_of(products[0]) == 1000


async def test_an_order_past_the_largest_amount_is_refused_and_changes_nothing(
    app: Harness,
) -> None:
    """Prices may rise after the add; checkout refuses the total before any order is made."""
    gold = await make_product("GOLD", price=BIG, stock=100)
    tin = await make_product("TIN", price=1, stock=100)
    token = app.token("lucky")
    fits = MAX_AMOUNT // BIG
    await add_to_cart(app, token, gold, fits)
    await add_to_cart(app, token, tin, 1)
    await Product.filter(id=tin.id).update(price=BIG)  # staff raised it meanwhile
    before = await snapshot(app.emulator)

    refused = await checkout(app, token)

    assert codes(refused) == ["LIMIT_EXCEEDED"] and refused["orderId"] is None
    assert str(MAX_AMOUNT) in refused["userErrors"][0]["message"]
    assert await snapshot(app.emulator) == before


async def test_upsert_product_refuses_a_price_past_the_largest_amount(app: Harness) -> None:
    staff = app.token("sam", staff=True)
    item = {"sku": "DEAR", "name": "Dear", "stock": 1}

    too_dear = await app.gql(UPSERT, {"input": {**item, "price": MAX_AMOUNT}}, token=staff)
    past_int = await app.gql(UPSERT, {"input": {**item, "price": MAX_AMOUNT + 1}}, token=staff)
    with pytest.raises(BusinessError) as raised:
        await catalog_domain.upsert_product(
            catalog_domain.ProductDraft("DEAR", "Dear", "", MAX_AMOUNT + 1, 1)
        )

    errors = too_dear["data"]["upsertProduct"]["userErrors"]
    assert [(e["code"], e["field"]) for e in errors] == [("INVALID_INPUT", ["input", "price"])]
    assert past_int["errors"] and past_int.get("data") is None, past_int
    assert raised.value.code == ErrorCode.INVALID_INPUT
    assert await Product.all().count() == 0
    fine = await app.gql(UPSERT, {"input": {**item, "price": BIG}}, token=staff)
    assert fine["data"]["upsertProduct"]["product"]["price"]["amount"] == BIG


def test_every_amount_ceiling_is_the_largest_int() -> None:
    assert MAX_AMOUNT == 2**31 - 1
    assert catalog_domain.MAX_PRICE <= MAX_AMOUNT
