"""Outgoing webhooks: how fast the sender delivers, and what registered endpoints cost the
requests that write events.

    .venv/bin/python -m bench.webhooks [--quick | --smoke] [--no-docs] [--output FILE]

One run, one PostgreSQL database (made and dropped as `bench.run` does: `bench.scenarios.Bench`
with its catalogue and mail sink), one `ordergraph serve --workers 1` with the Stripe emulator
(`bench.common.Stack`, WEBHOOK_ALLOW_PRIVATE_TARGETS=true and the other WEBHOOK_* settings at
their defaults), and a receiver in a process of its own (`bench.webhook_receiver`: 200 at once,
every endpoint on a loopback port of its own). Two parts:

1. **Delivery throughput (backlog drain).** For N = 1, 10 and 100 endpoints subscribed to
   `*`, a backlog of K events on K distinct orders (as a change writes them, each
   event its own moment) is committed with asyncpg while the endpoints are paused; the
   server's sender notices within its poll (1 s) and fans them out to N deliveries each (the
   seconds from the commit until every event is fanned out are reported), then the endpoints
   are resumed and the sender sends the deliveries. Measured
   at the receiver: deliveries per second from the first arrival to the last (and over the
   middle 80%), events per second = deliveries / N; CPU per delivery of the server,
   PostgreSQL and the receiver (from /proc). Then every delivery is checked DELIVERED in the
   database, and the last one's signature verified with its endpoint's secret. N = 100 is
   also run with every endpoint on one origin (one host:port), where the sender's connections
   are shared between endpoints.
2. **Added latency.** The `checkout` and `checkout.session.completed` webhook loads of
   `bench.run` (`bench.loadgen` in its own process, same checks), with 0 and with 10
   endpoints registered, alternating 0, 10, 10, 0 (a drift over the run cancels out): closed
   loops at the concurrency of `bench.run` and at 1, and a shop's pace (4 users starting 25
   calls a second between them, whatever the answers' latency). After each load the run
   waits for the sender to deliver everything (so the next load starts with no backlog) and
   reports what the sender did: deliveries written, delivered during the load, time to catch
   up, delay from the event's write to its delivery (`delivered_at - created_at`). Three
   variants, one after the other (never two servers at once, or the idle one's sender would
   take deliveries): "in the server" (the server's own sender, WEBHOOK_CONCURRENCY at its
   default), "none" (a second server with WEBHOOK_CONCURRENCY=0 and nothing sending: what
   writing the events costs the requests themselves; the events, never fanned out, are
   deleted after each load) and "own process" (that server with one `ordergraph
   send-webhooks --concurrency 16` beside it, same env; its CPU is counted apart from the
   server's, per operation over the whole load and per delivery up to the catch-up). Each
   variant is compared with its own 0-endpoint arm.

Results: bench/results/webhooks.json (`--quick`: webhooks-quick.json, `--smoke`:
webhooks-smoke.json); a full run also rewrites the part of docs/benchmarks.md between the
`webhooks` markers. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench import profiling
from bench.common import (
    ORDER_COLUMNS,
    RESULTS,
    ROOT,
    CpuMeter,
    Stack,
    copy_orders,
    ensure_users,
    make_orders,
    postgres_pids,
    postgres_problem,
    service_env,
    stop_process,
    tree,
)
from bench.scenarios import Bench, Sizes, _pool
from ordergraph.outgoing_webhooks import signing

ENDPOINT_COUNTS = (1, 10, 100)
LATENCY_ENDPOINTS = 10
SENDER_CONCURRENCY = 16
# The variants of the latency part: the server's own sender, or a sender in its own process.
# Besides the closed loops: a shop's pace, well below what one worker can do (open loop: this
# many calls a second started by this many users, whatever the answers' latency).
PACED_USERS, PACED_RATE = 4, 25.0
IN_SERVER, OWN_PROCESS, WRITES_ONLY = "in-server", "own-process", "writes-only"
VARIANT_TITLES = {
    IN_SERVER: "sender in the server",
    OWN_PROCESS: "sender in its own process",
    WRITES_ONLY: "no sender (the request's own cost)",
}
VARIANT_NAMES = {IN_SERVER: "in server", OWN_PROCESS: "own process", WRITES_ONLY: "none"}
SERVER_ENV = {
    # The receiver is on loopback; everything else is the service's default (16 slots a
    # process, at most 8 to one endpoint, 10 s a delivery, retries after 30 s).
    "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
}
BACKLOG_PREFIX = "cs_whq"
PARTS = ("throughput", "latency")


@dataclass
class Plan:
    """What a mode measures."""

    sizes: Sizes
    backlog: int  # deliveries per throughput point (at least 3 events)
    stale_backlog: int  # the same with stale statistics (0: not measured)
    arms: tuple[int, ...]  # endpoints registered in each latency run, in order
    concurrencies: tuple[int, ...]
    catch_up_timeout: float  # after a load, then what is still pending is deleted
    profile_seconds: float  # 0: no profile
    one_origin: bool = True  # also drain to 100 endpoints on one origin
    min_events: int = 3  # per throughput point

    @classmethod
    def of(cls, mode: str) -> Plan:
        sizes = Sizes.of(mode)
        if mode == "smoke":
            return cls(
                sizes,
                100,
                0,
                (0, LATENCY_ENDPOINTS),
                (),  # the paced load only
                3,
                0,
                one_origin=False,
                min_events=2,
            )
        arms = (0, LATENCY_ENDPOINTS, LATENCY_ENDPOINTS, 0)
        if mode == "quick":
            return cls(sizes, 2_000, 300, arms, (sizes.concurrency, 1), 30, 3)
        return cls(sizes, 6_000, 500, arms, (sizes.concurrency, 1), 60, 8)


# ------------------------------------------------------------------------ the receiver


class ReceiverProcess:
    """`bench.webhook_receiver` with `listeners` ports (plus the shared/control one)."""

    def __init__(self, listeners: int) -> None:
        self.listeners = listeners
        self.process: asyncio.subprocess.Process | None = None
        self.ports: list[int] = []
        self.http = httpx.AsyncClient(timeout=10)

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.webhook_receiver",
            str(self.listeners),
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        if not line.startswith(b"{"):
            raise RuntimeError(f"the webhook receiver did not start: {line!r}")
        self.ports = json.loads(line)["ports"]

    async def stop(self) -> None:
        await self.http.aclose()
        await stop_process(self.process)

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process and self.process.returncode is None else []

    def urls(self, count: int, *, one_origin: bool = False) -> list[str]:
        if one_origin:
            return [f"http://127.0.0.1:{self.ports[0]}/hooks/{n}" for n in range(count)]
        return [f"http://127.0.0.1:{port}/hooks/{n}" for n, port in enumerate(self.ports[1:])][
            :count
        ]

    async def control(self, path: str, method: str = "GET") -> Any:
        response = await self.http.request(method, f"http://127.0.0.1:{self.ports[0]}{path}")
        response.raise_for_status()
        return response.json()


class SenderProcess:
    """`ordergraph send-webhooks --concurrency N` beside `stack`'s server, with its env."""

    def __init__(self, stack: Stack, concurrency: int = SENDER_CONCURRENCY) -> None:
        self.stack = stack
        self.concurrency = concurrency
        self.process: asyncio.subprocess.Process | None = None
        self.log = Path(tempfile.gettempdir()) / f"ordergraph-bench-sender-{stack.port}.log"

    async def start(self) -> None:
        stack = self.stack
        env = service_env(
            stack.database_url,
            emulator_port=stack.emulator_port,
            smtp_port=stack.smtp_port,
            events_url=stack.events_url,
            extra=stack.extra_env,
        )
        with self.log.open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ordergraph.cli",
                "send-webhooks",
                "--concurrency",
                str(self.concurrency),
                env=env,
                stdout=out,
                stderr=out,
            )
        await asyncio.sleep(1.5)  # no port to wait for: it must still be alive
        if self.process.returncode is not None:
            raise RuntimeError(f"send-webhooks exited: {self.log.read_text()[-3000:]}")

    async def stop(self) -> None:
        await stop_process(self.process)

    def pids(self) -> list[int]:
        return tree(self.process.pid) if self.process and self.process.returncode is None else []


# ------------------------------------------------------------------------ database


@dataclass
class Endpoint:
    id: uuid.UUID
    url: str
    secret: str


async def register(
    conn: asyncpg.Connection, urls: Sequence[str], *, active: bool = True
) -> list[Endpoint]:
    """Endpoints subscribed to every event, as `create_endpoint` stores them (slots 1..N, a
    fresh `whsec_` secret each); `active=False`: paused. Endpoints registered before are
    deleted, with their deliveries (not the retired one of `seed_history`)."""
    await conn.execute("DELETE FROM webhook_endpoints WHERE slot > 0")
    await conn.execute(
        "DELETE FROM webhook_events e WHERE NOT EXISTS"
        " (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)"
    )
    endpoints = [Endpoint(uuid.uuid4(), url, signing.new_secret()) for url in urls]
    await conn.executemany(
        "INSERT INTO webhook_endpoints (id, slot, url, events, secret, active, created_at,"
        " created_by) VALUES ($1, $2, $3, '[\"*\"]'::jsonb, $4, $5, now(), 'bench')",
        [(e.id, n + 1, e.url, e.secret, active) for n, e in enumerate(endpoints)],
    )
    return endpoints


def event_body(event_id: uuid.UUID, order: dict[str, Any], lines: list[tuple[Any, ...]]) -> str:
    """An `order.created` body with the keys and sizes a change writes."""
    at = order["created_at"].isoformat()
    payload = {
        "id": str(order["id"]),
        "status": "PENDING_PAYMENT",
        "paymentStatus": "PENDING",
        "version": order["version"],
        "email": f"{order['user_id']}@bench.test",
        "currency": order["currency"],
        "subtotal": order["total"],
        "discount": 0,
        "shipping": 0,
        "tax": 0,
        "total": order["total"],
        "amountRefunded": 0,
        "promotionCode": None,
        "shippingAddress": None,
        "carrier": None,
        "trackingNumber": None,
        "createdAt": at,
        "updatedAt": at,
        "paidAt": None,
        "deliveredAt": None,
        "lines": [
            {
                "productId": str(pid),
                "name": name,
                "unitPrice": price,
                "quantity": qty,
                "quantityRefunded": 0,
            }
            for _, pid, name, price, qty in lines
        ],
        "returns": [],
    }
    body = {
        "id": str(event_id),
        "type": "order.created",
        "createdAt": at,
        "data": {"order": payload},
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


@dataclass
class BacklogOrders:
    orders: list[dict[str, Any]]
    lines: dict[uuid.UUID, list[tuple[Any, ...]]]


async def backlog_orders(bench: Bench, count: int) -> BacklogOrders:
    """`count` pending orders (2 lines) that the backlog's events are about, one event each:
    a receiver hears of distinct orders, so no delivery waits for an earlier one of its
    order (deliveries of one order to one endpoint go one at a time)."""
    conn = await bench.db.connect()
    try:
        users = [f"whq-{i}" for i in range(200)]
        await ensure_users(conn, users)
        rows = make_orders(
            users,
            bench.products,
            count,
            lines=2,
            pending=True,
            rng=random.Random(5),
            tag="whq",
            session_prefix=BACKLOG_PREFIX,
        )
        await conn.execute("SET session_replication_role = replica")
        await copy_orders(conn, rows)
    finally:
        await conn.close()
    lines: dict[uuid.UUID, list[tuple[Any, ...]]] = {}
    for item in rows.items:
        lines.setdefault(item[0], []).append(item)
    return BacklogOrders([dict(zip(ORDER_COLUMNS, o, strict=True)) for o in rows.orders], lines)


async def write_backlog(
    conn: asyncpg.Connection,
    source: BacklogOrders,
    endpoints: list[Endpoint],
    events: int,
    *,
    days_ago: float = 0,
    fanned_out: bool = False,
) -> None:
    """`events` events, committed at once, each a millisecond after the one before (all due
    now): as changes write them, for the sender to fan out to `endpoints`, or `fanned_out`
    with their deliveries already written."""
    start = datetime.now(UTC) - timedelta(days=days_ago, milliseconds=events + 1000)
    event_rows = []
    delivery_rows = []
    for n, order in enumerate(source.orders[:events]):
        at = start + timedelta(milliseconds=n)
        event_id = uuid.uuid4()
        body = event_body(event_id, order, source.lines[order["id"]])
        event_rows.append((event_id, "order.created", order["id"], body, at, not fanned_out))
        for endpoint in endpoints if fanned_out else ():
            delivery_rows.append(
                (endpoint.id, event_id, order["id"], "order.created", "pending", 0, at, at)
            )
    async with conn.transaction():
        await conn.copy_records_to_table(
            "webhook_events",
            records=event_rows,
            columns=["id", "type", "order_id", "body", "created_at", "fan_out_pending"],
        )
        if not delivery_rows:
            return
        await conn.copy_records_to_table(
            "webhook_deliveries",
            records=delivery_rows,
            columns=[
                "endpoint_id",
                "event_id",
                "order_id",
                "event_type",
                "status",
                "attempts",
                "next_attempt_at",
                "created_at",
            ],
        )


async def clear_webhooks(conn: asyncpg.Connection) -> None:
    """No endpoint, event or delivery left, and PostgreSQL's statistics say so (what a new
    installation, or one whose sender keeps up, has: few pending deliveries at any time)."""
    await conn.execute("DELETE FROM webhook_endpoints")  # deliveries go with them
    await conn.execute("DELETE FROM webhook_events")
    await conn.execute("VACUUM ANALYZE webhook_deliveries, webhook_events, webhook_endpoints")


HISTORY_EVENTS = 2_000
# How long the stale-statistics point is watched: longer than the sender's lease (25 s with
# the default 10 s timeout), so that claims left under lease come due again in it.
STALE_WINDOW = 40.0


async def seed_history(conn: asyncpg.Connection, source: BacklogOrders) -> int:
    """What a shop in use has: deliveries sent long ago (here 2,000 events to 10 endpoints,
    DELIVERED), kept for the retention period, and PostgreSQL's statistics of that table.
    They belong to one retired endpoint, paused and subscribed to nothing (slot 0, outside
    the slots `create_endpoint` uses), so that it receives no new event."""
    await clear_webhooks(conn)
    retired = Endpoint(uuid.uuid4(), "http://127.0.0.1:9/retired", signing.new_secret())
    await conn.execute(
        "INSERT INTO webhook_endpoints (id, slot, url, events, secret, active, created_at,"
        " created_by) VALUES ($1, 0, $2, '[]'::jsonb, $3, false, now(), 'bench')",
        retired.id,
        retired.url,
        retired.secret,
    )
    events = min(HISTORY_EVENTS, len(source.orders))
    await write_backlog(conn, source, [retired] * 10, events, days_ago=7, fanned_out=True)
    await conn.execute(
        "UPDATE webhook_deliveries SET status = 'delivered', attempts = 1,"
        " response_status = 200, delivered_at = created_at + interval '1 second'"
    )
    await conn.execute("VACUUM ANALYZE webhook_deliveries, webhook_events, webhook_endpoints")
    return events * 10


def pg_pids(database: str) -> Callable[[], list[int]]:
    """PostgreSQL's processes working for this run: the backends of `database` and the
    server's own (checkpointer, WAL writer, autovacuum...), not other databases' backends
    (other people's tests on this machine use the same server)."""

    def pids() -> list[int]:
        found = []
        for pid in postgres_pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            client = re.search(r"\(\d+\)|\[local\]", cmdline) is not None
            if not client or f" {database} " in cmdline:
                found.append(pid)
        return found

    return pids


async def pending_count(conn: asyncpg.Connection) -> int:
    """Deliveries not yet made, and events not yet fanned out to theirs."""
    count: int = await conn.fetchval(
        "SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending')"
        " + (SELECT count(*) FROM webhook_events WHERE fan_out_pending)"
    )
    return count


async def wait_fanned_out(conn: asyncpg.Connection, timeout: float = 60) -> float:
    """Seconds until the sender has fanned out every event (it does so for paused endpoints
    too: they keep their deliveries until resumed)."""
    started = time.monotonic()
    while await conn.fetchval("SELECT count(*) FROM webhook_events WHERE fan_out_pending"):
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"events not fanned out within {timeout:.0f} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def drop_pending(conn: asyncpg.Connection) -> None:
    await conn.execute("DELETE FROM webhook_deliveries WHERE status = 'pending'")
    await conn.execute("DELETE FROM webhook_events WHERE fan_out_pending")


async def wait_drained(conn: asyncpg.Connection, timeout: float) -> tuple[float, int]:
    """(seconds until no delivery is pending, how many still were at the timeout)."""
    started = time.monotonic()
    while True:
        left = await pending_count(conn)
        if not left or time.monotonic() - started > timeout:
            return time.monotonic() - started, left
        await asyncio.sleep(0.25)


# ------------------------------------------------------------------- part 1: throughput


def _rate(times: Sequence[float], low: float, high: float) -> float:
    """Arrivals per second between the `low` and `high` quantiles of the arrival times."""
    if len(times) < 3:
        return float("nan")
    a, b = round(low * (len(times) - 1)), round(high * (len(times) - 1))
    return (b - a) / (times[b] - times[a]) if times[b] > times[a] else float("nan")


async def drain(
    bench: Bench,
    stack: Stack,
    receiver: ReceiverProcess,
    source: BacklogOrders,
    count: int,
    backlog: int,
    *,
    min_events: int = 3,
    timeout: float = 30,
    one_origin: bool = False,
    stale_statistics: bool = False,
    profile_seconds: float = 0,
) -> dict[str, Any]:
    """One throughput point: the backlog for `count` endpoints, written at once, sent.

    stale_statistics: PostgreSQL's statistics and the server's cached plan of the claim are
    those of the empty table (no ANALYZE since the backlog was written), as on a new
    installation whose first backlog builds up before the table is next analysed."""
    events = max(min_events, backlog // count)
    expected = events * count
    conn = await bench.db.connect()
    try:
        await clear_webhooks(conn)
        if stale_statistics:
            # The sender polls each second: after 5 polls PostgreSQL keeps a generic plan of
            # its claim made for the empty table, and nothing replans it (autovacuum is off
            # on this server; elsewhere its next ANALYZE of the table would).
            await asyncio.sleep(7)
        # Paused while the backlog is written (as for a receiver down for maintenance), so
        # that the sender starts on all of it at once when they are resumed.
        endpoints = await register(conn, receiver.urls(count, one_origin=one_origin), active=False)
        await write_backlog(conn, source, endpoints, events)
        fan_out_s = await wait_fanned_out(conn)
        if not stale_statistics:
            # What autovacuum does soon after such a batch (50 rows + 10% of the table).
            await conn.execute("ANALYZE webhook_deliveries, webhook_events, webhook_endpoints")
        await receiver.control("/_reset", "POST")
        meter = CpuMeter(
            {
                "server": stack.server_pids,
                "postgres": pg_pids(bench.db.name),
                "receiver": receiver.pids,
            }
        )
        profiler = None
        raw = Path(tempfile.mkdtemp(prefix="ordergraph-bench-")) / "profile-drain.txt"
        meter.begin()
        await conn.execute("UPDATE webhook_endpoints SET active = true")
        committed = time.monotonic()
        if profile_seconds:
            profiler = asyncio.create_task(
                profiling.record(stack.worker_pids()[0], profile_seconds, raw)
            )
        seen, progress_at = 0, time.monotonic()
        stalled: dict[str, Any] | None = None
        while True:
            stats = await receiver.control("/_stats")
            if stats["count"] >= expected:
                break
            if stats["count"] > seen:
                seen, progress_at = stats["count"], time.monotonic()
            if stale_statistics and time.monotonic() - committed > STALE_WINDOW:
                # Measured for a fixed time: how far it got, and how the claims left the rows.
                stalled = dict(
                    await conn.fetchrow(
                        "SELECT count(*) FILTER (WHERE status = 'pending') AS pending,"
                        " count(*) FILTER (WHERE status = 'pending' AND claimed_until > now())"
                        " AS pending_under_lease, max(attempts) AS most_attempts,"
                        " count(*) FILTER (WHERE status = 'delivered' AND attempts > 1)"
                        " AS delivered_after_several_claims FROM webhook_deliveries"
                    )
                )
                stalled["seconds_since_resumed"] = time.monotonic() - committed
                break
            if time.monotonic() - progress_at > timeout:
                state = await conn.fetch(
                    "SELECT status, attempts, last_error, count(*) FROM webhook_deliveries"
                    " GROUP BY 1, 2, 3 LIMIT 10"
                )
                raise RuntimeError(
                    f"{count} endpoints: {stats['count']}/{expected} delivered, no progress"
                    f" for {timeout:.0f} s; deliveries: {[dict(r) for r in state]}"
                )
            await asyncio.sleep(0.05)
        cpu = meter.end()
        times: list[float] = await receiver.control("/_times")
        messages = await profiler if profiler else None
        last = await receiver.control("/_last")
        # What the sender recorded: every delivery DELIVERED (its outcome is written after
        # the answer, so wait for the last few records).
        deadline = time.monotonic() + 10
        while not stalled and await pending_count(conn) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        outcome = {
            r["status"]: r["n"]
            for r in await conn.fetch(
                "SELECT status, count(*) AS n FROM webhook_deliveries GROUP BY status"
            )
        }
        attempts = await conn.fetchval("SELECT sum(attempts) FROM webhook_deliveries")
    finally:
        await conn.close()
    seconds = times[-1] - times[0] if len(times) > 1 else float("nan")
    per_second = (len(times) - 1) / seconds if seconds else float("nan")
    if stalled:
        seconds = stalled["seconds_since_resumed"]
        per_second = len(times) / seconds
    secrets_by_path = {e.url.split("/hooks/", 1)[1]: e.secret for e in endpoints}
    secret = secrets_by_path.get(last.get("url", "").rsplit("/", 1)[-1], "")
    verified = signing.verify(
        secret, last.get("body", ""), last.get("headers", {}).get("ordergraph-signature", "")
    )
    received = len(times)
    result: dict[str, Any] = {
        "endpoints": count,
        "one_origin": one_origin,
        "stale_statistics": stale_statistics,
        "stalled": stalled,
        "events": events,
        "fan_out_s": fan_out_s,
        "deliveries": expected,
        "received": received,
        "delivered_in_db": outcome.get("delivered", 0),
        "outcomes": outcome,
        "attempts": attempts,
        "connections": (await receiver.control("/_stats"))["connections"],
        "seconds": seconds,
        "first_after_commit_s": times[0] - committed if times else None,
        "deliveries_per_second": per_second,
        "deliveries_per_second_middle": _rate(times, 0.1, 0.9),
        "events_per_second": per_second / count,
        "signature_verified": verified,
        "body_bytes": len(last.get("body", "")),
        "cpu_seconds": cpu,
        "cpu_ms_per_delivery": {
            k: v * 1000 / max(1, received) for k, v in cpu.items() if k not in ("wall",)
        },
    }
    if profiler:
        result["profile"] = {**profiling.summarise(raw), **shares(raw)}
        result["profile"]["py_spy"] = (messages or "")[-500:]
    return result


# ---------------------------------------------------------------- part 2: added latency


async def latency_runs(
    bench: Bench,
    stack: Stack,
    receiver: ReceiverProcess,
    plan: Plan,
    kind: str,
    concurrency: int,
    log: Callable[[str], None],
    tag: str,
    *,
    rate: float | None = None,
    sender: SenderProcess | None = None,
    writes_only: bool = False,
) -> dict[str, Any]:
    """`kind` load at `concurrency` once per arm of the plan, endpoints as the arm says.
    `sender`: the deliveries are sent by that process (the server only writes them); its CPU
    is measured from the start of the load to the catch-up. `writes_only`: nothing sends
    (the server has no sender either): what the requests pay for writing the events and
    deliveries, which are deleted after each load."""
    variant = OWN_PROCESS if sender else WRITES_ONLY if writes_only else IN_SERVER
    sizes = plan.sizes
    runs: list[dict[str, Any]] = []
    for n, registered in enumerate(plan.arms):
        conn = await bench.db.connect()
        try:
            await register(conn, receiver.urls(registered))
        finally:
            await conn.close()
        spec: dict[str, Any] = {"concurrency": concurrency, "rate": rate}
        if kind == "checkout":
            spec.update(mode="spread", tag=f"{tag}c{concurrency}r{n}")
        else:
            spec["pool"] = _pool(sizes, 1000)
            await bench.top_up_pending(spec["pool"], f"{tag}c{concurrency}r{n}")
        log(
            f"{kind}, c={_load_name(concurrency, rate)}, {registered} endpoints,"
            f" {VARIANT_TITLES[variant]} (run {n + 1}/{len(plan.arms)})"
        )
        meter = CpuMeter({"sender": sender.pids}) if sender else None
        if meter:
            meter.begin()
        started = datetime.now(UTC)
        load = await bench.load(kind, stack=stack, **spec)
        ended = datetime.now(UTC)
        during = dict(meter.end()) if meter else None
        run: dict[str, Any] = {"endpoints": registered, "variant": variant, "load": load}
        conn = await bench.db.connect()
        try:
            run["pending_at_end"] = await pending_count(conn)
            if writes_only:
                run["catch_up_s"], run["abandoned"] = 0.0, 0
            else:
                timeout = plan.catch_up_timeout
                run["catch_up_s"], run["abandoned"] = await wait_drained(conn, timeout)
            if registered:
                run["sender"] = await sender_stats(conn, started, ended)
            if registered and writes_only:
                run["events_written"] = await conn.fetchval(
                    "SELECT count(*) FROM webhook_events WHERE created_at >= $1", started
                )
                log(f"    {run['events_written']:,} events written, none fanned out or sent")
                await drop_pending(conn)
            elif registered:
                log(
                    f"    sender: {run['sender']['created']:,} deliveries written,"
                    f" {run['sender']['delivered_during_load']:,} sent during the load,"
                    f" {run['pending_at_end']:,} pending at its end, caught up in"
                    f" {run['catch_up_s']:.1f} s; delay p50 {run['sender']['delay_p50_s']:.2f} s"
                    f" p99 {run['sender']['delay_p99_s']:.2f} s"
                )
            if meter and during:
                total = meter.end()
                # The meter spans the whole load (start-up and warm-up too): CPU per operation
                # is its rate over the load's measured rate of operations.
                ops_per_s = load["throughput"] or float("nan")
                created = run.get("sender", {}).get("created", 0)
                run["sender_process"] = {
                    "cpu_s_during_load": during["sender"],
                    "wall_s_during_load": during["wall"],
                    "cpu_s_to_catch_up": total["sender"],
                    "cpu_ms_per_op": 1000 * during["sender"] / during["wall"] / ops_per_s,
                    "cpu_ms_per_delivery": (
                        1000 * total["sender"] / created if created else float("nan")
                    ),
                }
            if run["abandoned"]:
                log(f"    {run['abandoned']} deliveries and events still pending: deleted")
                await drop_pending(conn)
            # What autovacuum does between loads (it is off on this PostgreSQL server): without
            # it, the dead rows of every load's deliveries stay in the pending rows' indexes
            # and each claim walks past more of them (300,000 after a full run's first loads,
            # when the sender stalled on them).
            await conn.execute("VACUUM ANALYZE webhook_deliveries, webhook_events")
        finally:
            await conn.close()
        if kind == "webhook":
            await bench.settle_outbox()
        runs.append(run)
    return {
        "kind": kind,
        "concurrency": concurrency,
        "rate": rate,
        "variant": variant,
        "runs": runs,
        **compare(runs),
    }


async def sender_stats(
    conn: asyncpg.Connection, started: datetime, ended: datetime
) -> dict[str, Any]:
    row = await conn.fetchrow(
        "SELECT count(*) AS created,"
        " count(*) FILTER (WHERE delivered_at <= $1) AS delivered_during_load,"
        " count(*) FILTER (WHERE status = 'delivered') AS delivered,"
        " count(*) FILTER (WHERE status = 'dead') AS dead,"
        " count(*) FILTER (WHERE attempts > 1) AS retried,"
        " min(created_at) AS first_created, max(created_at) AS last_created,"
        " percentile_cont(0.5) WITHIN GROUP"
        "  (ORDER BY extract(epoch FROM delivered_at - created_at)) AS delay_p50_s,"
        " percentile_cont(0.99) WITHIN GROUP"
        "  (ORDER BY extract(epoch FROM delivered_at - created_at)) AS delay_p99_s,"
        " max(extract(epoch FROM delivered_at - created_at)) AS delay_max_s"
        " FROM webhook_deliveries WHERE created_at >= $2",
        ended,
        started,
    )
    out = dict(row)
    first, last = out.pop("first_created"), out.pop("last_created")
    span = (ended - first).total_seconds() if first else float("nan")
    produced = (last - first).total_seconds() if first else float("nan")
    out["written_per_second"] = out["created"] / produced if produced else float("nan")
    out["sent_per_second_during_load"] = out["delivered_during_load"] / span if span else 0.0
    out["load_seconds"] = (ended - started).total_seconds()
    for key in ("delay_p50_s", "delay_p99_s", "delay_max_s"):
        out[key] = float(out[key]) if out[key] is not None else float("nan")
    return out


METRICS = ("throughput", "p50_ms", "p99_ms", "mean_ms")


def compare(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each arm's mean over its runs, and the change with endpoints, in percent."""
    arms: dict[int, dict[str, float]] = {}
    for registered in sorted({r["endpoints"] for r in runs}):
        mine = [r["load"] for r in runs if r["endpoints"] == registered]
        arms[registered] = {m: sum(x[m] for x in mine) / len(mine) for m in METRICS}
        arms[registered]["server_cpu_ms"] = sum(
            x["cpu_ms_per_op"].get("server", 0.0) for x in mine
        ) / len(mine)
        arms[registered]["postgres_cpu_ms"] = sum(
            x["cpu_ms_per_op"].get("postgres", 0.0) for x in mine
        ) / len(mine)
        if any("sender_process" in r for r in runs):
            arms[registered]["sender_cpu_ms"] = sum(
                r.get("sender_process", {}).get("cpu_ms_per_op", 0.0)
                for r in runs
                if r["endpoints"] == registered
            ) / len(mine)
    if 0 not in arms or LATENCY_ENDPOINTS not in arms:
        return {"arms": arms}
    base, with_ = arms[0], arms[LATENCY_ENDPOINTS]
    added = {
        m: 100 * (with_[m] / base[m] - 1) if base[m] else float("nan")
        for m in (*METRICS, "server_cpu_ms", "postgres_cpu_ms")
    }
    return {
        "arms": {str(k): v for k, v in arms.items()},
        "added_pct": added,
        "target_met": {
            "p50": added["p50_ms"] < 5,
            "p99": added["p99_ms"] < 5,
            "throughput": added["throughput"] > -5,
        },
    }


async def profile_load(
    bench: Bench,
    stack: Stack,
    receiver: ReceiverProcess,
    seconds: float,
    tag: str,
    catch_up_timeout: float,
) -> dict[str, Any]:
    """py-spy on the worker while checkouts run with 10 endpoints registered (and their
    deliveries are sent): which share of its samples is the sender's."""
    conn = await bench.db.connect()
    try:
        await register(conn, receiver.urls(LATENCY_ENDPOINTS))
    finally:
        await conn.close()
    raw = Path(tempfile.mkdtemp(prefix="ordergraph-bench-")) / "profile-checkout-10.txt"
    load = asyncio.create_task(
        bench.load(
            "checkout", stack=stack, mode="spread", tag=tag, warmup=1.0, duration=seconds + 1.5
        )
    )
    await asyncio.sleep(1.0)
    messages = await profiling.record(stack.worker_pids()[0], seconds, raw)
    result = await load
    conn = await bench.db.connect()
    try:
        await wait_drained(conn, catch_up_timeout)
        await register(conn, [])
    finally:
        await conn.close()
    summary = {**profiling.summarise(raw), **shares(raw)}
    summary["load"] = {k: result[k] for k in ("throughput", "p50_ms", "p99_ms")}
    summary["py_spy"] = messages[-500:]
    return summary


def shares(raw: Path) -> dict[str, Any]:
    """Shares of the worker's samples: the sender (claiming, posting, recording, each), the
    events written in requests, and the rest."""
    parts: Counter[str] = Counter()
    total = 0
    if not raw.exists():
        return {"shares": {}}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        if "outgoing_webhooks/sender.py" in stack:
            parts["sender"] += count
            if "claim_due (" in stack:
                parts["sender: claim"] += count
            elif "WebhookSender.post (" in stack:
                parts["sender: POST"] += count
            elif "record_delivered (" in stack:
                parts["sender: record"] += count
        elif "prepare_order_event (" in stack:  # its INSERT runs within the change's statement
            parts["prepare_order_event (in requests)"] += count
        else:
            parts["other"] += count
    return {
        "shares": {k: round(100 * v / total, 1) for k, v in parts.most_common()} if total else {}
    }


async def throughput(
    bench: Bench,
    stack: Stack,
    receiver: ReceiverProcess,
    plan: Plan,
    source: BacklogOrders,
    results: dict[str, Any],
    log: Callable[[str], None],
) -> None:
    log("throughput: backlog drains")
    points: list[dict[str, Any]] = [{"count": n} for n in ENDPOINT_COUNTS]
    if plan.one_origin:
        points.append({"count": max(ENDPOINT_COUNTS), "one_origin": True})
    if plan.stale_backlog:
        points.append(
            {"count": LATENCY_ENDPOINTS, "stale_statistics": True, "backlog": plan.stale_backlog}
        )
    for spec in points:
        count = spec.pop("count")
        backlog = spec.pop("backlog", plan.backlog)
        point = await drain(
            bench, stack, receiver, source, count, backlog, min_events=plan.min_events, **spec
        )
        results["throughput"].append(point)
        cpu = point["cpu_ms_per_delivery"]
        log(
            f"    {count:>3} endpoints{_variant(point)}:"
            f" {point['received']:,} of {point['deliveries']:,} deliveries in"
            f" {point['seconds']:.2f} s,"
            f" {point['deliveries_per_second']:,.0f}/s"
            f" (middle {point['deliveries_per_second_middle']:,.0f}/s),"
            f" {point['events_per_second']:,.1f} events/s; CPU a delivery: server"
            f" {cpu['server']:.2f} ms, PostgreSQL {cpu['postgres']:.2f} ms, receiver"
            f" {cpu['receiver']:.3f} ms; signature ok: {point['signature_verified']}"
        )
    if plan.profile_seconds and profiling.available():
        log(f"profile (py-spy) of a drain to {LATENCY_ENDPOINTS} endpoints")
        point = await drain(
            bench,
            stack,
            receiver,
            source,
            LATENCY_ENDPOINTS,
            plan.backlog,
            profile_seconds=min(plan.profile_seconds, 5),
        )
        results["profile_drain"] = point.get("profile", {})
        log(f"    {results['profile_drain'].get('shares')}")


def _load_name(concurrency: int, rate: float | None) -> str:
    return f"{concurrency} at {rate:g}/s" if rate else str(concurrency)


def _variant(point: dict[str, Any]) -> str:
    if point.get("one_origin"):
        return ", one origin"
    if point.get("stale_statistics"):
        return ", stale statistics"
    return ""


async def latency_variant(
    bench: Bench,
    stack: Stack,
    receiver: ReceiverProcess,
    plan: Plan,
    results: dict[str, Any],
    log: Callable[[str], None],
    *,
    sender: SenderProcess | None = None,
    writes_only: bool = False,
) -> None:
    """Checkouts and Stripe webhooks at each concurrency, with and without endpoints."""
    prefix = "whs" if sender else "whw" if writes_only else "wh"
    loads = [(c, None) for c in plan.concurrencies] + [(PACED_USERS, PACED_RATE)]
    for kind in ("checkout", "webhook"):
        for concurrency, rate in loads:
            row = await latency_runs(
                bench,
                stack,
                receiver,
                plan,
                kind,
                concurrency,
                log,
                f"{prefix}{kind}{'p' if rate else ''}",
                rate=rate,
                sender=sender,
                writes_only=writes_only,
            )
            results["latency"].append(row)
            if "added_pct" in row:
                added = row["added_pct"]
                log(
                    f"    {kind} c={_load_name(concurrency, rate)},"
                    f" {VARIANT_TITLES[row['variant']]}: with"
                    f" {LATENCY_ENDPOINTS} endpoints p50 {added['p50_ms']:+.1f}%,"
                    f" p99 {added['p99_ms']:+.1f}%, throughput {added['throughput']:+.1f}%"
                )


# -------------------------------------------------------------------------- the run


async def run(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    from bench.run import machine

    plan = Plan.of(mode)
    started = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {line}", flush=True)

    problem = await postgres_problem()
    if problem:
        raise SystemExit(problem)
    results: dict[str, Any] = {
        "meta": {
            **machine(),
            "mode": mode,
            "command": "python -m bench.webhooks"
            + {"full": "", "quick": " --quick"}.get(mode, " --smoke"),
            "server_env": SERVER_ENV,
            "backlog_deliveries": plan.backlog,
            "sizes": plan.sizes.__dict__,
            "arms": plan.arms,
        },
        "throughput": [],
        "latency": [],
    }
    receiver = ReceiverProcess(max(ENDPOINT_COUNTS))
    async with Bench(plan.sizes, log=log) as bench:
        await receiver.start()
        try:
            log(f"receiver on {len(receiver.ports)} loopback ports")
            async with bench.stack(1, name="webhooks", extra_env=SERVER_ENV) as stack:
                source = await backlog_orders(bench, max(plan.backlog, HISTORY_EVENTS))
                if "throughput" in args.only:
                    await throughput(bench, stack, receiver, plan, source, results, log)
                if "latency" in args.only:
                    conn = await bench.db.connect()
                    try:
                        results["meta"]["history_deliveries"] = await seed_history(conn, source)
                    finally:
                        await conn.close()
                if "latency" in args.only:
                    await latency_variant(bench, stack, receiver, plan, results, log)
                if "latency" in args.only and plan.profile_seconds and profiling.available():
                    log(f"profile (py-spy) of checkouts with {LATENCY_ENDPOINTS} endpoints")
                    results["profile_checkout"] = await profile_load(
                        bench,
                        stack,
                        receiver,
                        plan.profile_seconds,
                        "whprof",
                        plan.catch_up_timeout,
                    )
                    log(f"    {results['profile_checkout'].get('shares')}")
            if "latency" in args.only:
                # The same loads with the deliveries sent by a process of their own (after the
                # first server has stopped: its sender would take them otherwise).
                env = {**SERVER_ENV, "WEBHOOK_CONCURRENCY": "0"}
                results["meta"]["own_process_server_env"] = env
                results["meta"]["sender_concurrency"] = SENDER_CONCURRENCY
                async with bench.stack(1, name="webhooks-own", extra_env=env) as stack:
                    log("no sender at all: what writing the events costs the requests")
                    await latency_variant(
                        bench, stack, receiver, plan, results, log, writes_only=True
                    )
                    sender = SenderProcess(stack)
                    await sender.start()
                    log(f"send-webhooks --concurrency {SENDER_CONCURRENCY} beside the server")
                    try:
                        await latency_variant(
                            bench, stack, receiver, plan, results, log, sender=sender
                        )
                    finally:
                        await sender.stop()
        finally:
            await receiver.stop()
    results["meta"]["seconds"] = time.perf_counter() - started
    results["meta"]["loadavg_end"] = os.getloadavg()
    log(f"done in {results['meta']['seconds']:.0f} s")
    return results


# ------------------------------------------------------------------------- the docs


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:,.{digits}f}"


def table(results: dict[str, Any]) -> str:
    meta = results["meta"]
    load = meta["loadavg_start"]
    lines = [
        f"Run: `{meta['command']}`, {meta['date']}, {meta['seconds'] / 60:.1f} minutes."
        f" Code: {meta['code']}. Machine: {meta['nproc']} cores ({meta['cpu']}), Python"
        f" {meta['python']}; load average {load[0]:.2f} at the start,"
        f" {meta['loadavg_end'][0]:.2f} at the end.",
        "",
        "Backlog drain (one `ordergraph serve --workers 1`, 16 slots, at most 8 to one"
        " endpoint; CPU per delivery from /proc):",
        "",
        "| endpoints | deliveries | fan-out s | seconds | deliveries/s | middle 80% /s |"
        " events/s | server CPU ms | PostgreSQL ms | receiver ms | connections |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in results["throughput"]:
        cpu = p["cpu_ms_per_delivery"]
        name = f"{p['endpoints']}{_variant(p)}"
        if p.get("stalled"):
            st = p["stalled"]
            name += (
                f" (**{p['received']:,} of {p['deliveries']:,} sent in"
                f" {st['seconds_since_resumed']:.0f} s**; {st['pending_under_lease']:,} pending"
                f" rows under lease, attempts up to {st['most_attempts']})"
            )
        lines.append(
            f"| {name} | {p['deliveries']:,} | {_f(p.get('fan_out_s', float('nan')), 2)} |"
            f" {_f(p['seconds'], 2)} |"
            f" {_f(p['deliveries_per_second'], 0)} | {_f(p['deliveries_per_second_middle'], 0)} |"
            f" {_f(p['events_per_second'], 1)} | {_f(cpu['server'], 2)} |"
            f" {_f(cpu['postgres'], 2)} | {_f(cpu['receiver'], 3)} | {p['connections']:,} |"
        )
    lines += [
        "",
        f"Added by {LATENCY_ENDPOINTS} endpoints (means over the runs of each arm, order"
        f" {', '.join(map(str, meta['arms']))}; latency in ms, server CPU and the"
        " `send-webhooks` process's CPU per operation; each sender variant against its own"
        " 0-endpoint arm):",
        "",
        "| load | c | sender | arm | ops/s | p50 | p99 | server CPU ms | sender process CPU ms |"
        " deliveries written/s | sent/s during load | pending at end | catch-up s |"
        " delay p50 s | delay p99 s |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        " ---: | ---: | ---: |",
    ]
    for row in results["latency"]:
        arms = row.get("arms", {})
        for key, arm in arms.items():
            mine = [r for r in row["runs"] if str(r["endpoints"]) == str(key)]
            senders = [r["sender"] for r in mine if "sender" in r]

            def mean(values: list[float]) -> float:
                return sum(values) / len(values) if values else float("nan")

            where = VARIANT_NAMES[row.get("variant", IN_SERVER)]
            lines.append(
                f"| {row['kind']} | {_load_name(row['concurrency'], row.get('rate'))} |"
                f" {where} | {key} endpoints |"
                f" {_f(arm['throughput'], 0)} | {_f(arm['p50_ms'])} | {_f(arm['p99_ms'])} |"
                f" {_f(arm['server_cpu_ms'], 2)} | {_f(arm.get('sender_cpu_ms'), 2)} |"
                f" {_f(mean([s['written_per_second'] for s in senders]), 0)} |"
                f" {_f(mean([s['sent_per_second_during_load'] for s in senders]), 0)} |"
                f" {_f(mean([float(r['pending_at_end']) for r in mine]), 0) if senders else '-'} |"
                f" {_f(mean([r['catch_up_s'] for r in mine]), 1) if senders else '-'} |"
                f" {_f(mean([s['delay_p50_s'] for s in senders]), 2)} |"
                f" {_f(mean([s['delay_p99_s'] for s in senders]), 2)} |"
            )
        if "added_pct" in row:
            a = row["added_pct"]
            met = all(row["target_met"].values())
            lines.append(
                f"| **added** | | | | **{a['throughput']:+.1f}%** | **{a['p50_ms']:+.1f}%** |"
                f" **{a['p99_ms']:+.1f}%** | {a['server_cpu_ms']:+.1f}% | | | | | | |"
                f" {'target met' if met else '**target (< 5%) missed**'} |"
            )
    for key, title in (
        ("profile_drain", f"drain to {LATENCY_ENDPOINTS} endpoints"),
        ("profile_checkout", f"checkouts with {LATENCY_ENDPOINTS} endpoints"),
    ):
        prof = results.get(key)
        if prof and prof.get("samples"):
            share = ", ".join(f"{k} {v}%" for k, v in prof.get("shares", {}).items())
            lines += ["", f"Profile of the worker, {title} ({prof['samples']:,} samples): {share}."]
    return "\n".join(lines)


BEGIN, END = "<!-- webhooks:begin -->", "<!-- webhooks:end -->"


def write_docs(results: dict[str, Any], path: Path) -> bool:
    text = path.read_text()
    if BEGIN not in text or END not in text:
        return False
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{BEGIN}\n\n{table(results)}\n\n{END}{tail}")
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="3 s a point, smaller backlogs")
    size.add_argument("--smoke", action="store_true", help="seconds: proves the bench runs")
    parser.add_argument("--output", type=Path, help="results JSON (default bench/results/)")
    parser.add_argument(
        "--only", nargs="+", choices=PARTS, default=list(PARTS), help="run only these parts"
    )
    parser.add_argument(
        "--no-docs", action="store_true", help="a full run: leave docs/benchmarks.md alone"
    )
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    name = {"full": "webhooks.json"}.get(mode, f"webhooks-{mode}.json")
    output: Path = args.output or RESULTS / name
    output.parent.mkdir(parents=True, exist_ok=True)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        results = runner.run(run(args, mode))
    output.write_text(json.dumps(results, indent=1, default=str))
    print(f"results: {output}")
    print(table(results))
    if mode == "full" and not args.no_docs:
        docs = ROOT / "docs" / "benchmarks.md"
        if write_docs(results, docs):
            print(f"wrote {docs.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
