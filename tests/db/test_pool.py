"""Pooled PostgreSQL connections (`ordergraph.db.pool`): whatever an operation left behind is
ended before the connection serves anyone else, without a round trip on every release."""

from __future__ import annotations

import asyncpg
import pytest
from tortoise import Tortoise

from tests.conftest import Harness, postgres_only
from tests.utils.live import unique


async def _session(app: Harness, pid: int) -> tuple[str, int]:
    """The session's state and how many locks on relations it holds, seen from a connection of
    its own (a pooled one might be that very session)."""
    observer = await asyncpg.connect(app.settings.database_url)
    try:
        row = await observer.fetchrow(
            "SELECT a.state, (SELECT count(*) FROM pg_locks l WHERE l.pid = a.pid"
            " AND l.locktype = 'relation') AS locks FROM pg_stat_activity a WHERE a.pid = $1",
            pid,
        )
    finally:
        await observer.close()
    assert row is not None
    return row["state"], row["locks"]


@postgres_only
async def test_a_statement_refused_by_the_driver_leaves_no_lock_behind(app: Harness) -> None:
    """asyncpg prepares before it encodes the parameters: a value it cannot encode fails the
    statement after the server has parsed it (and locked its tables). Released, the connection
    is idle and holds nothing; asyncpg alone would have left it waiting for the rest."""
    connection = Tortoise.get_connection("default")
    async with connection.acquire_connection() as raw:
        pid = await raw.fetchval("SELECT pg_backend_pid()")
        with pytest.raises(asyncpg.DataError):
            await raw.fetch("SELECT count(*) FROM cart_items WHERE quantity = $1", "two")
        assert (await _session(app, pid))[0] == "active"  # waiting for the Bind
    assert await _session(app, pid) == ("idle", 0)


async def test_a_field_that_fails_beside_fields_reading_the_database(app: Harness) -> None:
    """When a field fails, graphql-core cancels its siblings; a sibling cancelled while the
    server's answer to its Parse arrives was left halfway through its statement, holding
    `shipping_rates`. Every answer is the same clear error, and no session is left waiting
    (the `app` fixture's teardown fails the test if one is)."""
    staff = app.token(unique("staff"), staff=True)
    query = (
        "{ shippingRates { active } paymentDiscrepancies(unresolvedOnly: true) { orderId }"
        ' orders(first: 1, after: "") { edges { cursor } } }'
    )
    for _ in range(30):
        response = await app.http.post(
            f"{app.url}/graphql",
            json={"query": query},
            headers={"Authorization": f"Bearer {staff}"},
        )
        body = response.json()
        assert body["data"] is None, body
        assert [e["extensions"]["code"] for e in body["errors"]] == ["INVALID_INPUT"], body
