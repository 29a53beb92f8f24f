"""Riders (`db.sql.Rider`): rows written with an order's change, only if the change is. On
PostgreSQL they are CTEs of the change's own statement; on SQLite they follow it."""

from __future__ import annotations

import pytest

from ordergraph.db import transaction
from ordergraph.db.sql import Rider
from ordergraph.domain.errors import BusinessError
from ordergraph.domain.order_state import change_order, lock_order
from ordergraph.mail.outbox import Composed, email_rider
from ordergraph.models import Order, OrderStatus, OutboxEmail
from tests.conftest import Harness
from tests.utils.helpers import checked_out_order, make_product

MAIL = Composed("Subject", "text", "<html><body>html</body></html>")


def _mail(order: Order, key: str) -> Rider:
    return email_rider(dedupe_key=key, recipient="alice@example.com", composed=MAIL, order=order)


async def _order(app: Harness) -> str:
    payload = await checked_out_order(app, app.token("alice"), await make_product("RIDE-1"))
    return str(payload["orderId"])


async def test_a_rider_is_written_with_the_change_once_per_key(app: Harness) -> None:
    order_id = await _order(app)
    async with transaction():
        order = await lock_order(order_id)
        assert order is not None
        riders = [_mail(order, "rider:a"), _mail(order, "rider:a"), _mail(order, "rider:b")]
        await change_order(
            order, status=OrderStatus.CANCELLED, reason="test", actor="t", riders=riders
        )

    rows = await OutboxEmail.filter(order_id=order_id, dedupe_key__startswith="rider:")
    assert sorted(row.dedupe_key for row in rows) == ["rider:a", "rider:b"]
    # Written as enqueue_email writes a mail (the service's own sender may have taken it since).
    assert {(row.recipient, row.subject, row.attempts <= 1) for row in rows} == {
        ("alice@example.com", "Subject", True)
    }
    assert (await Order.get(id=order_id)).status == OrderStatus.CANCELLED


async def test_a_change_that_loses_its_race_writes_no_rider(app: Harness) -> None:
    order_id = await _order(app)
    async with transaction():
        stale = await lock_order(order_id)
        assert stale is not None
        stale.version -= 1  # as if another change had come between the read and the write
        with pytest.raises(BusinessError):
            await change_order(
                stale,
                status=OrderStatus.CANCELLED,
                reason="test",
                actor="t",
                riders=[_mail(stale, "rider:lost")],
            )
    # The transaction commits what it wrote: nothing, since the change was not written.
    assert not await OutboxEmail.filter(dedupe_key="rider:lost").exists()
    assert (await Order.get(id=order_id)).status == OrderStatus.PENDING_PAYMENT
