"""The test harness: the real app under uvicorn on loopback, a real database (SQLite, or a
PostgreSQL database made for this run and dropped after it), the Stripe emulator driven through
the real `stripe` SDK, and a real SMTP server (aiosmtpd) collecting the mail.

`ORDERGRAPH_TEST_DB=postgres` runs the suite on PostgreSQL; with `CI=true` an unreachable
server fails the run instead of skipping it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from aiosmtpd.controller import Controller
from starlette.applications import Starlette
from tortoise import Tortoise

from ordergraph.app import create_app
from ordergraph.auth import forget_known_users, issue_token
from ordergraph.db import apply_migrations
from ordergraph.demo.stack import read_mail
from ordergraph.models import OutboxEmail, OutboxStatus
from ordergraph.outgoing_webhooks import events as events_for_endpoints
from ordergraph.settings import Settings
from ordergraph.stripe_emulator import StripeEmulator
from ordergraph.web.websocket_protocol import SERVER_OPTIONS
from tests.utils import loopback

JWT_SECRET = "test-secret-" + "x" * 32
WEBHOOK_SECRET = "whsec_test_" + secrets.token_hex(16)
METRICS_TOKEN = "metrics-" + secrets.token_hex(8)
PG_ADMIN_DSN = os.environ.get("ORDERGRAPH_TEST_PG", "postgres://root@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"
BACKEND = os.environ.get("ORDERGRAPH_TEST_DB", "sqlite")

TABLES = [
    "webhook_deliveries",
    "webhook_events",
    "webhook_endpoints",
    "promotion_codes",
    "shipping_rates",
    "guest_sessions",
    "payment_discrepancies",
    "outbox_emails",
    "payment_trackers",
    "order_refunds",
    "order_returns",
    "order_notes",
    "stock_movements",
    "order_status_changes",
    "order_items",
    "orders",
    "cart_items",
    "products",
    "processed_stripe_events",
    "users",
]


# Tests send traffic to loopback only (tests/utils/loopback.py): this process refuses anything
# else from now on, and so does every Python process it starts, since they all inherit os.environ
# or `service_env` (whose PYTHONPATH runs loopback_site/sitecustomize.py); all of them report to
# one file of this run.
_CONNECT_LOG_DIR = tempfile.TemporaryDirectory(prefix="ordergraph-connect-log-")
LOOPBACK_ENV = loopback.subprocess_env(
    str(Path(_CONNECT_LOG_DIR.name) / "violations.log"), os.environ.get("PYTHONPATH")
)
os.environ.update(LOOPBACK_ENV)
loopback.install(LOOPBACK_ENV[loopback.LOG_VARIABLE])
_reported_violations: Counter[str] = Counter()


def _unreported_violations() -> list[str]:
    new = Counter(loopback.violations()) - _reported_violations
    _reported_violations.update(new)
    return list(new.elements())


@pytest.fixture(autouse=True)
def _loopback_only() -> Iterator[None]:
    """Fails the test during which something connected, sent or resolved a name outside loopback,
    here or in a subprocess (also during the set-up of a wider fixture): the guard refused it, but
    the code may have taken the refusal in its stride. A test that provokes one on purpose takes
    it with `loopback.expecting_violations()`."""
    yield
    found = _unreported_violations()
    if found:
        pytest.fail("outside loopback (tests/utils/loopback.py):\n" + "\n".join(found), False)


# Where pytest-xdist's workers leave the violations of their last teardowns, for the process
# that reports the run: made by that process, and inherited by the workers it starts.
_LATE_VARIABLE = "ORDERGRAPH_TEST_LATE_VIOLATIONS"
if _LATE_VARIABLE not in os.environ:
    _LATE_DIR = tempfile.TemporaryDirectory(prefix="ordergraph-late-violations-")
    os.environ[_LATE_VARIABLE] = _LATE_DIR.name


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Those of the last teardowns (session fixtures, subprocesses that outlived their test)."""
    found = _unreported_violations()
    late = Path(os.environ[_LATE_VARIABLE])
    if hasattr(session.config, "workerinput"):  # an xdist worker: the reporting process says it
        if found:
            (late / f"{os.getpid()}.log").write_text("\n".join(found))
        return
    found += [line for path in sorted(late.glob("*.log")) for line in path.read_text().splitlines()]
    if found:
        print("\noutside loopback (tests/utils/loopback.py):\n" + "\n".join(found), file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# What tests leave for people to look at (the browser test's screenshot); not committed.
OUTPUT_DIR = Path(__file__).resolve().parents[1] / "test-output"
_SESSION_STARTED = time.time()


def pytest_report_header(config: pytest.Config) -> str:
    return f"ordergraph test database: {BACKEND}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Names the files this run wrote to test-output/, so that they appear in CI's log."""
    if not OUTPUT_DIR.is_dir():
        return
    written = sorted(
        path for path in OUTPUT_DIR.iterdir() if path.stat().st_mtime >= _SESSION_STARTED
    )
    for path in written:
        terminalreporter.write_line(f"test output: {path}")


postgres_only = pytest.mark.skipif(
    BACKEND != "postgres", reason="needs PostgreSQL (run with ORDERGRAPH_TEST_DB=postgres)"
)


async def _postgres_available() -> str | None:
    try:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL at {PG_ADMIN_DSN} is not reachable: {exc}"
    await conn.close()
    return None


@asynccontextmanager
async def scratch_database(tag: str) -> AsyncIterator[str]:
    """A PostgreSQL database of its own, dropped afterwards (over a fresh connection: a test may
    have restarted the server meanwhile)."""
    name = f"og_test_{tag}_{os.getpid()}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    try:
        yield f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    if BACKEND == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite://{Path(folder) / 'test.sqlite3'}"
        return
    problem = await _postgres_available()
    if problem:
        if IN_CI:
            pytest.fail(problem)
        pytest.skip(problem)
    async with scratch_database("run") as url:
        yield url


@dataclass
class Mailbox:
    messages: list[EmailMessage] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        """Addresses at bounce.test do not exist: a permanent refusal, as a real server gives."""
        if address.endswith("@bounce.test"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = read_mail(envelope.content)
        message["X-Envelope-To"] = ",".join(envelope.rcpt_tos)
        self.messages.append(message)
        return "250 OK"

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return list(self.messages)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class SmtpServer:
    """A real SMTP server (aiosmtpd) on a fixed loopback port that tests can stop and restart."""

    def __init__(self) -> None:
        self.mailbox = Mailbox()
        self.port = free_port()
        self._controller: Controller | None = None

    def start(self) -> None:
        self._controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@pytest.fixture(scope="session")
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mailbox(app: Harness, smtp: SmtpServer) -> Mailbox:
    """The mail that this test caused (the `app` fixture empties it)."""
    return smtp.mailbox


class Served:
    """A uvicorn server on 127.0.0.1 with a free port, run in the test's event loop."""

    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=0,
                log_level="warning",
                lifespan="on",
                **SERVER_OPTIONS,
            )
        )
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> str:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        assert self.task is not None
        await self.task


@pytest.fixture(scope="session")
async def stripe_server() -> AsyncIterator[tuple[StripeEmulator, str]]:
    emu = StripeEmulator(webhook_secret=WEBHOOK_SECRET)
    async with Served(emu.app) as url:
        yield emu, url


@dataclass
class Harness:
    url: str
    settings: Settings
    emulator: StripeEmulator
    http: httpx.AsyncClient
    asgi: Starlette

    @contextmanager
    def stripe_webhooks_to(self, service_url: str | None) -> Iterator[None]:
        """Stripe's webhooks go to the service at `service_url` (a process the test drives;
        None: nowhere) meanwhile, then back to this one."""
        self.emulator.webhook_url = service_url and f"{service_url}/webhooks/stripe"
        try:
            yield
        finally:
            self.emulator.webhook_url = f"{self.url}/webhooks/stripe"

    def token(
        self, user: str = "shopper-1", *, email: str | None = None, staff: bool = False
    ) -> str:
        return issue_token(
            JWT_SECRET, user, email if email is not None else f"{user}@example.com", staff=staff
        )

    async def gql(
        self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await self.http.post(
            f"{self.url}/graphql",
            json={"query": query, "variables": variables or {}},
            headers=headers,
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def make_settings(
    database_url: str, emulator_url: str, smtp_port: int, **overrides: Any
) -> Settings:
    return Settings.from_env(service_env(database_url, emulator_url, smtp_port, **overrides))


def service_env(
    database_url: str, emulator_url: str, smtp_port: int, **overrides: str
) -> dict[str, str]:
    """The environment of a test service, in process or as a separate `ordergraph serve`."""
    return {
        "DATABASE_URL": database_url,
        "JWT_SECRET": JWT_SECRET,
        "STRIPE_SECRET_KEY": "sk_test_ordergraph",
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": emulator_url,
        "STRIPE_TIMEOUT_SECONDS": "2",
        "STRIPE_MAX_RETRIES": "0",
        "FRONTEND_URL": "http://shop.test",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "MAIL_FROM": "orders@shop.test",
        "METRICS_TOKEN": METRICS_TOKEN,
        # Receivers of outgoing webhooks listen on loopback; retries come quickly.
        "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
        "WEBHOOK_RETRY_BASE_MS": "50",
        "WEBHOOK_TIMEOUT_SECONDS": "2",
        **LOOPBACK_ENV,
        **overrides,
    }


@pytest.fixture(scope="session")
async def harness(
    database_url: str, stripe_server: tuple[StripeEmulator, str], smtp: SmtpServer
) -> AsyncIterator[Harness]:
    emulator, emulator_url = stripe_server
    await apply_migrations(database_url)
    # No background sweeper: a test sweeps when it means to, so that a sweep on the minute
    # cannot settle an order that the test is about to settle itself.
    settings = make_settings(database_url, emulator_url, smtp.port, SWEEP_INTERVAL_SECONDS="0")
    asgi = create_app(settings)
    async with Served(asgi) as url, httpx.AsyncClient(timeout=30) as http:
        emulator.webhook_url = f"{url}/webhooks/stripe"
        yield Harness(url=url, settings=settings, emulator=emulator, http=http, asgi=asgi)


async def outbox_settled(timeout: float = 5.0) -> None:
    """Let the previous test's mail go out, so that it cannot land in the next test's mailbox."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        due = await OutboxEmail.filter(
            status__in=[OutboxStatus.PENDING, OutboxStatus.SENDING],
            next_attempt_at__lte=datetime.now(UTC),
        ).count()
        if not due:
            return
        await asyncio.sleep(0.05)


# A transaction that holds a table longer than this is stuck: the test run fails, naming it,
# instead of waiting for it forever.
TRUNCATE_LOCK_TIMEOUT = "30s"


async def _truncate(connection: Any) -> None:
    truncate = (
        f"SET lock_timeout = '{TRUNCATE_LOCK_TIMEOUT}';"
        f" TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE; RESET lock_timeout"
    )
    # The service's webhook sender takes these tables in its own order (fan-out: events, then
    # deliveries; claims: the other way round): PostgreSQL may pick this statement as a
    # deadlock's victim. It is then simply run again.
    for attempt in range(5):
        try:
            await connection.execute_script(truncate)
            return
        except asyncpg.exceptions.DeadlockDetectedError:
            if attempt == 4:
                raise
        except asyncpg.exceptions.LockNotAvailableError:
            await connection.execute_script("RESET lock_timeout")
            pytest.fail(f"a transaction holds the tables:\n{await _holders(connection)}", False)


async def _holders(connection: Any) -> str:
    """The other sessions of this database with a transaction open."""
    rows = await connection.execute_query_dict(
        "SELECT pid, application_name, state, wait_event, xact_start, query FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND xact_start IS NOT NULL ORDER BY xact_start"
    )
    return "\n".join(str(row) for row in rows)


async def reset_service(harness: Harness, smtp: SmtpServer) -> None:
    """Empty the database, the emulator and the mailbox under the running service."""
    events_for_endpoints.forget_endpoints()
    await harness.emulator.drain()
    await outbox_settled()
    connection = Tortoise.get_connection("default")
    if connection.capabilities.dialect == "postgres":
        await _truncate(connection)
    else:
        for table in TABLES:
            await connection.execute_script(f'DELETE FROM "{table}"')
    forget_known_users()
    smtp.mailbox.messages.clear()
    harness.emulator.reset()
    harness.emulator.webhook_url = f"{harness.url}/webhooks/stripe"
    harness.emulator.webhook_secret = WEBHOOK_SECRET


@pytest.fixture
async def app(harness: Harness, smtp: SmtpServer) -> AsyncIterator[Harness]:
    """The running service with an empty database, a fresh emulator and an empty mailbox."""
    await reset_service(harness, smtp)
    yield harness
    await _no_transaction_left_open()


async def _no_transaction_left_open(timeout: float = 5.0) -> None:
    """Fails the test after which a session of this database still waits for its client
    inside a transaction, or halfway through a statement (`ordergraph.db.pool`): it holds its
    locks until something uses that connection again, and the next reset's TRUNCATE waits."""
    connection = Tortoise.get_connection("default")
    if connection.capabilities.dialect != "postgres":
        return
    deadline = time.monotonic() + timeout
    while True:
        rows = await connection.execute_query_dict(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND wait_event = 'ClientRead'"
            " AND (state = 'active' OR state LIKE 'idle in transaction%')"
        )
        if not rows:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"left waiting for its client:\n{await _holders(connection)}", False)
        await asyncio.sleep(0.05)
