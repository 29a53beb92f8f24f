"""Database configuration, migrations and the transaction that knows what to do after commit.

Anything that must happen only once a change is durable (telling subscribers, waking the mail
sender) is registered with `after_commit` inside `transaction()`: it runs after the commit and
is dropped on a rollback, so no one ever hears of a state that did not happen.
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from tortoise import Tortoise
from tortoise.backends.base.client import (
    BaseDBAsyncClient,
    TransactionalDBClient,
    TransactionContextPooled,
)
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.backends.sqlite.client import SqliteTransactionWrapper
from tortoise.connection import get_connections
from tortoise.transactions import in_transaction

from ordergraph.db import pool

log = logging.getLogger(__name__)

MODELS_MODULE = "ordergraph.models"
MIGRATIONS_MODULE = "ordergraph.migrations"


async def _begin_immediate(self: SqliteTransactionWrapper) -> None:
    """SQLite: a transaction takes the write lock when it begins (`BEGIN IMMEDIATE`).

    Tortoise begins with a plain (deferred) `BEGIN`: a transaction that reads, then writes
    after another process wrote (an `ordergraph` command beside a running server, two servers
    on one file in the tests) fails at once with "database is locked", since SQLite cannot wait
    for a snapshot that is already stale. Taking the lock first makes it wait its turn (the
    driver's busy timeout) instead. Within one process transactions run one at a time anyway.
    """
    await self._connection.commit()
    await self._connection.execute("BEGIN IMMEDIATE")


SqliteTransactionWrapper.begin = _begin_immediate  # type: ignore[method-assign]


async def _enter_pooled(self: TransactionContextPooled) -> TransactionalDBClient:
    """Tortoise's `TransactionContextPooled.__aenter__`, except that a BEGIN that fails or is
    cancelled gives its connection back to the pool.

    Tortoise takes the connection and sets the task's context before it sends BEGIN, and when
    `__aenter__` raises, `__aexit__` does not run: the connection stayed checked out for good,
    inside the transaction its BEGIN had opened (holding back vacuum), and the pool was one
    connection smaller. A cancellation lands there whenever graphql-core cancels the siblings
    of a failed field while one of them is opening a transaction (seen in CI). Released, the
    connection is rolled back by `pool.release`.
    """
    await self.ensure_connection()
    pooled = self.client._parent._pool
    self.client._connection = await pooled.acquire()
    self.token = get_connections().set(self.connection_name, self.client)
    try:
        await self.client.begin()
    except BaseException:
        get_connections().reset(self.token)
        await pooled.release(self.client._connection)
        raise
    return self.client


TransactionContextPooled.__aenter__ = _enter_pooled  # type: ignore[method-assign]


def tortoise_config(database_url: str, *, pool_size: int = 20) -> dict[str, Any]:
    connection: str | dict[str, Any] = database_url
    if database_url.startswith(("postgres://", "postgresql://", "asyncpg://")):
        connection = expand_db_url(database_url)
        credentials = connection["credentials"]
        credentials.setdefault("maxsize", pool_size)
        credentials["connection_class"] = pool.PooledConnection
        credentials["reset"] = pool.release
    return {
        "connections": {"default": connection},
        "apps": {
            "models": {
                "models": [MODELS_MODULE],
                "default_connection": "default",
                "migrations": MIGRATIONS_MODULE,
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


# For Tortoise's own CLI (`tortoise makemigrations`), configured in pyproject.toml.
TORTOISE_ORM = tortoise_config(os.environ.get("DATABASE_URL") or "sqlite://ordergraph.sqlite3")


async def apply_migrations(database_url: str) -> None:
    """Apply every pending migration, then leave the ORM closed for whoever opens it next."""
    from tortoise.migrations.api import migrate

    try:
        await migrate(config=tortoise_config(database_url))
    finally:
        await Tortoise.close_connections()


def is_postgres(connection: BaseDBAsyncClient) -> bool:
    return connection.capabilities.dialect == "postgres"


def get_connection() -> BaseDBAsyncClient:
    """The connection ORM queries use right now: the transaction's, inside `transaction()`."""
    return get_connections().get("default")


AfterCommit = Callable[[], Awaitable[None]]
_after_commit: contextvars.ContextVar[list[AfterCommit] | None] = contextvars.ContextVar(
    "ordergraph_after_commit", default=None
)


def after_commit(callback: AfterCommit) -> None:
    """Run `callback` once the surrounding `transaction()` has committed."""
    pending = _after_commit.get()
    if pending is None:
        raise RuntimeError("after_commit() needs an enclosing ordergraph.db.transaction()")
    pending.append(callback)


@asynccontextmanager
async def transaction(*, savepoint: bool = False) -> AsyncIterator[BaseDBAsyncClient]:
    """A transaction whose `after_commit` callbacks run once it has committed.

    Inside another transaction it joins that one, unless `savepoint` is asked for: then a
    failure inside undoes only the savepoint's own work (and drops its callbacks), for a
    caller that catches the failure and carries on. Savepoints cost round trips, so only such
    callers ask for one.
    """
    outer = _after_commit.get()
    if outer is not None and not savepoint:
        yield get_connection()
        return
    pending: list[AfterCommit] = []
    token = _after_commit.set(pending)
    try:
        async with in_transaction() as connection:
            yield connection
    finally:
        _after_commit.reset(token)
    if outer is not None:
        outer.extend(pending)
        return
    for callback in pending:
        try:
            await callback()
        except Exception:
            log.exception("after-commit callback failed")
