"""Stock with an audit trail, through the public API: staff adjustments (a conditional UPDATE
that concurrent adjustments cannot drive below zero), stock set by upserts, restocks from
refunds and returns, each a `StockMovement` with actor and reason; and archived products, which
leave the catalogue, cannot be carted, are named at checkout, and stay on past orders.

Checked against the product rows, the movement rows, the carts, the orders and the emulator.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ordergraph.domain.stock import MAX_STOCK
from ordergraph.models import CartItem, Order, OrderItem, Product, StockMovement
from tests.conftest import Harness
from tests.utils.dbstate import snapshot
from tests.utils.helpers import ADD_TO_CART, CART, add_to_cart, checkout, make_product, stock_of

ADJUST = """mutation($p: ID!, $d: Int!, $r: String!) {
  adjustStock(productId: $p, delta: $d, reason: $r) {
    product { id stock active }
    userErrors { code message field productId available }
  }
}"""
PRODUCT = """query($id: ID!) {
  product(id: $id) {
    id name stock active
    stockMovements { delta stockAfter reason actor at }
  }
}"""
PRODUCTS = "{ products { edges { node { sku active } } } }"
UPSERT = """mutation($input: ProductInput!) {
  upsertProduct(input: $input) {
    product { id sku stock active }
    userErrors { code message field }
  }
}"""
SET_QUANTITY = """mutation($p: ID!, $q: Int!) {
  setCartQuantity(productId: $p, quantity: $q) {
    cart { itemCount lines { quantity product { id active } } }
    userErrors { code message field productId available }
  }
}"""
REFUND = """mutation($id: ID!, $lines: [ReturnLineInput!], $reason: String) {
  refundOrder(orderId: $id, lines: $lines, restock: true, reason: $reason) {
    userErrors { code message }
  }
}"""
RETURN_FIELDS = "orderReturn { id status } userErrors { code message }"
REQUEST = (
    """mutation($id: ID!, $lines: [ReturnLineInput!]) {
  requestWithdrawal(orderId: $id, lines: $lines) { %s } }"""
    % RETURN_FIELDS
)
CONFIRM = "mutation($id: ID!) { confirmWithdrawal(returnId: $id) { %s } }" % RETURN_FIELDS
RECEIVE = "mutation($id: ID!) { receiveReturn(returnId: $id) { %s } }" % RETURN_FIELDS
STAFF_ACTION = "mutation($id: ID!) { %s(orderId: $id) { userErrors { code message } } }"
SHIP = """mutation($id: ID!) {
  markOrderShipped(orderId: $id, trackingNumber: "1Z999", carrier: "UPS") {
    userErrors { code message } } }"""
ORDER_LINES = """query($id: ID!) {
  order(id: $id) { status lines { productId productName quantity unitPrice { amount } } }
}"""


def _staff(app: Harness) -> str:
    return app.token("sam", staff=True)


async def _answer(app: Harness, query: str, variables: dict[str, Any], token: str) -> Any:
    body = await app.gql(query, variables, token=token)
    assert "errors" not in body, body
    [answer] = body["data"].values()
    return answer


async def _adjust(
    app: Harness, product: Product | str, delta: int, reason: str, token: str | None = None
) -> dict[str, Any]:
    key = str(product.id) if isinstance(product, Product) else product
    variables = {"p": key, "d": delta, "r": reason}
    answer: dict[str, Any] = await _answer(app, ADJUST, variables, token or _staff(app))
    return answer


async def _upsert(app: Harness, **values: Any) -> dict[str, Any]:
    item = {"sku": "LAMP", "name": "Desk lamp", "price": 4000, "stock": 0, **values}
    answer: dict[str, Any] = await _answer(app, UPSERT, {"input": item}, _staff(app))
    assert answer["userErrors"] == [], answer
    return answer


async def _seen(app: Harness, product_id: str, token: str | None) -> Any:
    body = await app.gql(PRODUCT, {"id": product_id}, token=token)
    assert "errors" not in body, body
    return body["data"]["product"]


async def _trail(app: Harness, product_id: str) -> list[tuple[int, int, str, str]]:
    """The movements staff see, newest first."""
    seen = await _seen(app, product_id, _staff(app))
    return [(m["delta"], m["stockAfter"], m["reason"], m["actor"]) for m in seen["stockMovements"]]


async def _rows(product: Product) -> list[tuple[int, int, str, str]]:
    """The movement rows, oldest first."""
    rows = await StockMovement.filter(product_id=product.id).order_by("id")
    return [(r.delta, r.stock_after, r.reason, r.actor) for r in rows]


def _codes(answer: dict[str, Any]) -> list[tuple[str, list[str] | None]]:
    return [(e["code"], e["field"]) for e in answer["userErrors"]]


async def _paid(app: Harness, user: str, lines: list[tuple[Product, int]]) -> str:
    token = app.token(user)
    for product, quantity in lines:
        assert (await add_to_cart(app, token, product, quantity))["userErrors"] == []
    placed = await checkout(app, token)
    assert placed["userErrors"] == [], placed
    order = await Order.get(id=placed["orderId"])
    assert order.stripe_checkout_session_id
    delivery = await app.emulator.complete_session(order.stripe_checkout_session_id)
    assert delivery.status_code == 200, delivery.body
    return str(order.id)


# Adjustments.


async def test_adjustments_up_and_down_are_recorded_with_actor_and_reason(app: Harness) -> None:
    lamp = await make_product("LAMP", stock=10, name="Desk lamp")

    up = await _adjust(app, lamp, 5, "  delivery from the supplier  ")
    down = await _adjust(app, lamp, -3, "three broken in the warehouse")

    assert up == {"product": {"id": str(lamp.id), "stock": 15, "active": True}, "userErrors": []}
    assert down["product"]["stock"] == 12 and down["userErrors"] == []
    assert await stock_of(lamp) == 12
    assert await _rows(lamp) == [
        (5, 15, "delivery from the supplier", "staff:sam"),
        (-3, 12, "three broken in the warehouse", "staff:sam"),
    ]
    assert await _trail(app, str(lamp.id)) == [
        (-3, 12, "three broken in the warehouse", "staff:sam"),
        (5, 15, "delivery from the supplier", "staff:sam"),
    ]
    seen = await _seen(app, str(lamp.id), _staff(app))
    assert seen["stockMovements"][0]["at"] >= seen["stockMovements"][1]["at"]
    # Down to exactly zero is allowed; `first` pages the trail.
    assert (await _adjust(app, lamp, -12, "stocktake"))["product"]["stock"] == 0
    body = await app.gql(
        "query($id: ID!) { product(id: $id) { stockMovements(first: 1) { delta } } }",
        {"id": str(lamp.id)},
        token=_staff(app),
    )
    assert body["data"]["product"]["stockMovements"] == [{"delta": -12}]


async def test_refused_adjustments_change_nothing(app: Harness) -> None:
    lamp = await make_product("LAMP", stock=3, name="Desk lamp")
    staff = _staff(app)
    before = await snapshot(app.emulator)

    below = await _adjust(app, lamp, -4, "stocktake")
    assert below["product"] is None
    [error] = below["userErrors"]
    assert (error["code"], error["field"], error["productId"], error["available"]) == (
        "INVALID_INPUT",
        ["delta"],
        str(lamp.id),
        3,
    )
    assert error["message"] == "Only 3 of Desk lamp in stock; 4 cannot be taken out"

    refusals = {
        "zero": await _adjust(app, lamp, 0, "nothing"),
        "no reason": await _adjust(app, lamp, 1, "   "),
        "long reason": await _adjust(app, lamp, 1, "x" * 256),
        "NUL": await _adjust(app, lamp, 1, "bad\x00reason"),
        "past the ceiling": await _adjust(app, lamp, MAX_STOCK - 2, "typo"),
        "past 32 bits": await _adjust(app, lamp, 2**31 - 1, "overflow"),
        "far below": await _adjust(app, lamp, -(2**31), "underflow"),
        "unknown": await _adjust(app, "00000000-0000-0000-0000-000000000000", 1, "ghost"),
        "not an id": await _adjust(app, "not-a-uuid", 1, "ghost"),
    }
    assert {name: _codes(answer) for name, answer in refusals.items()} == {
        "zero": [("INVALID_INPUT", ["delta"])],
        "no reason": [("INVALID_INPUT", ["reason"])],
        "long reason": [("INVALID_INPUT", ["reason"])],
        "NUL": [("INVALID_INPUT", ["reason"])],
        "past the ceiling": [("INVALID_INPUT", ["delta"])],
        "past 32 bits": [("INVALID_INPUT", ["delta"])],
        "far below": [("INVALID_INPUT", ["delta"])],
        "unknown": [("NOT_FOUND", ["productId"])],
        "not an id": [("NOT_FOUND", ["productId"])],
    }
    ceiling = refusals["past the ceiling"]["userErrors"][0]
    assert (
        ceiling["available"] == 3
        and f"at most {MAX_STOCK - 3} can be added" in (ceiling["message"])
    )

    assert await snapshot(app.emulator) == before
    assert await StockMovement.all().count() == 0
    # The largest stock there may be is reachable, and taking units out stays possible.
    top = await _adjust(app, lamp, MAX_STOCK - 3, "big delivery", staff)
    assert top["product"]["stock"] == MAX_STOCK
    assert (await _adjust(app, lamp, -1, "sold at the fair", staff))["product"]["stock"] == (
        MAX_STOCK - 1
    )


async def test_concurrent_adjustments_never_drive_stock_below_zero(app: Harness) -> None:
    """30 staff take one unit each of 10, all at once: on PostgreSQL they race on the row, on
    SQLite they queue; either way exactly 10 succeed, each recording the stock it left."""
    lamp = await make_product("LAMP", stock=10)

    answers = await asyncio.gather(
        *(
            _adjust(app, lamp, -1, f"shrinkage {n}", app.token(f"staff-{n}", staff=True))
            for n in range(30)
        )
    )

    taken = [a for a in answers if a["userErrors"] == []]
    refused = [a for a in answers if a["userErrors"]]
    assert len(taken) == 10 and len(refused) == 20
    assert {code for a in refused for code, _ in _codes(a)} == {"INVALID_INPUT"}
    assert {a["userErrors"][0]["available"] for a in refused} == {0}
    assert sorted(a["product"]["stock"] for a in taken) == list(range(10))
    assert await stock_of(lamp) == 0
    rows = await StockMovement.filter(product_id=lamp.id).order_by("id")
    assert [(r.delta, r.stock_after) for r in rows] == [(-1, n) for n in range(9, -1, -1)]
    assert len({r.actor for r in rows}) == 10


async def test_shoppers_and_strangers_neither_adjust_nor_see_movements(app: Harness) -> None:
    lamp = await make_product("LAMP", stock=5)
    assert (await _adjust(app, lamp, 2, "delivery"))["userErrors"] == []

    shopper = await _adjust(app, lamp, -5, "mine now", app.token("alice"))
    stranger = await app.gql(ADJUST, {"p": str(lamp.id), "d": -5, "r": "mine now"})

    assert shopper == {
        "product": None,
        "userErrors": [
            {
                "code": "FORBIDDEN",
                "message": "Staff only",
                "field": None,
                "productId": None,
                "available": None,
            }
        ],
    }
    # Without a token, as every operation that needs a user (the contract): UNAUTHENTICATED.
    assert stranger["data"] is None
    assert stranger["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert await stock_of(lamp) == 7
    assert await StockMovement.all().count() == 1
    for token in (app.token("alice"), None):
        seen = await _seen(app, str(lamp.id), token)
        assert (seen["stock"], seen["stockMovements"]) == (7, [])
    assert len((await _seen(app, str(lamp.id), _staff(app)))["stockMovements"]) == 1


# Upserts.


async def test_upserts_record_the_stock_they_set(app: Harness) -> None:
    created = await _upsert(app, stock=7)
    lamp = await Product.get(id=created["product"]["id"])
    await _upsert(app, stock=7, price=4500)  # the stock unchanged: no movement
    await _upsert(app, stock=4)
    # A sale is not a movement; the next upsert counts from what the sale left.
    placed = await _paid(app, "alice", [(lamp, 1)])
    assert await stock_of(lamp) == 3
    await _upsert(app, stock=10)
    await _upsert(app, sku="EMPTY", stock=0)  # created without stock: no movement

    assert await _trail(app, str(lamp.id)) == [
        (7, 10, "upsert", "staff:sam"),
        (-3, 4, "upsert", "staff:sam"),
        (7, 7, "upsert", "staff:sam"),
    ]
    assert await stock_of(lamp) == 10
    assert await StockMovement.all().count() == 3
    assert (await Order.get(id=placed)).payment_status.value == "paid"


async def test_concurrent_upserts_of_a_new_sku_make_one_product_and_a_trail_that_adds_up(
    app: Harness,
) -> None:
    answers = await asyncio.gather(
        *(
            app.gql(
                UPSERT,
                {"input": {"sku": "NEW", "name": "New", "price": 100, "stock": stock}},
                token=_staff(app),
            )
            for stock in range(1, 9)
        )
    )

    assert [a["data"]["upsertProduct"]["userErrors"] for a in answers] == [[]] * 8
    [product] = await Product.filter(sku="NEW")
    rows = await _rows(product)
    assert sum(delta for delta, *_ in rows) == product.stock == rows[-1][1]
    assert rows[0][0] == rows[0][1]  # the creation: all of its stock
    assert len(rows) >= 1 and all(delta != 0 for delta, *_ in rows)


# Restocks from refunds and returns.


async def test_restocks_from_a_refund_and_a_received_return_are_movements(app: Harness) -> None:
    lamp = await make_product("LAMP", price=4000, stock=10, name="Desk lamp")
    staff = _staff(app)
    order_id = await _paid(app, "alice", [(lamp, 3)])
    assert await stock_of(lamp) == 7

    lines = [{"productId": str(lamp.id), "quantity": 1}]
    refunded = await _answer(
        app, REFUND, {"id": order_id, "lines": lines, "reason": "dented"}, staff
    )
    assert refunded["userErrors"] == [], refunded
    assert await stock_of(lamp) == 8

    fulfil = [STAFF_ACTION % "markOrderAwaitingShipment", SHIP, STAFF_ACTION % "markOrderDelivered"]
    for action in fulfil:
        assert (await _answer(app, action, {"id": order_id}, staff))["userErrors"] == []
    alice = app.token("alice")
    requested = await _answer(app, REQUEST, {"id": order_id, "lines": lines}, alice)
    return_id = requested["orderReturn"]["id"]
    assert (await _answer(app, CONFIRM, {"id": return_id}, alice))["userErrors"] == []
    assert await stock_of(lamp) == 8  # the goods are on their way back, not here yet
    received = await _answer(app, RECEIVE, {"id": return_id}, staff)
    assert received["userErrors"] == [], received

    assert await stock_of(lamp) == 9
    trail = await _trail(app, str(lamp.id))
    assert [(delta, after, actor) for delta, after, _, actor in trail] == [
        (1, 9, "staff:sam"),
        (1, 8, "staff:sam"),
    ]
    assert f"return {return_id}" in trail[0][2] and "dented" in trail[1][2]
    # The checkout's three units were a sale: no movement.
    assert await StockMovement.filter(product_id=lamp.id).count() == 2


# Archiving.


async def test_an_archived_product_leaves_the_shop_but_not_its_past_orders(app: Harness) -> None:
    lamp_id = (await _upsert(app, stock=10))["product"]["id"]
    lamp = await Product.get(id=lamp_id)
    past = await _paid(app, "bob", [(lamp, 2)])
    alice = app.token("alice")
    assert (await add_to_cart(app, alice, lamp, 3))["userErrors"] == []

    archived = await _upsert(app, stock=8, active=False)

    assert archived["product"] == {"id": lamp_id, "sku": "LAMP", "stock": 8, "active": False}
    assert await StockMovement.all().count() == 1  # the creation; archiving moved no stock
    # Gone from the catalogue for shoppers and strangers; staff still see it.
    for token in (alice, None):
        assert (await app.gql(PRODUCTS, token=token))["data"]["products"]["edges"] == []
        assert await _seen(app, lamp_id, token) is None
    staff_view = await _seen(app, lamp_id, _staff(app))
    assert (staff_view["active"], staff_view["stock"]) == (False, 8)

    # It cannot be carted.
    carol = app.token("carol")
    add = await _answer(app, ADD_TO_CART, {"p": lamp_id, "q": 1}, carol)
    grow = await _answer(app, SET_QUANTITY, {"p": lamp_id, "q": 5}, alice)
    for refused in (add, grow):
        assert refused["userErrors"] == [
            {
                "code": "NOT_FOUND",
                "message": "Desk lamp is no longer sold",
                "field": ["productId"],
                "productId": lamp_id,
                "available": 0,
            }
        ]
    assert [(c.user_id, c.quantity) for c in await CartItem.all()] == [("alice", 3)]

    # A cart that holds it is told at checkout, and nothing changes.
    before = await snapshot(app.emulator)
    told = await checkout(app, alice)
    assert (told["orderId"], told["order"]) == (None, None)
    assert told["userErrors"] == [
        {
            "code": "OUT_OF_STOCK",
            "message": "Desk lamp is no longer sold; remove it from your cart",
            "field": ["cart"],
            "productId": lamp_id,
            "available": 0,
        }
    ]
    assert await snapshot(app.emulator) == before
    assert await Order.all().count() == 1 and await stock_of(lamp) == 8

    # Past orders keep the line.
    order = await _answer(app, ORDER_LINES, {"id": past}, app.token("bob"))
    assert order["lines"] == [
        {"productId": lamp_id, "productName": "Desk lamp", "quantity": 2,
         "unitPrice": {"amount": 4000}}
    ]  # fmt: skip
    assert await OrderItem.filter(product_id=lamp_id).count() == 1

    # The shopper can always take it out of the cart; then checkout has nothing to say.
    removed = await _answer(app, SET_QUANTITY, {"p": lamp_id, "q": 0}, alice)
    assert removed == {"cart": {"itemCount": 0, "lines": []}, "userErrors": []}
    assert (await checkout(app, alice))["userErrors"][0]["code"] == "CART_EMPTY"

    # Un-archived, it is for sale again.
    assert (await _upsert(app, stock=8, active=True))["product"]["active"] is True
    assert (await app.gql(PRODUCTS))["data"]["products"]["edges"] == [
        {"node": {"sku": "LAMP", "active": True}}
    ]
    assert (await add_to_cart(app, carol, lamp, 1))["userErrors"] == []
    cart = await app.gql(CART, token=carol)
    assert cart["data"]["cart"]["itemCount"] == 1
