"""Reading one order with its lines and history (`order_read.read_order`): on PostgreSQL one
statement whose lines and history arrive as arrays of rows. What it gives must be what the
ORM reads, field by field and in order, and it must keep the owner's rule."""

from __future__ import annotations

import uuid
from typing import Any

from tortoise.models import Model

from ordergraph.db import transaction
from ordergraph.domain.order_read import find_order, read_order
from ordergraph.domain.order_state import change_order, lock_order
from ordergraph.models import Order, OrderItem, OrderStatus, OrderStatusChange
from tests.conftest import Harness
from tests.utils.helpers import add_to_cart, checkout, make_product


def fields(row: Model) -> dict[str, Any]:
    return {name: getattr(row, name) for name in row._meta.db_fields}


async def test_an_order_is_read_with_its_lines_and_history_as_the_orm_reads_them(
    app: Harness,
) -> None:
    token = app.token("alice")
    for n, price in enumerate([1999, 500, 12000]):
        product = await make_product(f"READ-{n}", price=price, name=f"Read {n} ünïcode")
        await add_to_cart(app, token, product, quantity=n + 1)
    payload = await checkout(app, token)
    assert payload["userErrors"] == []
    order_id = payload["orderId"]
    async with transaction():
        order = await lock_order(order_id)
        assert order is not None
        await change_order(order, status=OrderStatus.CANCELLED, reason="changed", actor="test")

    read = await read_order(order_id, owner="alice")

    assert read is not None
    assert fields(read.order) == fields(await Order.get(id=order_id))
    lines = await OrderItem.filter(order_id=order_id).order_by("id")
    assert len(lines) == 3
    assert [fields(line) for line in read.lines] == [fields(line) for line in lines]
    history = await OrderStatusChange.filter(order_id=order_id).order_by("id")
    assert [change.status for change in history] == ["pending_payment", "cancelled"]
    assert [fields(change) for change in read.history] == [fields(c) for c in history]
    assert read.order._saved_in_db and read.lines[0]._saved_in_db  # they can be saved again


async def test_an_order_is_found_only_for_its_owner(app: Harness) -> None:
    token = app.token("alice")
    await add_to_cart(app, token, await make_product("READ-OWNER"))
    order_id = (await checkout(app, token))["orderId"]

    assert await read_order(order_id, owner="mallory") is None
    assert await find_order(order_id, owner="mallory") is None
    assert await read_order(str(uuid.uuid4())) is None
    found = await find_order(order_id, owner="alice")
    anyone = await read_order(order_id)  # staff, or the holder of the order's token
    assert found is not None and anyone is not None
    assert str(found.id) == str(anyone.order.id) == order_id
    assert [line.product_name for line in anyone.lines] == ["Product READ-OWNER"]
