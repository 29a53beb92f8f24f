"""Pooled PostgreSQL connections (`ordergraph.db.pool`): whatever an operation left behind is
ended before the connection serves anyone else, without a round trip on every release."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from tortoise import Tortoise
from tortoise.backends.asyncpg.client import TransactionWrapper
from tortoise.transactions import in_transaction

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


def _free(pooled: asyncpg.Pool) -> int:
    """Connections the pool could hand out now: idle ones, and those it has yet to open."""
    return pooled.get_idle_size() + pooled.get_max_size() - pooled.get_size()


@postgres_only
async def test_a_transaction_cancelled_as_it_begins_gives_its_connection_back(
    app: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancellation that lands right after BEGIN went out: Tortoise's transaction context
    raised from its `__aenter__`, and its `__aexit__`, which releases the connection, never
    ran. The connection must be back in the pool, rolled back, and the task's context clean."""
    client = Tortoise.get_connection("default")
    pooled = client._pool
    free_before = _free(pooled)
    begin = TransactionWrapper.begin
    sessions: list[int] = []

    async def begun_then_cancelled(self: TransactionWrapper) -> None:
        await begin(self)
        sessions.append(await self._connection.fetchval("SELECT pg_backend_pid()"))
        raise asyncio.CancelledError

    monkeypatch.setattr(TransactionWrapper, "begin", begun_then_cancelled)
    with pytest.raises(asyncio.CancelledError):
        async with in_transaction():
            raise AssertionError("entered a transaction whose BEGIN was cancelled")
    monkeypatch.undo()

    assert Tortoise.get_connection("default") is client  # not the abandoned transaction's
    assert _free(pooled) == free_before
    assert await _session(app, sessions[0]) == ("idle", 0)
