"""What a pooled PostgreSQL connection does on its way back to the pool.

asyncpg's default reset (unlock advisory locks, close cursors, UNLISTEN, RESET ALL) is a round
trip on every release, that is after every query outside a transaction; ordergraph leaves no
such state on pooled connections (LISTEN has a connection of its own), so `release` skips it.

It must still end what an operation left open. A transaction is visible to asyncpg. A statement
that failed on the client's side is not: asyncpg prepares a statement with Parse, Describe and
Flush, and sends the Sync that ends it only with the Bind. A parameter it cannot encode, or a
cancellation that lands while the server's answer to the Parse is arriving (graphql-core cancels
a field's siblings when the field fails), leaves the server waiting for the rest of the
statement, inside an implicit transaction that holds the statement's table locks, with asyncpg
believing the connection idle. Back in the pool, such a connection would hold those locks
until something happened to use it again, and a migration (or the tests' `TRUNCATE`) would wait
behind it. So a connection on which an operation raised anything is rolled back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg


def _marking(name: str) -> Callable[..., Awaitable[Any]]:
    """asyncpg's method `name`, marking the connection when it raises. The method is looked up
    on each call, so that whatever wraps asyncpg's own (bench/sqlcount.py) still sees it."""

    async def marked(self: PooledConnection, *args: Any, **kwargs: Any) -> Any:
        try:
            return await getattr(asyncpg.Connection, name)(self, *args, **kwargs)
        except BaseException:
            self.unsettled = True
            raise

    marked.__name__ = name
    return marked


class PooledConnection(asyncpg.Connection):
    """An asyncpg connection that remembers whether an operation on it raised."""

    __slots__ = ("unsettled",)

    execute = _marking("execute")
    executemany = _marking("executemany")
    fetch = _marking("fetch")
    fetchmany = _marking("fetchmany")
    fetchrow = _marking("fetchrow")
    fetchval = _marking("fetchval")


async def release(connection: PooledConnection) -> None:
    """Nothing, unless an operation raised or left a transaction open: then ROLLBACK, which
    also ends a statement left half-sent (a simple query ends the implicit transaction)."""
    if getattr(connection, "unsettled", False) or connection.is_in_transaction():
        connection.unsettled = False
        await connection.execute("ROLLBACK")
