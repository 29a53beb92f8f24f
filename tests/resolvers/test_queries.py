"""The catalogue and order lists: pagination, staff-only access, and a fixed number of SQL
queries however many orders a page holds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from ordergraph.models import Order, OrderItem, OrderStatusChange, Product, User
from tests.conftest import Harness
from tests.utils.helpers import make_product

PRODUCTS = """query($first: Int, $after: String) {
  products(first: $first, after: $after) {
    edges { cursor node { sku name price { amount currency } stock } }
    pageInfo { hasNextPage endCursor }
  }
}"""

UPSERT = """mutation($input: ProductInput!) {
  upsertProduct(input: $input) {
    product { id sku name description price { amount } stock }
    userErrors { code message field }
  }
}"""

MY_ORDERS = """query($first: Int, $after: String) {
  myOrders(first: $first, after: $after) {
    edges { cursor node { id total { amount } lines { productName quantity } history { status } } }
    pageInfo { hasNextPage endCursor }
  }
}"""

ORDERS = """query($status: OrderStatus, $first: Int) {
  orders(status: $status, first: $first) {
    edges { node { id status lines { quantity } history { status } } }
    pageInfo { hasNextPage }
  }
}"""


async def test_products_page_through_the_catalogue(app: Harness) -> None:
    for i in range(5):
        await make_product(f"SKU-{i}", price=100 * (i + 1), stock=i)
    seen: list[str] = []
    after = None
    while True:
        body = await app.gql(PRODUCTS, {"first": 2, "after": after})
        page = body["data"]["products"]
        seen += [edge["node"]["sku"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == [f"SKU-{i}" for i in range(5)]
    bad = await app.gql(PRODUCTS, {"first": 1000})
    assert bad["errors"][0]["extensions"]["code"] == "INVALID_INPUT"
    garbage = await app.gql(PRODUCTS, {"first": 2, "after": "%%%"})
    assert garbage["errors"][0]["extensions"]["code"] == "INVALID_INPUT"


async def test_upsert_product_is_staff_only_and_validated(app: Harness) -> None:
    product = {"sku": "NEW-1", "name": "New thing", "price": 999, "stock": 4}
    shopper = await app.gql(UPSERT, {"input": product}, token=app.token("alice"))
    assert shopper["data"]["upsertProduct"]["userErrors"][0]["code"] == "FORBIDDEN"
    assert await Product.all().count() == 0

    staff = app.token("sam", staff=True)
    created = await app.gql(UPSERT, {"input": product}, token=staff)
    assert created["data"]["upsertProduct"]["userErrors"] == []
    assert created["data"]["upsertProduct"]["product"]["description"] == ""
    updated = await app.gql(UPSERT, {"input": {**product, "price": 1500, "stock": 9}}, token=staff)
    assert (
        updated["data"]["upsertProduct"]["product"]["id"]
        == (created["data"]["upsertProduct"]["product"]["id"])
    )
    row = await Product.get(sku="NEW-1")
    assert (row.price, row.stock) == (1500, 9)

    invalid = await app.gql(
        UPSERT, {"input": {"sku": "", "name": "x", "price": -1, "stock": -5}}, token=staff
    )
    errors = invalid["data"]["upsertProduct"]["userErrors"]
    assert {tuple(e["field"]) for e in errors} == {
        ("input", "sku"),
        ("input", "price"),
        ("input", "stock"),
    }
    assert {e["code"] for e in errors} == {"INVALID_INPUT"}
    assert await Product.all().count() == 1


async def _orders_for(user_id: str, count: int, product: Product) -> list[Order]:
    await User.get_or_create(id=user_id, defaults={"email": f"{user_id}@example.com"})
    orders = []
    for _ in range(count):
        order = await Order.create(user_id=user_id, currency="USD", total=product.price * 2)
        await OrderItem.bulk_create(
            [
                OrderItem(
                    order_id=order.id,
                    product_id=product.id,
                    product_name=product.name,
                    unit_price=product.price,
                    quantity=q,
                )
                for q in (1, 1)
            ]
        )
        await OrderStatusChange.create(
            order_id=order.id, status=order.status, payment_status=order.payment_status
        )
        orders.append(order)
    return orders


class QueryCounter(logging.Handler):
    """Counts the statements of requests, not those of the service's own background tasks.

    The mail sender and the sweeper (tasks named ``ordergraph-…``) poll while a request runs.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.statements: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        task = asyncio.current_task()
        if task is not None and task.get_name().startswith("ordergraph-"):
            return
        message = record.getMessage()
        if message.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE")):
            self.statements.append(message)


@contextmanager
def counting_queries() -> Iterator[QueryCounter]:
    logger = logging.getLogger("tortoise.db_client")
    counter = QueryCounter()
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(counter)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)


async def test_listing_orders_costs_a_fixed_number_of_queries(app: Harness) -> None:
    tee = await make_product("TEE", stock=1)
    await _orders_for("alice", 50, tee)
    token = app.token("alice")
    await app.gql(MY_ORDERS, {"first": 1}, token=token)  # the user row is known from here on

    with counting_queries() as small:
        one = await app.gql(MY_ORDERS, {"first": 1}, token=token)
    with counting_queries() as large:
        fifty = await app.gql(MY_ORDERS, {"first": 50}, token=token)

    assert len(one["data"]["myOrders"]["edges"]) == 1
    edges = fifty["data"]["myOrders"]["edges"]
    assert len(edges) == 50
    assert all(len(edge["node"]["lines"]) == 2 for edge in edges)
    assert all(edge["node"]["history"] == [{"status": "PENDING_PAYMENT"}] for edge in edges)
    assert len(large.statements) == len(small.statements) == 3, large.statements


async def test_my_orders_pages_newest_first_and_only_mine(app: Harness) -> None:
    tee = await make_product("TEE", stock=1)
    mine = await _orders_for("alice", 5, tee)
    await _orders_for("bob", 3, tee)
    token = app.token("alice")
    seen: list[str] = []
    after = None
    while True:
        page = (await app.gql(MY_ORDERS, {"first": 2, "after": after}, token=token))["data"][
            "myOrders"
        ]
        seen += [edge["node"]["id"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    expected = sorted(mine, key=lambda o: (o.created_at, str(o.id)), reverse=True)
    assert seen == [str(o.id) for o in expected]


async def test_orders_is_for_staff_only(app: Harness) -> None:
    tee = await make_product("TEE", stock=1)
    await _orders_for("alice", 2, tee)
    await _orders_for("bob", 1, tee)
    shopper = await app.gql(ORDERS, {}, token=app.token("alice"))
    assert shopper["data"] is None
    assert shopper["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    anonymous = await app.gql(ORDERS, {})
    assert anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    staff = await app.gql(ORDERS, {"status": "PENDING_PAYMENT"}, token=app.token("sam", staff=True))
    assert len(staff["data"]["orders"]["edges"]) == 3
    none = await app.gql(ORDERS, {"status": "SHIPPED"}, token=app.token("sam", staff=True))
    assert none["data"]["orders"]["edges"] == []
