"""Fan-out: a change writes one event, the sender writes one delivery per endpoint that wants it,
once, with the later events of an order after the earlier ones, however many fan-outs run at
once beside the changes.

The endpoints are paused, so that nothing is sent while the test looks at the rows; the
service's own sender still fans out beside the test's fan-outs.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

from ordergraph.db import transaction
from ordergraph.models import Order, WebhookDelivery, WebhookEvent
from ordergraph.outgoing_webhooks import endpoints
from ordergraph.outgoing_webhooks.events import (
    ORDER_STATUS_CHANGED,
    prepare_order_event,
    write_event,
)
from ordergraph.outgoing_webhooks.fan_out import fan_out
from tests.conftest import Harness
from tests.utils.helpers import checked_out_order, make_product
from tests.utils.receivers import deliveries_written

CHANGES_PER_ORDER = 12


async def _paused_endpoint(app: Harness, name: str, events: list[str]) -> str:
    endpoint, _ = await endpoints.create_endpoint(
        f"https://{name}.example.test/hooks", events, actor="staff:test", settings=app.settings
    )
    await endpoints.set_endpoint_active(str(endpoint.id), False)
    return str(endpoint.id)


async def _change(order_id: str, versions: dict[str, int]) -> None:
    """What a change of the order does: lock its row, then record the event in the same
    transaction; the version is counted under the lock, as the order's own version is."""
    async with transaction():
        order = await Order.select_for_update().get(id=order_id)
        versions[order_id] += 1
        event = await prepare_order_event(
            order, ORDER_STATUS_CHANGED, {"version": versions[order_id]}
        )
        assert event is not None
        await write_event(event)


async def test_concurrent_fan_outs_write_each_delivery_once_and_in_order(app: Harness) -> None:
    everything = await _paused_endpoint(app, "all", ["*"])
    changes_only = await _paused_endpoint(app, "changes", [ORDER_STATUS_CHANGED])
    await _paused_endpoint(app, "returns", ["return.requested"])
    mug = await make_product("MUG", stock=10)
    orders = [(await checked_out_order(app, app.token(f"u{n}"), mug))["orderId"] for n in range(3)]
    await deliveries_written()
    versions = {order_id: 1 for order_id in orders}

    async def changes(order_id: str) -> None:
        for _ in range(CHANGES_PER_ORDER):
            await _change(order_id, versions)

    async def fan_outs(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await fan_out()
            await asyncio.sleep(0)

    stop = asyncio.Event()
    fanners = [asyncio.create_task(fan_outs(stop)) for _ in range(4)]
    await asyncio.gather(*(changes(order_id) for order_id in orders))
    stop.set()
    await asyncio.gather(*fanners)
    # Then a burst with no fan-out beside it: one fan-out takes several events of an order.
    await asyncio.gather(*(changes(order_id) for order_id in orders))
    await deliveries_written()

    events = {str(e.id): e for e in await WebhookEvent.all()}
    assert len(events) == 3 * (1 + 2 * CHANGES_PER_ORDER)
    told: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
    for delivery in await WebhookDelivery.all().order_by("id"):
        body = json.loads(events[str(delivery.event_id)].body)
        assert body["data"]["order"]["id"] == str(delivery.order_id)
        told[str(delivery.endpoint_id), str(delivery.order_id)].append(
            body["data"]["order"]["version"]
        )
    every_change = list(range(2, 2 + 2 * CHANGES_PER_ORDER))
    for order_id in orders:
        # Each event once to each endpoint that wants it, the order's versions in id order.
        assert told[everything, order_id] == [1, *every_change]
        assert told[changes_only, order_id] == every_change
    assert {endpoint for endpoint, _ in told} == {everything, changes_only}
