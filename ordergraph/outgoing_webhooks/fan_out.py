"""Events into deliveries: one per endpoint that wants the event, written by the sender.

A change's transaction writes only its event (`events.prepare_order_event`), one row however
many endpoints there are, so a request pays nothing per endpoint; the sender fans the events
out before each claim, a batch of events in one statement.

Deliveries of one order to one endpoint go out in id order (deliveries.py), so fan-out must
give a later event of an order the later ids. An order's changes are serialised by its row
lock: an event is committed before the next event of its order is written, and whoever sees
the later one sees the earlier too. So fan-outs run one at a time (a transaction-scoped
advisory lock on PostgreSQL, taken with `try`: a sender that finds another fanning leaves it
the work; SQLite has one writer), oldest event first, ids handed out in that order.
"""

from __future__ import annotations

from ordergraph.db import get_connection, is_postgres, transaction
from ordergraph.db.sql import fetch

BATCH = 500
# Any constant of this service's own: the advisory lock that makes fan-outs take turns.
LOCK_KEY = 0x0_5E_4D_F4_40

# PostgreSQL, one statement. The lock is its first step (an init plan, evaluated before the
# scan); a fan-out that committed between this statement's snapshot and its lock has cleared
# the events it took, and the UPDATE's recheck of `fan_out_pending` passes over them.
# `@>` on the endpoint's JSONB list: it names the type, or every type ("*").
_FAN_OUT_POSTGRES = f"""
WITH taken AS (
    UPDATE webhook_events SET fan_out_pending = FALSE
    WHERE (SELECT pg_try_advisory_xact_lock({LOCK_KEY}))
      AND fan_out_pending
      AND id = ANY(ARRAY(
          SELECT id FROM webhook_events WHERE fan_out_pending
          ORDER BY created_at, id LIMIT {BATCH}
      ))
    RETURNING id, type, order_id, created_at
),
delivered AS (
    INSERT INTO webhook_deliveries
        (endpoint_id, event_id, order_id, event_type, status, attempts, next_attempt_at,
         created_at)
    SELECT e.id, t.id, t.order_id, t.type, 'pending', 0, t.created_at, t.created_at
    FROM taken t
    JOIN webhook_endpoints e
      ON e.events @> jsonb_build_array(t.type) OR e.events @> '["*"]'::jsonb
    ORDER BY t.created_at, t.id, e.id
)
SELECT count(*) AS events FROM taken
"""
_TAKE_SQLITE = f"""
UPDATE webhook_events SET fan_out_pending = 0
WHERE id IN (
    SELECT id FROM webhook_events WHERE fan_out_pending ORDER BY created_at, id LIMIT {BATCH}
)
RETURNING id
"""
_DELIVERIES_SQLITE = """
INSERT INTO webhook_deliveries
    (endpoint_id, event_id, order_id, event_type, status, attempts, next_attempt_at, created_at)
SELECT e.id, t.id, t.order_id, t.type, 'pending', 0, t.created_at, t.created_at
FROM webhook_events t
JOIN webhook_endpoints e ON EXISTS (
    SELECT 1 FROM json_each(e.events) AS wanted WHERE wanted.value IN (t.type, '*')
)
WHERE t.id IN ({ids})
ORDER BY t.created_at, t.id, e.id
"""


async def fan_out() -> int:
    """Write the deliveries of up to BATCH waiting events; the number of events taken (0 also
    when another sender is fanning out right now)."""
    connection = get_connection()
    if is_postgres(connection):
        [row] = await fetch(connection, _FAN_OUT_POSTGRES)
        return int(row["events"])
    async with transaction() as connection:
        ids = [row["id"] for row in await fetch(connection, _TAKE_SQLITE)]
        if ids:
            insert = _DELIVERIES_SQLITE.format(ids=", ".join("?" for _ in ids))
            await fetch(connection, insert, *ids)
        return len(ids)


async def fan_out_all() -> int:
    """Fan out until no event waits; the number of events taken."""
    total = 0
    while taken := await fan_out():
        total += taken
        if taken < BATCH:
            break
    return total
