"""Raw SQL for the few statements the ORM cannot say in one round trip (`RETURNING`).

Queries are written with `?` placeholders and the values PostgreSQL and SQLite both accept;
`fetch` numbers the placeholders for asyncpg.
"""

from __future__ import annotations

import functools
import itertools
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.models import Model

M = TypeVar("M", bound=Model)

_PLACEHOLDER = re.compile(r"\?")


def _for(connection: BaseDBAsyncClient, query: str, values: list[Any]) -> tuple[str, list[Any]]:
    if connection.capabilities.dialect != "postgres":
        return query, [str(v) if isinstance(v, uuid.UUID) else v for v in values]
    return _numbered(query), values


@functools.lru_cache(maxsize=512)
def _numbered(query: str) -> str:
    numbers = itertools.count(1)
    return _PLACEHOLDER.sub(lambda _: f"${next(numbers)}", query)


async def fetch(connection: BaseDBAsyncClient, query: str, *values: Any) -> list[dict[str, Any]]:
    text, params = _for(connection, query, list(values))
    return await connection.execute_query_dict(text, params)


async def fetch_each(
    connection: BaseDBAsyncClient, query: str, rows: list[list[Any]]
) -> list[dict[str, Any]]:
    """`query` once for each row of values, in order, each its own statement; what they
    return, together. On PostgreSQL in one round trip (asyncpg's `fetchmany` sends them as one
    pipeline), so a checkout's lines cost one round trip however many there are."""
    if not rows:
        return []
    if connection.capabilities.dialect != "postgres":
        found: list[dict[str, Any]] = []
        for values in rows:
            found += await fetch(connection, query, *values)
        return found
    text, _ = _for(connection, query, rows[0])
    async with connection.acquire_connection() as raw:
        return [dict(record) for record in await raw.fetchmany(text, rows)]


@functools.lru_cache(maxsize=64)
def _select(model: type[Model], where: str, order_by: str, for_update: bool) -> str:
    meta = model._meta
    columns = ", ".join(f'"{column}"' for column in meta.fields_db_projection.values())
    query = f'SELECT {columns} FROM "{meta.db_table}" WHERE {where}'
    if order_by:
        query += f" ORDER BY {order_by}"
    return query + " FOR UPDATE" if for_update else query


async def select(
    connection: BaseDBAsyncClient,
    model: type[M],
    where: str,
    *values: Any,
    order_by: str = "",
    for_update: bool = False,
) -> list[M]:
    """The rows of `model` that match `where` (SQL with `?` placeholders), as models made as
    Tortoise's own selects make them (`Model._init_from_db`); `for_update`: locked until the
    transaction ends, on PostgreSQL (SQLite's transaction is its lock). For the hot reads:
    building a queryset's SQL cost more than the query's round trip."""
    locking = for_update and connection.capabilities.dialect == "postgres"
    rows = await fetch(connection, _select(model, where, order_by, locking), *values)
    return [model._init_from_db(**row) for row in rows]


@dataclass(frozen=True, slots=True)
class Rider:
    """A row written only if a change is: on PostgreSQL an INSERT in the change's own statement
    (a CTE that selects its values from what the change's CTE returned, so a change that wrote
    nothing writes no rider either, and costs no round trip more), elsewhere `alone`, awaited
    after the change."""

    table: str
    columns: tuple[str, ...]  # the values' columns, then the constants'
    values: tuple[Any, ...]
    alone: Callable[[], Awaitable[object]]
    constants: str = ""  # SQL for the last columns, e.g. "now()"
    suffix: str = ""  # e.g. ON CONFLICT (...) DO NOTHING


def rider_ctes(riders: Sequence[Rider], source: str) -> tuple[str, list[Any]]:
    """`riders` as CTEs (`, rider_0 AS (INSERT ...)`) to follow a statement's CTE named
    `source`, and their parameters."""
    ctes: list[str] = []
    params: list[Any] = []
    for n, rider in enumerate(riders):
        columns = ", ".join(rider.columns)
        selected = ", ".join(["?"] * len(rider.values) + [rider.constants] * bool(rider.constants))
        insert = f"INSERT INTO {rider.table} ({columns}) SELECT {selected} FROM {source}"
        ctes.append(f", rider_{n} AS ({insert} {rider.suffix})")
        params += rider.values
    return "".join(ctes), params
