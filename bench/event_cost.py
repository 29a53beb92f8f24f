"""What writing an outgoing-webhook event costs one order change, without HTTP around it.

    .venv/bin/python -m bench.event_cost [--changes 1000] [--rounds 6]

`bench.webhooks` measures the added latency of whole requests, where the noise of a shared
two-core machine (±10 % between two runs of the same arm) is larger than what an event adds.
This measures the change alone: `order_state.note_change` with an `order.status_changed`
event, `--changes` times in a row on one order (two lines) over a pool of one PostgreSQL
connection, with 0 and then 10 endpoints registered, in the order 0, 10, 10, 0 each round.
Per change: wall time, this process's CPU and the PostgreSQL backend's CPU (from /proc). With
0 endpoints a change writes no event; with 10 it writes one row (the sender, which would fan it
out, does not run here).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from tortoise import Tortoise

from bench.common import BenchDatabase, postgres_problem
from ordergraph.db import tortoise_config, transaction
from ordergraph.db.sql import fetch
from ordergraph.domain import order_state
from ordergraph.models import Order, OrderItem, Product, User, WebhookEndpoint
from ordergraph.outgoing_webhooks import events

ENDPOINTS = 10


def _cpu_seconds(pid: int) -> float:
    """A process's user and system CPU from /proc (PostgreSQL's backends run here too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime, stime in clock ticks (USER_HZ)


async def _seed() -> str:
    user = await User.create(id="event-cost", email="event-cost@bench.test")
    order = await Order.create(user=user, currency="usd", subtotal=3000, total=3000)
    for n in range(2):
        product = await Product.create(sku=f"EC-{n}", name=f"Product {n}", price=1500, stock=9)
        await OrderItem.create(
            order=order, product=product, product_name=product.name, unit_price=1500, quantity=1
        )
    return str(order.id)


async def _register(count: int) -> None:
    await WebhookEndpoint.all().delete()
    for slot in range(count):
        await WebhookEndpoint.create(
            slot=slot,
            url=f"https://receiver-{slot}.bench.test/hook",
            events=["*"],
            secret="whsec_event_cost",
            created_by="bench",
        )
    events.forget_endpoints()


async def _backend() -> int:
    """The pool's one connection's backend (read each arm: a pool may replace a connection)."""
    rows = await fetch(Tortoise.get_connection("default"), "SELECT pg_backend_pid() AS pid")
    return int(rows[0]["pid"])


async def _arm(order_id: str, changes: int) -> dict[str, float]:
    backend = await _backend()
    cpu, pg, wall = time.process_time(), _cpu_seconds(backend), time.perf_counter()
    for _ in range(changes):
        async with transaction():
            order = await order_state.lock_order(order_id)
            assert order is not None
            await order_state.note_change(
                order, reason="bench", actor="bench", webhook_event=events.ORDER_STATUS_CHANGED
            )
    pg = _cpu_seconds(backend) - pg
    assert await _backend() == backend, "the pool replaced its connection during the arm"
    return {
        "wall_ms": 1000 * (time.perf_counter() - wall) / changes,
        "cpu_ms": 1000 * (time.process_time() - cpu) / changes,
        "postgres_ms": 1000 * pg / changes,
    }


async def run(changes: int, rounds: int) -> dict[int, dict[str, float]]:
    database = BenchDatabase()
    await database.create()
    try:
        config = tortoise_config(database.url, pool_size=1)
        # asyncpg replaces a pooled connection after 50,000 queries (about 12,000 changes):
        # the backend whose CPU an arm reads must stay the same.
        config["connections"]["default"]["credentials"]["max_queries"] = 10**9
        await Tortoise.init(config=config)
        try:
            order_id = await _seed()
            runs: dict[int, list[dict[str, float]]] = {0: [], ENDPOINTS: []}
            for n in range(rounds):
                for registered in (0, ENDPOINTS, ENDPOINTS, 0):
                    await _register(registered)
                    runs[registered].append(await _arm(order_id, changes))
                print(f"round {n + 1}/{rounds}", flush=True)
            written = await fetch(
                Tortoise.get_connection("default"), "SELECT count(*) AS n FROM webhook_events"
            )
            expected = rounds * 2 * changes
            assert written[0]["n"] == expected, (written, expected)
        finally:
            await Tortoise.close_connections()
    finally:
        await database.drop()
    return {
        registered: {key: statistics.median(r[key] for r in arm) for key in arm[0]}
        for registered, arm in runs.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=1000, help="changes per arm")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    problem = asyncio.run(postgres_problem())
    if problem:
        raise SystemExit(problem)
    medians: dict[Any, dict[str, float]] = asyncio.run(run(args.changes, args.rounds))
    print("| endpoints | wall ms | client CPU ms | PostgreSQL CPU ms |")
    print("| ---: | ---: | ---: | ---: |")
    for registered, row in medians.items():
        cells = " | ".join(f"{row[key]:.3f}" for key in ("wall_ms", "cpu_ms", "postgres_ms"))
        print(f"| {registered} | {cells} |")
    base, more = medians[0], medians[ENDPOINTS]
    print(
        "| added | "
        + " | ".join(
            f"{more[k] - base[k]:+.3f} ({100 * (more[k] / base[k] - 1):+.1f} %)" for k in base
        )
        + " |"
    )


if __name__ == "__main__":
    main()
