"""What the benchmark processes share: the database made for a run, its seed data, the
service, the Stripe emulator and a mail sink as processes of their own, and CPU accounting.

Everything runs on loopback on this machine. Nothing here is imported by `ordergraph/`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from ordergraph.stripe_emulator import DEFAULT_SHIPPING

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PG_ADMIN_DSN = os.environ.get("ORDERGRAPH_BENCH_PG", "postgres://root@127.0.0.1:5432/test")
JWT_SECRET = "bench-secret-" + "x" * 32
WEBHOOK_SECRET = "whsec_bench_" + "0123456789abcdef"
STAFF_USER = "bench-staff"
PRODUCTS = 10_000
STOCK = 1_000_000_000
HOT_SKU = "HOT-0"
CURRENCY = "USD"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def base_dsn() -> str:
    return PG_ADMIN_DSN.rsplit("/", 1)[0]


async def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None."""
    try:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL at {PG_ADMIN_DSN} is not reachable: {exc}"
    await conn.close()
    return None


class BenchDatabase:
    """A PostgreSQL database made for one run (migrated by ordergraph), dropped afterwards."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"og_bench_{os.getpid()}_{secrets.token_hex(3)}"
        self.url = f"{base_dsn()}/{self.name}"

    async def create(self) -> None:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await admin.close()
        # Migrations in a child process: Tortoise keeps global state we do not want here.
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import asyncio, sys; from ordergraph.db import apply_migrations; "
            "asyncio.run(apply_migrations(sys.argv[1]))",
            self.url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"migrations failed: {out.decode()[-2000:]}")

    async def drop(self) -> None:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await admin.close()

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url)


# ---------------------------------------------------------------------------- seeding


def _now() -> datetime:
    return datetime.now(UTC)


async def seed_catalogue(conn: asyncpg.Connection, products: int = PRODUCTS) -> None:
    """`products` products with stock that never runs out, plus the hot one (sku HOT-0)."""
    now = _now()
    rows = [
        (uuid.uuid4(), f"SKU-{i:06d}", f"Product {i}", "", 500 + (i % 50) * 100, STOCK, True, now)
        for i in range(products)
    ]
    rows.append((uuid.uuid4(), HOT_SKU, "Hot product", "", 1999, STOCK, True, now))
    await conn.copy_records_to_table(
        "products",
        records=[(*r, r[-1]) for r in rows],
        columns=[
            "id",
            "sku",
            "name",
            "description",
            "price",
            "stock",
            "active",
            "created_at",
            "updated_at",
        ],
    )
    await conn.execute(
        "INSERT INTO users (id, email, is_staff, created_at) VALUES ($1, $2, true, now())"
        " ON CONFLICT DO NOTHING",
        STAFF_USER,
        "staff@bench.test",
    )


async def product_ids(conn: asyncpg.Connection) -> tuple[list[uuid.UUID], uuid.UUID]:
    """(every ordinary product id, the hot product id)."""
    rows = await conn.fetch("SELECT id, sku FROM products")
    hot = next(r["id"] for r in rows if r["sku"] == HOT_SKU)
    return [r["id"] for r in rows if r["sku"] != HOT_SKU], hot


async def ensure_users(conn: asyncpg.Connection, user_ids: Sequence[str]) -> None:
    await conn.execute(
        "INSERT INTO users (id, email, is_staff, created_at)"
        " SELECT u, u || '@bench.test', false, now() FROM unnest($1::text[]) AS u"
        " ON CONFLICT DO NOTHING",
        list(user_ids),
    )


@dataclass
class OrderRows:
    """Rows for COPY: orders and what hangs off them."""

    orders: list[tuple[Any, ...]] = field(default_factory=list)
    items: list[tuple[Any, ...]] = field(default_factory=list)
    changes: list[tuple[Any, ...]] = field(default_factory=list)
    trackers: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    outbox: list[tuple[Any, ...]] = field(default_factory=list)


ORDER_COLUMNS = [
    "id",
    "user_id",
    "status",
    "payment_status",
    "version",
    "currency",
    "total",
    "amount_refunded",
    "shipping_address",
    "is_locked",
    "stripe_checkout_session_id",
    "stripe_payment_intent_id",
    "customer_email",
    "expires_at",
    "paid_at",
    "created_at",
    "updated_at",
]
# The money breakdown of an order without discount, shipping or tax: its subtotal is its total.
BREAKDOWN_COLUMNS = ["subtotal", "discount", "shipping_cost", "tax"]
ITEM_COLUMNS = ["order_id", "product_id", "product_name", "unit_price", "quantity"]
CHANGE_COLUMNS = ["order_id", "status", "payment_status", "reason", "actor", "at"]
TRACKER_COLUMNS = [
    "order_id",
    "provider",
    "session_id",
    "payment_intent_id",
    "amount",
    "currency",
    "status",
    "created",
]
EVENT_COLUMNS = ["event_id", "type", "received"]
OUTBOX_COLUMNS = [
    "dedupe_key",
    "order_id",
    "recipient",
    "subject",
    "text_body",
    "html_body",
    "status",
    "attempts",
    "next_attempt_at",
    "created_at",
    "sent_at",
]
ADDRESS = json.dumps({"name": DEFAULT_SHIPPING["name"], **DEFAULT_SHIPPING["address"]})


def make_orders(
    users: Sequence[str],
    products: Sequence[uuid.UUID],
    count: int,
    *,
    lines: int,
    pending: bool,
    rng: random.Random,
    tag: str,
    created: datetime | None = None,
    session_prefix: str = "cs_bench",
) -> OrderRows:
    """`count` orders spread over `users`, each with `lines` lines.

    pending: PENDING_PAYMENT with a Checkout Session id `cs_bench_<tag>_<n>`, as a checkout
    leaves it (what the webhook scenario confirms). Otherwise DELIVERED with the rows a paid
    order has (history, tracker, processed event, receipt), for the growth scenario.
    """
    out = OrderRows()
    base = created or _now()
    for n in range(count):
        order_id = uuid.uuid4()
        user = users[n % len(users)]
        picks = rng.sample(products, lines)
        prices = [500 + rng.randrange(50) * 100 for _ in picks]
        total = sum(prices)
        session = f"{session_prefix}_{tag}_{n}"
        at = base - timedelta(seconds=count - n) if created is not None else base
        for pid, price in zip(picks, prices, strict=True):
            out.items.append((order_id, pid, f"Product {pid.hex[:6]}", price, 1))
        if pending:
            out.orders.append(
                (
                    order_id,
                    user,
                    "pending_payment",
                    "pending",
                    1,
                    CURRENCY,
                    total,
                    0,
                    None,
                    False,
                    session,
                    None,
                    None,
                    at + timedelta(minutes=31),
                    None,
                    at,
                    at,
                )
            )
            out.changes.append((order_id, "pending_payment", "pending", "checkout", "bench", at))
            continue
        pi = f"pi_bench_{tag}_{n}"
        out.orders.append(
            (
                order_id,
                user,
                "delivered",
                "paid",
                4,
                CURRENCY,
                total,
                0,
                ADDRESS,
                True,
                session,
                pi,
                f"{user}@bench.test",
                at + timedelta(minutes=31),
                at,
                at,
                at,
            )
        )
        for status, payment, reason in (
            ("pending_payment", "pending", "checkout"),
            ("payment_confirmed", "paid", "payment received"),
            ("awaiting_shipment", "paid", "awaiting shipment"),
            ("shipped", "paid", "shipped"),
            ("delivered", "paid", "delivered"),
        ):
            out.changes.append((order_id, status, payment, reason, "bench", at))
        out.trackers.append((order_id, "stripe", session, pi, total, CURRENCY, "paid", at))
        out.events.append((f"evt_bench_{tag}_{n}", "checkout.session.completed", at))
        out.outbox.append(
            (
                f"receipt:{order_id}",
                order_id,
                f"{user}@bench.test",
                "Your receipt",
                "Thank you for your order.",
                "<p>Thank you for your order.</p>",
                "sent",
                1,
                at,
                at,
                at,
            )
        )
    return out


async def copy_orders(conn: asyncpg.Connection, rows: OrderRows) -> None:
    total = ORDER_COLUMNS.index("total")
    await conn.copy_records_to_table(
        "orders",
        records=[(*order, order[total], 0, 0, 0) for order in rows.orders],
        columns=ORDER_COLUMNS + BREAKDOWN_COLUMNS,
    )
    for table, records, columns in (
        ("order_items", rows.items, ITEM_COLUMNS),
        ("order_status_changes", rows.changes, CHANGE_COLUMNS),
        ("payment_trackers", rows.trackers, TRACKER_COLUMNS),
        ("processed_stripe_events", rows.events, EVENT_COLUMNS),
        ("outbox_emails", rows.outbox, OUTBOX_COLUMNS),
    ):
        if records:
            await conn.copy_records_to_table(table, records=records, columns=columns)


async def order_count(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM orders")
    return count


# ------------------------------------------------------------------------ processes


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def tree(pid: int) -> list[int]:
    pids = [pid]
    for child in children(pid):
        pids += tree(child)
    return pids


def _cpu_ticks(pid: int) -> int:
    try:
        fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields_[11]) + int(fields_[12])  # utime + stime


def postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


TICK = os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent by named groups of processes over a window (from /proc).

    Groups are functions returning pids, re-read at the end so that processes started or
    ended meanwhile (PostgreSQL backends) are counted for what they spent while alive.
    """

    def __init__(self, groups: dict[str, Any]) -> None:
        self.groups = groups
        self.start: dict[str, dict[int, int]] = {}
        self.started = 0.0
        self.machine_start = 0

    @staticmethod
    def _machine() -> int:
        first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        return sum(int(x) for x in first[:8]) - int(first[3]) - int(first[4])  # busy ticks

    def begin(self) -> None:
        self.started = time.perf_counter()
        self.machine_start = self._machine()
        self.start = {g: {p: _cpu_ticks(p) for p in f()} for g, f in self.groups.items()}

    def end(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.started
        result: dict[str, float] = {}
        for group, pids_of in self.groups.items():
            before = self.start[group]
            spent = 0
            for pid in set(pids_of()) | set(before):
                now = _cpu_ticks(pid)
                if now:
                    spent += now - before.get(pid, 0)
            result[group] = spent / TICK
        result["machine"] = (self._machine() - self.machine_start) / TICK
        # What the rest of the machine (other people's work) took meanwhile.
        result["others"] = max(0.0, result["machine"] - sum(result[g] for g in self.groups))
        result["wall"] = elapsed
        self.result = result
        return result

    def __enter__(self) -> CpuMeter:
        self.begin()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()


class MailSinkProcess:
    """A tiny SMTP server (aiosmtpd) in a process of its own, accepting every mail."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        code = (
            "import asyncio, sys\n"
            "from aiosmtpd.controller import Controller\n"
            "class Sink:\n"
            "    async def handle_DATA(self, server, session, envelope):\n"
            "        return '250 OK'\n"
            "c = Controller(Sink(), hostname='127.0.0.1', port=int(sys.argv[1]))\n"
            "c.start()\n"
            "print('ready', flush=True)\n"
            "import signal; signal.sigwait({signal.SIGTERM, signal.SIGINT})\n"
            "c.stop()\n"
        )
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, str(self.port), stdout=asyncio.subprocess.PIPE
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        if b"ready" not in line:
            raise RuntimeError("mail sink did not start")

    async def stop(self) -> None:
        await stop_process(self.process)


async def stop_process(process: asyncio.subprocess.Process | None, timeout: float = 20) -> None:
    if process is None or process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()


async def wait_http(
    url: str, process: asyncio.subprocess.Process, log: Path, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as http:
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"{url} exited: {log.read_text()[-3000:]}")  # noqa: ASYNC240
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready: {log.read_text()[-3000:]}")  # noqa: ASYNC240
            await asyncio.sleep(0.1)


def service_env(
    database_url: str,
    *,
    emulator_port: int,
    smtp_port: int,
    events_url: str | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "EVENTS_URL": events_url or database_url,
        "JWT_SECRET": JWT_SECRET,
        "STRIPE_SECRET_KEY": "sk_test_bench",
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": f"http://127.0.0.1:{emulator_port}",
        "CHECKOUT_RATE_PER_MINUTE": "0",
        "SWEEP_INTERVAL_SECONDS": "0",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "MAIL_FROM": "orders@bench.test",
        **(extra or {}),
    }


class Stack:
    """The Stripe emulator and `ordergraph serve --workers N`, each a process of its own."""

    def __init__(
        self,
        database_url: str,
        smtp_port: int,
        *,
        workers: int = 1,
        events_url: str | None = None,
        extra_env: dict[str, str] | None = None,
        name: str = "service",
    ) -> None:
        self.database_url = database_url
        self.smtp_port = smtp_port
        self.workers = workers
        self.events_url = events_url
        self.extra_env = extra_env
        self.port = free_port()
        self.emulator_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tmp = Path(tempfile.gettempdir())
        self.log = tmp / f"ordergraph-bench-{name}-{self.port}.log"
        self.emulator_log = tmp / f"ordergraph-bench-emulator-{self.emulator_port}.log"
        self.server: asyncio.subprocess.Process | None = None
        self.emulator: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Stack:
        with self.emulator_log.open("wb") as out:
            self.emulator = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ordergraph.cli",
                "stripe-emulator",
                "--port",
                str(self.emulator_port),
                "--webhook-url",
                f"{self.url}/webhooks/stripe",
                "--webhook-secret",
                WEBHOOK_SECRET,
                stdout=out,
                stderr=out,
            )
        env = service_env(
            self.database_url,
            emulator_port=self.emulator_port,
            smtp_port=self.smtp_port,
            events_url=self.events_url,
            extra=self.extra_env,
        )
        with self.log.open("wb") as out:
            self.server = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ordergraph.cli",
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                env=env,
                stdout=out,
                stderr=out,
            )
        try:
            await wait_http(
                f"http://127.0.0.1:{self.emulator_port}/_emulator/webhook",
                self.emulator,
                self.emulator_log,
            )
            await wait_http(f"{self.url}/readyz", self.server, self.log)
            if self.workers > 1:
                # Every worker answers /readyz only once it has started; wait for all of them.
                deadline = time.monotonic() + 60
                while len(self.worker_pids()) < self.workers and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await stop_process(self.server)
        await stop_process(self.emulator)

    def server_pids(self) -> list[int]:
        return tree(self.server.pid) if self.server and self.server.returncode is None else []

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: uvicorn's workers, or the one process."""
        if self.server is None:
            return []
        if self.workers == 1:
            return [self.server.pid]
        # uvicorn's supervisor forks workers (multiprocessing spawn: a resource tracker and
        # the workers are children; the workers are the ones that import the app).
        return [
            p
            for p in children(self.server.pid)
            if "multiprocessing.resource_tracker" not in _cmdline(p)
        ]

    def emulator_pids(self) -> list[int]:
        return [self.emulator.pid] if self.emulator and self.emulator.returncode is None else []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
