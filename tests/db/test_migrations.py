"""Upgrading a database that holds orders: each migration must apply to tables with rows, as a
shop's database has, not only to the empty ones a fresh test run creates.

Everything runs in processes of its own (and the rows go in over a plain driver connection), so
that this test never touches the connections of the service the other tests share."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import BACKEND, scratch_database
from tests.utils.helpers import run_ordergraph

BEFORE_RETURNS = "models.0005_shipping_and_promotions"
ROWS = [
    "INSERT INTO users (id, email, is_staff, created_at) "
    "VALUES ('u1', 'u1@example.com', false, CURRENT_TIMESTAMP)",
    "INSERT INTO products (id, sku, name, description, price, stock, active, created_at, "
    "updated_at) VALUES ('11111111-1111-1111-1111-111111111111', 'TEE', 'Tee', '', 2500, 5, "
    "true, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    "INSERT INTO orders (id, user_id, status, payment_status, version, currency, subtotal, "
    "discount, shipping_cost, tax, total, amount_refunded, is_locked, created_at, updated_at) "
    "VALUES ('22222222-2222-2222-2222-222222222222', 'u1', 'delivered', 'paid', 5, 'USD', "
    "5000, 0, 0, 0, 5000, 0, true, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    "INSERT INTO order_items (order_id, product_id, product_name, unit_price, quantity) "
    "VALUES ('22222222-2222-2222-2222-222222222222', '11111111-1111-1111-1111-111111111111', "
    "'Tee', 2500, 2)",
]
MIGRATE_TO = """
import asyncio, sys
from tortoise import Tortoise
from tortoise.migrations.api import migrate
from ordergraph.db import tortoise_config

async def main() -> None:
    try:
        await migrate(config=tortoise_config(sys.argv[1]), target=sys.argv[2])
    finally:
        await Tortoise.close_connections()  # or the driver's thread keeps the process alive

asyncio.run(main())
"""


@asynccontextmanager
async def _database(tmp_path: Path) -> AsyncIterator[str]:
    if BACKEND == "postgres":
        async with scratch_database("upgrade") as url:
            yield url
    else:
        yield f"sqlite://{tmp_path / 'upgrade.sqlite3'}"


async def _sql(url: str, *statements: str) -> list[dict[str, Any]]:
    """Run the statements; answer the rows of the last one."""
    if url.startswith("sqlite://"):
        with sqlite3.connect(url.removeprefix("sqlite://")) as connection:
            connection.row_factory = sqlite3.Row
            for statement in statements[:-1]:
                connection.execute(statement)
            return [dict(row) for row in connection.execute(statements[-1])]
    connection = await asyncpg.connect(url)
    try:
        for statement in statements[:-1]:
            await connection.execute(statement)
        return [dict(row) for row in await connection.fetch(statements[-1])]
    finally:
        await connection.close()


async def test_returns_migration_upgrades_a_database_with_orders(tmp_path: Path) -> None:
    async with _database(tmp_path) as url:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", MIGRATE_TO, url, BEFORE_RETURNS, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, stderr.decode()[-2000:]
        await _sql(url, *ROWS, "SELECT 1")
        # The upgrade as an operator runs it.
        code, _, errors = await run_ordergraph("migrate", env={**os.environ, "DATABASE_URL": url})
        assert code == 0, errors[-2000:]
        rows = await _sql(
            url,
            "SELECT quantity, quantity_refunded, quantity_restocked, quantity_returning "
            "FROM order_items",
        )
        assert rows == [
            {
                "quantity": 2,
                "quantity_refunded": 0,
                "quantity_restocked": 0,
                "quantity_returning": 0,
            }
        ]
        [order] = await _sql(url, "SELECT delivered_at, version FROM orders")
        assert order == {"delivered_at": None, "version": 5}
