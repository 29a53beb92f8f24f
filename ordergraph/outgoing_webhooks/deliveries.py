"""Deliveries in the database: claiming the due ones, recording what came of them.

A claim is one statement that takes a batch of due rows (as many as the sender has free
slots). On PostgreSQL it takes them with `FOR UPDATE SKIP LOCKED`, so any number of processes
claim side by side without waiting for, or taking, each other's rows; SQLite has one writer at
a time, so there the statement alone is the claim. The outcomes of a batch's deliveries are
recorded together too: those answered while a write is under way go in the next one.

What outlives the claim's statement is the lease (`claimed_until`) and the claim's token: a
sender that dies mid-send leaves a delivery that is due again once its lease runs out, and a
sender that outlived its lease cannot record an outcome over the next holder's.

Deliveries of one order to one endpoint go out one at a time, in the order they were written:
a delivery is due only while no earlier one of the same order and endpoint is PENDING (being
sent, or waiting to be retried), so a receiver never hears of a later change first. Both
conditions are read from partial indexes of the PENDING rows only, so their cost does not grow
with the deliveries already made.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ordergraph.db import get_connection, is_postgres
from ordergraph.db.sql import fetch
from ordergraph.models import DeliveryStatus, WebhookDelivery, WebhookEvent

# Retries double from WEBHOOK_RETRY_BASE_MS up to this gap, until the retry window closes.
MAX_BACKOFF = timedelta(hours=1)

# The rows to claim, oldest due first: due, their endpoint active, the first PENDING delivery
# of their order and endpoint (a scalar subquery, run for each row the scan looks at as one
# lookup in the pending-order index: as NOT EXISTS, PostgreSQL planned it as an anti join that
# scanned the whole index for every row when its statistics said there were few pending rows,
# and a claim over 27,000 of them ran for minutes), at most `allowance` of each endpoint (the
# slots this process still gives it). The inner scan takes the rows (on PostgreSQL: locks
# them, passing over those another sender holds); the window over it, which PostgreSQL does
# not allow beside FOR UPDATE, then caps each endpoint.
_DUE = """
    SELECT r.id FROM (
        SELECT c.id, c.next_attempt_at,
               ROW_NUMBER() OVER (PARTITION BY c.endpoint_id ORDER BY c.next_attempt_at, c.id)
                   AS n,
               {allowance} AS allowance
        FROM (
            SELECT d.id, d.endpoint_id, d.next_attempt_at FROM webhook_deliveries d
            JOIN webhook_endpoints e ON e.id = d.endpoint_id
            WHERE d.status = 'pending' AND d.next_attempt_at <= ?
              AND (d.claimed_until IS NULL OR d.claimed_until < ?)
              AND e.active {busy}
              AND (d.order_id IS NULL OR d.id = (
                  SELECT min(p.id) FROM webhook_deliveries p
                  WHERE p.endpoint_id = d.endpoint_id AND p.order_id = d.order_id
                    AND p.status = 'pending'
              ))
            ORDER BY d.next_attempt_at, d.id
            LIMIT {scan:d}
            {lock}
        ) c
    ) r
    WHERE r.n <= r.allowance
    ORDER BY r.next_attempt_at, r.id
    LIMIT {limit:d}
"""
_CLAIMED = (
    "d.id, d.endpoint_id, d.event_id, d.attempts, d.created_at, d.retry_until, "
    "e.url, e.secret, ev.body"
)
# PostgreSQL: the claims and what sending needs, in one round trip. `= ANY(ARRAY(…))` runs the
# subquery once, where `IN (…)` may be planned as a join that locks and updates more rows.
_CLAIM_POSTGRES = f"""
UPDATE webhook_deliveries d
SET claim = ?, claimed_until = ?, attempts = d.attempts + 1
FROM webhook_endpoints e, webhook_events ev
WHERE d.id = ANY(ARRAY({{due}})) AND e.id = d.endpoint_id AND ev.id = d.event_id
RETURNING {_CLAIMED}
"""
# SQLite's RETURNING cannot name the other tables of an UPDATE … FROM: two statements.
_CLAIM_SQLITE = """
UPDATE webhook_deliveries
SET claim = ?, claimed_until = ?, attempts = attempts + 1
WHERE id IN ({due})
RETURNING id
"""
_READ_SQLITE = f"""
SELECT {_CLAIMED} FROM webhook_deliveries d
JOIN webhook_endpoints e ON e.id = d.endpoint_id
JOIN webhook_events ev ON ev.id = d.event_id
WHERE d.id IN ({{ids}})
ORDER BY d.next_attempt_at, d.id
"""


@dataclass
class ClaimedDelivery:
    id: int
    endpoint_id: str
    event_id: str
    attempts: int
    created_at: datetime
    retry_until: datetime | None


@dataclass(frozen=True)
class Claimed:
    """A delivery this sender holds, with what it needs to send it."""

    delivery: ClaimedDelivery
    claim: str
    url: str
    secret: str
    body: str


def _moment(value: Any) -> datetime:
    """A timestamp as the driver returns it (SQLite: the text Tortoise stored)."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(moment, datetime)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def claim_due(
    lease: timedelta, *, limit: int, per_endpoint: int, in_flight: Mapping[str, int]
) -> list[Claimed]:
    """Take up to `limit` due deliveries in one statement, at most `per_endpoint` of an endpoint
    less what this process already sends to it (`in_flight`), oldest due first."""
    connection = get_connection()
    now = datetime.now(UTC)
    token = str(uuid.uuid4())
    busy = [e for e, n in in_flight.items() if n >= per_endpoint]
    partly = [(e, per_endpoint - n) for e, n in in_flight.items() if 0 < n < per_endpoint]
    allowance = "CAST(? AS INTEGER)"
    if partly:
        whens = " ".join("WHEN ? THEN CAST(? AS INTEGER)" for _ in partly)
        allowance = f"CASE c.endpoint_id {whens} ELSE {allowance} END"
    busy_sql = f"AND d.endpoint_id NOT IN ({', '.join('?' for _ in busy)})" if busy else ""
    values: list[Any] = [token, now + lease]
    for endpoint, left in partly:
        values += [uuid.UUID(endpoint), left]
    values += [per_endpoint, now, now, *(uuid.UUID(e) for e in busy)]
    # The limits are written out, not parameters: a plan PostgreSQL keeps for the statement
    # must know that it wants a few rows (the oldest, off the index) and not all that are due.
    limits = {"scan": 4 * limit, "limit": limit}
    if is_postgres(connection):
        lock = "FOR UPDATE OF d SKIP LOCKED"
        due = _DUE.format(allowance=allowance, busy=busy_sql, lock=lock, **limits)
        rows = await fetch(connection, _CLAIM_POSTGRES.format(due=due), *values)
    else:
        due = _DUE.format(allowance=allowance, busy=busy_sql, lock="", **limits)
        ids = [row["id"] for row in await fetch(connection, _CLAIM_SQLITE.format(due=due), *values)]
        read = _READ_SQLITE.format(ids=", ".join("?" for _ in ids))
        rows = await fetch(connection, read, *ids) if ids else []
    return [_claimed(row, token) for row in rows]


def _claimed(row: dict[str, Any], token: str) -> Claimed:
    retry_until = row["retry_until"]
    return Claimed(
        delivery=ClaimedDelivery(
            id=row["id"],
            endpoint_id=str(row["endpoint_id"]),
            event_id=str(row["event_id"]),
            attempts=row["attempts"],
            created_at=_moment(row["created_at"]),
            retry_until=_moment(retry_until) if retry_until is not None else None,
        ),
        claim=token,
        url=row["url"],
        secret=row["secret"],
        body=row["body"],
    )


def backoff(attempts: int, base: timedelta) -> timedelta:
    """The wait after the `attempts`-th failure: doubling from `base`, at most MAX_BACKOFF,
    with a tenth of jitter so that retries of many deliveries spread out."""
    wait = min(base * 2 ** min(attempts - 1, 30), MAX_BACKOFF)
    return wait * random.uniform(0.9, 1.1)


# Each answered delivery: its id, the claim it was sent under, the status it was answered.
_ANSWERED_ROW = "(CAST(? AS BIGINT), CAST(? AS TEXT), CAST(? AS INTEGER))"
_RECORD_DELIVERED = """
WITH answered (delivery_id, claim_token, answer) AS (VALUES {rows})
UPDATE webhook_deliveries
SET status = 'delivered', response_status = answered.answer, last_error = NULL,
    delivered_at = ?, claim = NULL, claimed_until = NULL
FROM answered
WHERE webhook_deliveries.id = answered.delivery_id
  AND webhook_deliveries.claim = answered.claim_token
RETURNING id
"""


async def record_delivered(answered: Sequence[tuple[Claimed, int]]) -> set[int]:
    """Mark the answered deliveries DELIVERED, in one statement; the ids of those recorded (a
    delivery whose claim this sender no longer held is left to its new holder)."""
    if not answered:
        return set()
    values: list[Any] = []
    for claimed, response_status in answered:
        values += [claimed.delivery.id, claimed.claim, response_status]
    query = _RECORD_DELIVERED.format(rows=", ".join(_ANSWERED_ROW for _ in answered))
    rows = await fetch(get_connection(), query, *values, datetime.now(UTC))
    return {row["id"] for row in rows}


async def record_failed(
    claimed: Claimed,
    *,
    response_status: int | None,
    error: str,
    base: timedelta,
    retry_for: timedelta,
) -> tuple[DeliveryStatus, datetime] | None:
    """Schedule the next attempt (PENDING, and when), or mark the delivery DEAD when it would
    fall after its retry window; None when this sender no longer held it."""
    delivery = claimed.delivery
    now = datetime.now(UTC)
    until = delivery.retry_until or delivery.created_at + retry_for
    next_attempt = now + backoff(delivery.attempts, base)
    status = DeliveryStatus.DEAD if next_attempt > until else DeliveryStatus.PENDING
    updated = await WebhookDelivery.filter(id=delivery.id, claim=claimed.claim).update(
        status=status,
        response_status=response_status,
        last_error=error[:2000],
        next_attempt_at=next_attempt,
        claim=None,
        claimed_until=None,
    )
    return (status, next_attempt) if updated == 1 else None


# Delivered and dead deliveries are kept this long for staff to look at (and replay).
RETENTION = timedelta(days=30)


async def prune_finished(*, older_than: datetime, batch: int = 1000) -> int:
    """Delete up to `batch` finished deliveries created before `older_than`, then the events
    no delivery needs any more. Oldest first, so a pass is cheap whatever the table holds."""
    finished = WebhookDelivery.filter(
        status__in=(DeliveryStatus.DELIVERED, DeliveryStatus.DEAD), created_at__lt=older_than
    )
    ids = await finished.order_by("id").limit(batch).values_list("id", flat=True)
    if not ids:
        return 0
    await WebhookDelivery.filter(id__in=ids).delete()
    await WebhookEvent.filter(
        created_at__lt=older_than, fan_out_pending=False, deliveries__id__isnull=True
    ).delete()
    return len(ids)
