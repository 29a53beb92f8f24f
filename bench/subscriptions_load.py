"""Subscriptions under a stream of changes: N subscribers, each following its own order, while
R of those orders a second are confirmed. What `bench.subscriptions` (one order,
one change) does not cover; its WebSocket client (`Subscriber`) is reused here.

    .venv/bin/python -m bench.subscriptions_load [--subscribers 10000] [--rate 200] [--seconds 10]

One `ordergraph serve` process (EVENTS_URL=postgres://, the production transport), the Stripe
emulator and a mail sink as processes of their own; this process holds the N WebSocket
clients and makes the changes, each to a different order, paced at R a second.

Each change is the webhook's transaction done here with asyncpg (status and version,
history row, `pg_notify` as `events_postgres` sends it), so that the moment of commit is
known exactly and the server does only the delivery work: its own capacity for webhooks is
the webhook scenario's business. Delay is measured at the subscriber of that order, from
COMMIT returning (and, as an upper bound, from COMMIT being sent). Memory: the server's RSS
after the N subscribers connected, less before, per 1,000.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import time
from typing import Any

import asyncpg

from bench.common import (
    JWT_SECRET,
    STAFF_USER,
    BenchDatabase,
    MailSinkProcess,
    Stack,
    copy_orders,
    ensure_users,
    make_orders,
    percentile,
    product_ids,
    rss_mib,
    seed_catalogue,
)
from bench.subscriptions import CONNECT_BATCH, Subscriber
from ordergraph.auth import issue_token
from ordergraph.events.postgres import DEFAULT_CHANNEL

SESSION_PREFIX = "cs_subs"


def raise_open_files(needed: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if needed + 200 > hard:
        raise SystemExit(f"{needed} subscribers need more open files than the limit {hard}")


async def seed_subscribed_orders(database_url: str, count: int, tag: str) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        products, _ = await product_ids(conn)
        if not products:
            await seed_catalogue(conn, 1000)
            products, _ = await product_ids(conn)
        users = [f"follower-{i}" for i in range(min(count, 1000))]
        await ensure_users(conn, [*users, STAFF_USER])
        await conn.execute("UPDATE users SET is_staff = true WHERE id = $1", STAFF_USER)
        rows = make_orders(
            users,
            products,
            count,
            lines=2,
            pending=True,
            rng=random.Random(3),
            tag=tag,
            session_prefix=SESSION_PREFIX,
        )
        await copy_orders(conn, rows)
        return list(
            await conn.fetch(
                "SELECT id, user_id, total, stripe_checkout_session_id FROM orders"
                " WHERE stripe_checkout_session_id LIKE $1 ORDER BY stripe_checkout_session_id",
                f"{SESSION_PREFIX}_{tag}_%",
            )
        )
    finally:
        await conn.close()


CHANGE = (
    "UPDATE orders SET status = 'payment_confirmed', payment_status = 'paid',"
    " version = version + 1, paid_at = now(), is_locked = true, updated_at = now()"
    " WHERE id = $1 AND status = $2 RETURNING version"
)
HISTORY = (
    "INSERT INTO order_status_changes (order_id, status, payment_status, reason, actor, at)"
    " VALUES ($1, 'payment_confirmed', 'paid', 'payment received', 'bench', now())"
)
NOTIFY = "SELECT pg_notify($1, $2)"


async def change(pool: Any, order_id: Any) -> tuple[float, float]:
    """Confirm one order as the webhook's transaction does (status, history, NOTIFY), with
    asyncpg: (when COMMIT was sent, when it returned)."""
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            # The status is a parameter: as a literal, the generic plan would scan the
            # (status, expires_at) index rather than use the primary key.
            version = await conn.fetchval(CHANGE, order_id, "pending_payment")
            await conn.execute(HISTORY, order_id)
            await conn.execute(NOTIFY, DEFAULT_CHANNEL, f"{order_id}:{version}")
        except BaseException:
            await tx.rollback()
            raise
        sent = time.perf_counter()
        await tx.commit()
        return sent, time.perf_counter()


async def run_once(
    database_url: str,
    smtp_port: int,
    subscribers: int,
    rate: int,
    seconds: float,
    log: Any = print,
) -> dict[str, Any]:
    tag = f"n{subscribers}r{rate}t{int(time.time())}"
    orders = await seed_subscribed_orders(database_url, subscribers, tag)
    changes = min(len(orders), int(rate * seconds))
    token = issue_token(JWT_SECRET, STAFF_USER, "staff@bench.test", staff=True, ttl_seconds=7200)
    async with Stack(database_url, smtp_port, workers=1, name=f"subs-{subscribers}") as stack:
        ws = stack.url.replace("http://", "ws://") + "/graphql"
        worker = stack.worker_pids()[0]
        before = rss_mib(worker)
        started = time.perf_counter()
        clients: list[Subscriber] = []
        for offset in range(0, len(orders), CONNECT_BATCH):
            batch = orders[offset : offset + CONNECT_BATCH]
            clients += await asyncio.gather(
                *(Subscriber.connect(ws, token, str(o["id"])) for o in batch)
            )
        connect_seconds = time.perf_counter() - started
        await asyncio.sleep(1.0)
        after = rss_mib(worker)
        log(
            f"    {subscribers:,} subscribers connected in {connect_seconds:.1f} s;"
            f" server RSS {before:.0f} -> {after:.0f} MiB"
        )
        # The changed orders are spread over the subscribers, not the first ones connected.
        chosen = random.Random(5).sample(range(len(orders)), changes)
        waiting = [asyncio.create_task(clients[i].wait_for_change()) for i in chosen]
        pool = await asyncpg.create_pool(database_url, min_size=8, max_size=8)
        t0 = time.perf_counter() + 0.2
        timings: list[tuple[float, float] | None] = [None] * changes

        async def fire(n: int) -> None:
            timings[n] = await change(pool, orders[chosen[n]]["id"])

        fired = []
        for n in range(changes):
            delay = t0 + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            fired.append(asyncio.create_task(fire(n)))
        await asyncio.gather(*fired)
        send_seconds = time.perf_counter() - t0
        _, pending = await asyncio.wait(waiting, timeout=60)
        for task in pending:
            task.cancel()
        await pool.close()
        from_commit, from_commit_sent = [], []
        for n, timing in enumerate(timings):
            client = clients[chosen[n]]
            if timing is None:
                continue
            sent, committed = timing
            if client.received_at is not None and client.status == "PAYMENT_CONFIRMED":
                from_commit.append((client.received_at - committed) * 1000)
                from_commit_sent.append((client.received_at - sent) * 1000)
        await asyncio.gather(*(c.socket.close() for c in clients), return_exceptions=True)
    result = {
        "subscribers": subscribers,
        "rate": rate,
        "changes": changes,
        "achieved_rate": changes / send_seconds if send_seconds else 0.0,
        "delivered": len(from_commit),
        "connect_seconds": connect_seconds,
        "rss_before_mib": before,
        "rss_after_mib": after,
        "memory_per_1000_mib": (after - before) / subscribers * 1000,
        "from_commit_ms": _stats(from_commit),
        "from_commit_sent_ms": _stats(from_commit_sent),
    }
    s = result["from_commit_ms"]
    log(
        f"    {changes} changes at {result['achieved_rate']:.0f}/s: delivered {len(from_commit)},"
        f" from commit p50 {s['p50']:.1f} ms p99 {s['p99']:.1f} ms max {s['max']:.1f} ms"
    )
    return result


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
        "max": max(values) if values else float("nan"),
    }


async def main_async(args: argparse.Namespace) -> None:
    db = BenchDatabase()
    sink = MailSinkProcess()
    await db.create()
    await sink.start()
    try:
        conn = await db.connect()
        try:
            await seed_catalogue(conn, 1000)
        finally:
            await conn.close()
        for count in args.subscribers:
            await run_once(db.url, sink.port, count, args.rate, args.seconds)
    finally:
        await sink.stop()
        await db.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--subscribers", type=lambda s: [int(x) for x in s.split(",")], default=[10_000]
    )
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    raise_open_files(max(args.subscribers))
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main_async(args))


if __name__ == "__main__":
    main()
