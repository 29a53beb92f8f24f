"""Staff's order list: each filter, each kind of search, each sort, `totalCount`, keyset pages
that stay stable while orders are inserted and changed, bad input, and who may ask.

"Stable" (domain/order_search.py): a walk through the pages never shows an order twice; for
CREATED_DESC it shows exactly the orders that matched when the first page was read (newer
ones sort before the first page); for CREATED_ASC the newer ones come at the end.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from ordergraph.db import get_connection
from ordergraph.domain import order_search
from ordergraph.models import Order, OrderItem, OrderStatus, PaymentStatus, Product, User
from tests.conftest import Harness, postgres_only
from tests.utils.helpers import make_product

ORDERS = """query($status: OrderStatus, $first: Int, $after: String, $filter: OrderFilter,
                  $sort: OrderSort) {
  orders(status: $status, first: $first, after: $after, filter: $filter, sort: $sort) {
    totalCount
    edges { cursor node { id status paymentStatus total { amount } } }
    pageInfo { hasNextPage endCursor }
  }
}"""
MY_ORDERS = """query($first: Int, $after: String) {
  myOrders(first: $first, after: $after) {
    totalCount edges { node { id } } pageInfo { hasNextPage }
  }
}"""
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


async def _order(
    product: Product,
    *,
    user: str = "alice",
    created: datetime = T0,
    status: OrderStatus = OrderStatus.PENDING_PAYMENT,
    payment: PaymentStatus = PaymentStatus.PENDING,
    total: int = 2500,
    email: str | None = None,
    customer_email: str | None = None,
    lines: tuple[tuple[Product, int], ...] = (),
    order_id: uuid.UUID | None = None,
) -> Order:
    """An order of `product` (or of `lines`), each line named as its product is now."""
    await User.get_or_create(id=user, defaults={"email": f"{user}@example.com"})
    order = await Order.create(
        id=order_id or uuid.uuid4(),
        user_id=user,
        currency="USD",
        status=status,
        payment_status=payment,
        subtotal=total,
        total=total,
        email=email,
        customer_email=customer_email,
        created_at=created,
    )
    for line, quantity in lines or ((product, 1),):
        await OrderItem.create(
            order_id=order.id,
            product_id=line.id,
            product_name=line.name,
            unit_price=line.price,
            quantity=quantity,
        )
    return order


async def _list(app: Harness, token: str | None = None, **variables: Any) -> dict[str, Any]:
    body = await app.gql(ORDERS, variables, token=token or app.token("sam", staff=True))
    assert "errors" not in body, body
    page: dict[str, Any] = body["data"]["orders"]
    return page


async def _ids(app: Harness, **variables: Any) -> list[str]:
    return [edge["node"]["id"] for edge in (await _list(app, first=100, **variables))["edges"]]


async def _walk(app: Harness, size: int, **variables: Any) -> list[str]:
    seen: list[str] = []
    after = None
    while True:
        page = await _list(app, first=size, after=after, **variables)
        seen += [edge["node"]["id"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            return seen
        after = page["pageInfo"]["endCursor"]


def _newest_first(*orders: Order) -> list[str]:
    return [
        str(o.id) for o in sorted(orders, key=lambda o: (o.created_at, str(o.id)), reverse=True)
    ]


async def _error(app: Harness, token: str | None = None, **variables: Any) -> dict[str, Any]:
    body = await app.gql(ORDERS, variables, token=token or app.token("sam", staff=True))
    assert body["data"] is None, body
    error: dict[str, Any] = body["errors"][0]
    return error


async def test_filters_by_status_payment_status_and_creation_time(app: Harness) -> None:
    tee = await make_product("TEE")
    paid = await _order(
        tee, status=OrderStatus.PAYMENT_CONFIRMED, payment=PaymentStatus.PAID, created=T0
    )
    shipped = await _order(
        tee, status=OrderStatus.SHIPPED, payment=PaymentStatus.PAID, created=T0 + timedelta(days=1)
    )
    pending = await _order(tee, created=T0 + timedelta(days=2))
    disputed = await _order(
        tee, status=OrderStatus.SHIPPED, payment=PaymentStatus.DISPUTED, created=T0 - timedelta(1)
    )

    assert await _ids(app, filter={"status": ["SHIPPED"]}) == _newest_first(shipped, disputed)
    both = {"status": ["SHIPPED", "PAYMENT_CONFIRMED"]}
    assert await _ids(app, filter=both) == _newest_first(shipped, paid, disputed)
    assert await _ids(app, filter={"paymentStatus": ["PAID"]}) == _newest_first(shipped, paid)
    assert await _ids(app, filter={"status": ["SHIPPED"], "paymentStatus": ["DISPUTED"]}) == [
        str(disputed.id)
    ]
    # Both bounds are inclusive; a bound without an offset is UTC.
    window = {"createdFrom": T0.isoformat(), "createdTo": "2026-11-02T12:00:00"}
    assert await _ids(app, filter=window) == _newest_first(shipped, paid)
    assert await _ids(app, filter={"createdFrom": "2026-11-03T00:00:00+01:00"}) == [str(pending.id)]
    # The older `status` argument still works, alone and with the filter (both must hold).
    assert await _ids(app, status="PENDING_PAYMENT") == [str(pending.id)]
    assert await _ids(app, status="SHIPPED", filter={"paymentStatus": ["PAID"]}) == [
        str(shipped.id)
    ]
    assert await _ids(app, status="PENDING_PAYMENT", filter={"status": ["SHIPPED"]}) == []
    # An empty list filters nothing, as an empty choice in a form.
    assert len(await _ids(app, filter={"status": [], "paymentStatus": []})) == 4


async def test_total_count_is_the_filtered_set_on_every_page(app: Harness) -> None:
    tee = await make_product("TEE")
    for day in range(7):
        await _order(tee, created=T0 + timedelta(days=day), status=OrderStatus.SHIPPED)
    await _order(tee, created=T0)
    first = await _list(app, first=3, filter={"status": ["SHIPPED"]})
    assert first["totalCount"] == 7 and len(first["edges"]) == 3
    second = await _list(
        app, first=3, after=first["pageInfo"]["endCursor"], filter={"status": ["SHIPPED"]}
    )
    assert second["totalCount"] == 7 and len(second["edges"]) == 3
    assert (await _list(app, first=0))["totalCount"] == 8
    searched = await _list(app, first=1, filter={"search": "tee", "createdTo": T0.isoformat()})
    assert searched["totalCount"] == 2


async def test_search_by_order_id_whole_or_by_its_first_8_characters(app: Harness) -> None:
    tee = await make_product("TEE")
    target = await _order(tee, order_id=uuid.UUID("0badc0de-1234-4abc-8def-000000000001"))
    sibling = await _order(tee, order_id=uuid.UUID("0badc0de-9999-4abc-8def-000000000002"))
    await _order(tee, order_id=uuid.UUID("0badc0df-0000-4abc-8def-000000000003"))

    assert await _ids(app, filter={"search": str(target.id)}) == [str(target.id)]
    assert await _ids(app, filter={"search": f"  {str(target.id).upper()} "}) == [str(target.id)]
    assert set(await _ids(app, filter={"search": "0BADC0DE"})) == {str(target.id), str(sibling.id)}
    assert await _ids(app, filter={"search": "0badc0de-1234"}) == [str(target.id)]
    assert await _ids(app, filter={"search": "0badc0d"}) == []  # 7 characters: not an id


async def test_search_by_email_prefix_in_either_column_any_case(app: Harness) -> None:
    tee = await make_product("TEE")
    known = await _order(tee, email="Alice.Smith@example.com")
    collected = await _order(tee, customer_email="alice_s@shop.test")
    await _order(tee, email="bob@example.com", customer_email="bob@alice.test")
    joined = await _order(tee, email="alicesmith@example.com")

    assert await _ids(app, filter={"search": "ALICE.SMITH@"}) == [str(known.id)]
    alices = {str(known.id), str(collected.id), str(joined.id)}
    assert set(await _ids(app, filter={"search": "alice"})) == alices
    # LIKE's wildcards are letters here: `_` is an underscore, `%` a percent sign.
    assert await _ids(app, filter={"search": "alice_"}) == [str(collected.id)]
    assert await _ids(app, filter={"search": "a%e"}) == []
    assert await _ids(app, filter={"search": "example.com"}) == []  # a prefix, not a substring


async def test_search_by_product_name_substring(app: Harness) -> None:
    tee = await make_product("TEE", name="Tee")
    mug = await make_product("MUG", name="Coffee Mug")
    bag = await make_product("BAG", name="MUGGLE-PROOF bag")
    coffee = await _order(tee, lines=((tee, 2), (mug, 1)))
    await _order(tee)
    big = await _order(bag, created=T0 + timedelta(hours=1))

    assert await _ids(app, filter={"search": "mug"}) == _newest_first(coffee, big)
    assert await _ids(app, filter={"search": "coffee m"}) == [str(coffee.id)]
    assert await _ids(app, filter={"search": "Mu"}) == []  # under 3 characters: ids, emails only
    assert await _ids(app, filter={"search": "mug", "status": ["SHIPPED"]}) == []
    page = await _list(app, first=1, filter={"search": "tee"})
    assert page["totalCount"] == 2 and page["pageInfo"]["hasNextPage"]
    assert await _ids(app, filter={"search": "50%"}) == []

    # The trade-off of searching the catalogue first (domain/order_search.py): once a product
    # is renamed, its past lines (which keep the name they were sold under) are found by
    # neither name.
    mug.name = "Stoneware Cup"
    await mug.save()
    assert await _ids(app, filter={"search": "coffee"}) == []
    assert await _ids(app, filter={"search": "cup"}) == []
    assert await _ids(app, filter={"search": "mug"}) == [str(big.id)]


@pytest.mark.parametrize("sort", ["CREATED_DESC", "CREATED_ASC", "UPDATED_DESC", "TOTAL_DESC"])
async def test_each_sort_pages_through_every_order_once(app: Harness, sort: str) -> None:
    tee = await make_product("TEE")
    made = []
    for n in range(9):
        # Ties on every key: three orders share each creation time, update time and total.
        made.append(await _order(tee, created=T0 + timedelta(hours=n // 3), total=100 * (n % 3)))
    for n, order in enumerate(made):
        await Order.filter(id=order.id).update(updated_at=T0 + timedelta(minutes=n % 4))
    rows = {str(o.id): o for o in await Order.all()}
    key = {
        "CREATED_DESC": lambda o: (o.created_at, str(o.id)),
        "CREATED_ASC": lambda o: (o.created_at, str(o.id)),
        "UPDATED_DESC": lambda o: (o.updated_at, str(o.id)),
        "TOTAL_DESC": lambda o: (o.total, str(o.id)),
    }[sort]
    expected = sorted(rows, key=lambda i: key(rows[i]), reverse=sort != "CREATED_ASC")
    assert await _walk(app, 2, sort=sort) == expected
    assert await _walk(app, 1, sort=sort) == expected


async def test_pages_stay_stable_while_orders_arrive_and_change(app: Harness) -> None:
    tee = await make_product("TEE")
    now = datetime.now(UTC)
    existing = [await _order(tee, created=now - timedelta(minutes=10 - n)) for n in range(10)]

    async def walk(sort: str, between: Any) -> list[str]:
        seen: list[str] = []
        after = None
        while True:
            page = await _list(app, first=3, after=after, sort=sort)
            seen += [edge["node"]["id"] for edge in page["edges"]]
            if not page["pageInfo"]["hasNextPage"]:
                return seen
            after = page["pageInfo"]["endCursor"]
            await between(seen)

    arrived: list[Order] = []

    async def insert_and_touch(seen: list[str]) -> None:
        arrived.append(await _order(tee, created=datetime.now(UTC)))
        # Orders already shown change (a payment, a shipment): shown again? never.
        await Order.filter(id=seen[0]).update(
            status=OrderStatus.SHIPPED, updated_at=datetime.now(UTC)
        )

    newest_first = await walk("CREATED_DESC", insert_and_touch)
    assert newest_first == _newest_first(*existing)  # exactly those of the first page's time

    before = [str(o.id) for o in await Order.all().order_by("created_at", "id")]
    oldest_first = await walk("CREATED_ASC", insert_and_touch)
    assert len(oldest_first) == len(set(oldest_first))
    assert oldest_first[: len(before)] == before  # all that existed, newcomers after them
    assert set(oldest_first[len(before) :]) <= {str(o.id) for o in arrived}

    updated = await walk("UPDATED_DESC", insert_and_touch)
    assert len(updated) == len(set(updated))  # moved orders are never shown twice


async def test_bad_input_is_refused_with_invalid_input(app: Harness) -> None:
    tee = await make_product("TEE")
    await _order(tee)
    await _order(tee)
    too_long = await _error(app, filter={"search": "x" * 201})
    assert too_long["extensions"]["code"] == "INVALID_INPUT"
    assert "200" in too_long["message"]
    assert (await _list(app, filter={"search": "x" * 200}))["edges"] == []
    backwards = await _error(
        app, filter={"createdFrom": "2026-11-02T00:00:00Z", "createdTo": "2026-11-01T00:00:00Z"}
    )
    assert backwards["extensions"]["code"] == "INVALID_INPUT"
    assert "createdFrom" in backwards["message"]
    assert (await _error(app, filter={"search": "a\x00b"}))["extensions"]["code"] == "INVALID_INPUT"

    cursor = (await _list(app, first=1, sort="TOTAL_DESC"))["pageInfo"]["endCursor"]
    other = await _error(app, first=1, after=cursor, sort="CREATED_DESC")
    assert other["extensions"]["code"] == "INVALID_INPUT"
    assert "TOTAL_DESC" in other["message"]
    for garbage in ("%%%", "bm90IGEgY3Vyc29y", "VE9UQUxfREVTQ3xhYmN8eHl6"):
        error = await _error(app, first=1, after=garbage, sort="TOTAL_DESC")
        assert error["extensions"]["code"] == "INVALID_INPUT", garbage
    assert (await _error(app, first=101))["extensions"]["code"] == "INVALID_INPUT"


async def test_shoppers_and_strangers_get_nothing(app: Harness) -> None:
    tee = await make_product("TEE")
    await _order(tee, user="alice", email="alice@example.com")
    variables = {"filter": {"search": "alice"}, "sort": "TOTAL_DESC"}
    shopper = await app.gql(ORDERS, variables, token=app.token("alice"))
    assert shopper["data"] is None
    assert shopper["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    anonymous = await app.gql(ORDERS, variables)
    assert anonymous["data"] is None
    assert anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_my_orders_counts_only_mine(app: Harness) -> None:
    tee = await make_product("TEE")
    for _ in range(3):
        await _order(tee, user="alice")
    await _order(tee, user="bob")
    mine = await app.gql(MY_ORDERS, {"first": 2}, token=app.token("alice"))
    page = mine["data"]["myOrders"]
    assert page["totalCount"] == 3 and len(page["edges"]) == 2 and page["pageInfo"]["hasNextPage"]


@postgres_only
async def test_postgres_answers_searches_and_pages_from_indexes(app: Harness) -> None:
    """The statements the list sends can use the migration's indexes: the planner is told to
    avoid sequential scans, so a statement that cannot use them still shows one."""
    cases: list[tuple[order_search.OrderQuery, order_search.OrderSort, set[str]]] = [
        (
            order_search.order_query(search="alice@"),
            order_search.OrderSort.CREATED_DESC,
            {"orders_email_prefix", "orders_customer_email_prefix"},
        ),
        (
            order_search.order_query(search="coffee"),
            order_search.OrderSort.CREATED_DESC,
            {"products_name_trgm", "order_items_product"},
        ),
        (
            order_search.order_query(
                statuses=[OrderStatus.SHIPPED], created_from=T0, created_to=T0 + timedelta(days=7)
            ),
            CREATED,
            set(),
        ),
        (order_search.order_query(payment_statuses=[PaymentStatus.PAID]), CREATED, set()),
        (order_search.order_query(), order_search.OrderSort.UPDATED_DESC, {"orders_updated"}),
        (order_search.order_query(), order_search.OrderSort.TOTAL_DESC, {"orders_total"}),
    ]
    connection = await asyncpg.connect(app.settings.database_url)
    try:
        await connection.execute("SET enable_seqscan = off")
        for query, sort, indexes in cases:
            for start in (None, order_search.Position(sort, _key(sort), uuid.uuid4())):
                value = order_search.Statement(get_connection())
                sql = order_search.page_sql(value, query, sort, 51, start)
                rows = await connection.fetch("EXPLAIN " + sql, *value.values)
                plan = "\n".join(row[0] for row in rows)
                assert "Seq Scan" not in plan, plan
                assert all(index in plan for index in indexes), plan
            value = order_search.Statement(get_connection())
            rows = await connection.fetch(
                "EXPLAIN " + order_search.count_sql(value, query), *value.values
            )
            assert "Seq Scan" not in "\n".join(row[0] for row in rows)
    finally:
        await connection.close()


CREATED = order_search.OrderSort.CREATED_DESC


def _key(sort: order_search.OrderSort) -> datetime | int:
    return 500 if sort is order_search.OrderSort.TOTAL_DESC else T0
