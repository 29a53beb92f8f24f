"""Claims and outcomes in batches, in the database: one claim takes the oldest due deliveries
up to the sender's free slots, no more of an endpoint than the slots it has left, never a
later delivery of an order and endpoint beside an earlier one; one statement records many
answers, each only under the claim it was sent with.

The rows are written directly, on paused endpoints, so that the service's own sender never
sees them due: each claim here resumes the endpoints and pauses them again in its transaction.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from ordergraph.db import transaction
from ordergraph.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint, WebhookEvent
from ordergraph.outgoing_webhooks import endpoints
from ordergraph.outgoing_webhooks.deliveries import Claimed, claim_due, record_delivered
from tests.conftest import Harness

LEASE = timedelta(seconds=30)


async def _endpoint(app: Harness, name: str) -> str:
    endpoint, _ = await endpoints.create_endpoint(
        f"https://{name}.example.test/hooks", ["*"], actor="staff:test", settings=app.settings
    )
    await endpoints.set_endpoint_active(str(endpoint.id), False)
    return str(endpoint.id)


async def _queue(endpoint_id: str, order_ids: list[uuid.UUID]) -> list[int]:
    """One pending delivery per order, due one second apart (the first the oldest)."""
    start = datetime.now(UTC) - timedelta(minutes=10)
    ids = []
    for n, order_id in enumerate(order_ids):
        moment = start + timedelta(seconds=n)
        event = await WebhookEvent.create(
            id=uuid.uuid4(), type="order.created", body="{}", created_at=moment
        )
        delivery = await WebhookDelivery.create(
            endpoint_id=endpoint_id,
            event_id=event.id,
            order_id=order_id,
            event_type="order.created",
            next_attempt_at=moment,
            created_at=moment,
        )
        ids.append(delivery.id)
    return ids


async def _claim(
    endpoint_ids: list[str], *, limit: int, per_endpoint: int, in_flight: dict[str, int]
) -> list[Claimed]:
    async with transaction():
        await WebhookEndpoint.filter(id__in=endpoint_ids).update(active=True)
        batch = await claim_due(LEASE, limit=limit, per_endpoint=per_endpoint, in_flight=in_flight)
        await WebhookEndpoint.filter(id__in=endpoint_ids).update(active=False)
    return batch


async def test_a_claim_takes_the_oldest_due_within_each_endpoints_slots(app: Harness) -> None:
    a, b = await _endpoint(app, "a"), await _endpoint(app, "b")
    orders = [uuid.uuid4() for _ in range(5)]
    a_ids = await _queue(a, orders)
    (a_later,) = await _queue(a, orders[:1])  # the first order's next change
    b_ids = await _queue(b, [uuid.uuid4() for _ in range(3)])

    # A has one delivery in flight here: two more of A, all three of B.
    first = await _claim([a, b], limit=10, per_endpoint=3, in_flight={a: 1})
    assert sorted(c.delivery.id for c in first) == sorted(a_ids[:2] + b_ids)
    assert len({c.claim for c in first}) == 1
    assert [c.url for c in first if c.delivery.endpoint_id == b] == [
        "https://b.example.test/hooks"
    ] * 3
    rows = {d.id: d for d in await WebhookDelivery.filter(id__in=[c.delivery.id for c in first])}
    assert all(row.attempts == 1 and row.claim == first[0].claim for row in rows.values())

    # Both endpoints at their cap: nothing.
    assert await _claim([a, b], limit=10, per_endpoint=3, in_flight={a: 3, b: 3}) == []
    # Free slots for two: the two oldest still due; never the first order's later change
    # while its earlier delivery is PENDING (claimed, here).
    second = await _claim([a, b], limit=2, per_endpoint=3, in_flight={})
    assert [c.delivery.id for c in second] == a_ids[2:4]
    third = await _claim([a, b], limit=10, per_endpoint=3, in_flight={})
    assert [c.delivery.id for c in third] == a_ids[4:]
    assert a_later not in {c.delivery.id for c in first + second + third}


async def test_answers_are_recorded_together_each_under_its_own_claim(app: Harness) -> None:
    a = await _endpoint(app, "a")
    await _queue(a, [uuid.uuid4() for _ in range(3)])
    batch = await _claim([a], limit=10, per_endpoint=10, in_flight={})
    assert len(batch) == 3
    # The third one's lease ran out and another sender holds it now.
    taken = batch[2].delivery.id
    await WebhookDelivery.filter(id=taken).update(claim=str(uuid.uuid4()))

    recorded = await record_delivered([(batch[0], 200), (batch[1], 204), (batch[2], 200)])

    assert recorded == {batch[0].delivery.id, batch[1].delivery.id}
    rows = {d.id: d for d in await WebhookDelivery.filter(endpoint_id=a)}
    assert [(rows[c.delivery.id].status, rows[c.delivery.id].response_status) for c in batch] == [
        (DeliveryStatus.DELIVERED, 200),
        (DeliveryStatus.DELIVERED, 204),
        (DeliveryStatus.PENDING, None),
    ]
    assert all(rows[c.delivery.id].claim is None for c in batch[:2])
    assert all(rows[c.delivery.id].delivered_at is not None for c in batch[:2])
    assert rows[taken].claim is not None and rows[taken].delivered_at is None
    assert await record_delivered([]) == set()
