"""Outgoing webhooks across real `ordergraph serve` processes on PostgreSQL: a process killed
with SIGKILL while a delivery is in flight loses nothing (the next process sends it again once
the lease runs out), and two processes plus the in-process service, all sending from one
database, send every delivery exactly once and never one delivery twice at the same time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ordergraph.models import DeliveryStatus, WebhookDelivery
from ordergraph.outgoing_webhooks import endpoints, signing
from tests.conftest import BACKEND, Harness, Served, SmtpServer, scratch_database, service_env
from tests.utils.helpers import ADD_TO_CART, CHECKOUT, checked_out_order, make_product
from tests.utils.live import ServerProcess, eventually, unique
from tests.utils.receivers import Answer, Received, Receiver, receiving

pytestmark = pytest.mark.skipif(
    BACKEND != "postgres", reason="processes share a PostgreSQL database (ORDERGRAPH_TEST_DB)"
)

CANCEL = "mutation($id: ID!) { cancelOrder(orderId: $id) { userErrors { code message } } }"
UPSERT_PRODUCT = """mutation { upsertProduct(input: {sku: "HOOK", name: "Hook test", price: 900,
  stock: 5}) { product { id } } }"""


async def _gql(
    url: str, query: str, variables: dict[str, Any] | None = None, token: str | None = None
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{url}/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert "errors" not in body, body
    return body


# --- kill -9 ------------------------------------------------------------------------------


@pytest.fixture
async def own_database() -> AsyncIterator[str]:
    """A database of this test's own (migrated by the first process started on it), so that
    only the processes the test starts send its deliveries, not the in-process service."""
    async with scratch_database("hooks") as url:
        yield url


async def _fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = await connection.fetch(query, *args)
        return rows
    finally:
        await connection.close()


async def _register_in(dsn: str, url: str) -> str:
    """An endpoint for every event, written as `endpoints.create_endpoint` writes it (that
    function works on the in-process service's database, not this one)."""
    secret = signing.new_secret()
    await _fetch(
        dsn,
        "INSERT INTO webhook_endpoints (id, slot, url, events, secret, active, created_at,"
        " created_by) VALUES ($1, 1, $2, $3, $4, true, now(), 'staff:sam')",
        uuid.uuid4(),
        url,
        json.dumps(["*"]),
        secret,
    )
    return secret


async def test_a_delivery_in_flight_when_its_process_is_killed_is_sent_again_by_the_next(
    app: Harness, smtp: SmtpServer, own_database: str
) -> None:
    env = service_env(
        own_database,
        app.settings.stripe_api_base or "",
        smtp.port,
        WEBHOOK_TIMEOUT_SECONDS="2",  # lease: 2 * 2 + 5 = 9 s
        SWEEP_INTERVAL_SECONDS="0",
    )
    release = asyncio.Event()
    arrived_at: list[float] = []

    async def hang_first(got: Received) -> int:
        arrived_at.append(time.time())
        if len(arrived_at) == 1:
            await release.wait()  # until the sender is gone
        return 200

    first = ServerProcess(env, "hooks-kill-first")
    second = ServerProcess(env, "hooks-kill-second")
    async with receiving(hang_first) as receiver:
        try:
            await first.start()
            secret = await _register_in(own_database, receiver.url)
            staff, shopper = app.token("sam", staff=True), app.token("victim")
            created = await _gql(first.url, UPSERT_PRODUCT, token=staff)
            product_id = created["data"]["upsertProduct"]["product"]["id"]
            await _gql(first.url, ADD_TO_CART, {"p": product_id, "q": 1}, token=shopper)
            placed = (await _gql(first.url, CHECKOUT, token=shopper))["data"]["checkout"]
            assert placed["userErrors"] == [], placed

            # Committed, claimed and in flight: the receiver holds the request.
            await receiver.wait_for(lambda got: len(got) == 1)
            [held] = await _fetch(own_database, "SELECT * FROM webhook_deliveries")
            assert (held["status"], held["attempts"]) == ("pending", 1)
            assert held["claim"] is not None and held["claimed_until"] is not None

            assert first.process is not None
            first.process.kill()  # SIGKILL: no shutdown, the attempt never ends
            await first.process.wait()
            release.set()

            await second.start()
            await receiver.wait_for(lambda got: len(got) == 2, timeout=30)

            async def delivered() -> list[asyncpg.Record]:
                rows = await _fetch(own_database, "SELECT * FROM webhook_deliveries")
                return rows if rows[0]["status"] == "delivered" else []

            [row] = await eventually(delivered)
            await asyncio.sleep(0.5)  # and nothing more comes
        finally:
            release.set()
            await first.stop()
            await second.stop()

    lost, again = receiver.received
    assert len(receiver.received) == 2
    assert lost.delivery == (str(held["id"]), 1)
    assert again.delivery == (str(held["id"]), 2)  # the same delivery, a later attempt
    assert again.body == lost.body and again.event["type"] == "order.created"
    assert again.event["data"]["order"]["id"] == placed["orderId"]
    assert again.verifies(secret)
    # The second process sent it (the first was dead, and nothing else sends from this
    # database), and only once the killed sender's lease had run out.
    assert arrived_at[1] >= held["claimed_until"].timestamp()
    assert (row["status"], row["attempts"], row["response_status"]) == ("delivered", 2, 200)
    assert row["claim"] is None and row["last_error"] is None


# --- Side by side -------------------------------------------------------------------------


class Senders:
    """Which process holds the client end of a receiver's connection: the peer port, found in
    the kernel's TCP table (/proc/net/tcp*), and its socket among each process's open files."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.owners: dict[str, str] = {}  # socket inode -> name

    @staticmethod
    def _inode(port: int, server_port: int) -> str | None:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if (
                    int(local.rsplit(":", 1)[1], 16) == port
                    and int(remote.rsplit(":", 1)[1], 16) == server_port
                ):
                    return inode
        return None

    def _scan(self) -> None:
        for name, pid in self.pids.items():
            folder = f"/proc/{pid}/fd"
            try:
                entries = os.listdir(folder)
            except OSError:
                continue
            for entry in entries:
                try:
                    target = os.readlink(f"{folder}/{entry}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    self.owners[target[8:-1]] = name

    def of(self, peer_port: int, server_port: int) -> str:
        inode = self._inode(peer_port, server_port)
        if inode is None:
            return "?"
        if inode not in self.owners:
            self._scan()
        return self.owners.get(inode, "?")


@dataclass
class TracedReceiver(Receiver):
    """A `Receiver` that also notes which sender each request came from (in `sent_by`, in the
    order of `received`)."""

    sent_by: list[str] = field(default_factory=list)


@asynccontextmanager
async def receiving_from(senders: Senders, answer: Answer) -> AsyncIterator[TracedReceiver]:
    receiver = TracedReceiver(answer=answer)

    async def handle(request: Request) -> Response:
        assert request.client is not None
        receiver.sent_by.append(senders.of(request.client.port, request.scope["server"][1]))
        return await receiver.handle(request)

    async with Served(Starlette(routes=[Route("/hooks", handle, methods=["POST"])])) as base:
        receiver.url = base + "/hooks"
        yield receiver


async def test_two_processes_and_the_service_send_each_delivery_exactly_once(
    app: Harness, database_url: str, smtp: SmtpServer
) -> None:
    """60 orders placed through two processes side by side (every other one then cancelled
    through the other process), three endpoints: 270 deliveries, claimed by three senders
    (the two processes' and the in-process service's) from one database."""
    orders, endpoint_count = 60, 3
    env = service_env(
        database_url, app.settings.stripe_api_base or "", smtp.port, SWEEP_INTERVAL_SECONDS="0"
    )
    a, b = ServerProcess(env, "hooks-a"), ServerProcess(env, "hooks-b")
    in_flight: Counter[str] = Counter()
    overlapping: list[tuple[str, int]] = []

    async def track(got: Received) -> int:
        delivery_id, attempt = got.delivery
        in_flight[delivery_id] += 1
        if in_flight[delivery_id] > 1:
            overlapping.append((delivery_id, attempt))
        try:
            await asyncio.sleep(random.uniform(0, 0.01))
            return 200
        finally:
            in_flight[delivery_id] -= 1

    try:
        await asyncio.gather(a.start(), b.start())
        assert a.process is not None and b.process is not None
        senders = Senders({"a": a.process.pid, "b": b.process.pid, "service": os.getpid()})
        async with (
            receiving_from(senders, track) as r1,
            receiving_from(senders, track) as r2,
            receiving_from(senders, track) as r3,
        ):
            receivers = (r1, r2, r3)
            for receiver in receivers:
                await endpoints.create_endpoint(
                    receiver.url, ["*"], actor="staff:sam", settings=app.settings
                )
            product = await make_product(unique("HOOK"), stock=orders)
            through = {
                "a": dataclasses.replace(app, url=a.url),
                "b": dataclasses.replace(app, url=b.url),
            }
            gate = asyncio.Semaphore(12)

            async def shop(n: int) -> tuple[str, bool]:
                here, there = ("a", "b") if n % 2 else ("b", "a")
                owner = unique(f"shopper-{n}")
                cancelled = n % 4 < 2
                async with gate:
                    placed = await checked_out_order(through[here], app.token(owner), product)
                    if cancelled:
                        body = await through[there].gql(
                            CANCEL, {"id": placed["orderId"]}, token=app.token(owner)
                        )
                        assert body["data"]["cancelOrder"]["userErrors"] == [], body
                order_id: str = placed["orderId"]
                return order_id, cancelled

            placed = await asyncio.gather(*(shop(n) for n in range(orders)))
            events = orders + sum(cancelled for _, cancelled in placed)
            expected = events * endpoint_count

            async def all_delivered() -> bool:
                count = await WebhookDelivery.filter(status=DeliveryStatus.DELIVERED).count()
                return count == expected

            assert await eventually(all_delivered, timeout=30), (
                await WebhookDelivery.filter(status=DeliveryStatus.DELIVERED).count(),
                expected,
            )
            await asyncio.sleep(0.5)  # and nothing more comes
    finally:
        await asyncio.gather(a.stop(), b.stop())

    received = [r for receiver in receivers for r in receiver.received]
    pairs = [r.delivery for r in received]
    rows = await WebhookDelivery.all()
    assert len(rows) == expected == 270
    assert {(d.status, d.attempts, d.response_status) for d in rows} == {
        (DeliveryStatus.DELIVERED, 1, 200)
    }
    # Each delivery arrived once, as its first attempt; none was in flight twice at once.
    assert len(pairs) == len(set(pairs)) == expected, Counter(pairs).most_common(3)
    assert sorted(pairs) == sorted((str(d.id), 1) for d in rows)
    assert overlapping == []
    # The senders really were side by side: at least two of them sent some.
    sent_by = Counter(name for receiver in receivers for name in receiver.sent_by)
    assert len(set(sent_by) - {"?"}) >= 2, sent_by
    # Each endpoint heard of each order's changes in the order they happened.
    cancelled = {order_id for order_id, was_cancelled in placed if was_cancelled}
    for receiver in receivers:
        types: dict[str, list[str]] = defaultdict(list)
        for r in receiver.received:
            types[r.event["data"]["order"]["id"]].append(r.event["type"])
        assert types == {
            order_id: ["order.created", "order.cancelled"]
            if order_id in cancelled
            else ["order.created"]
            for order_id, _ in placed
        }


# --- A process that only sends ------------------------------------------------------------


async def test_send_webhooks_delivers_for_servers_that_send_none(
    app: Harness, smtp: SmtpServer, own_database: str
) -> None:
    """`ordergraph send-webhooks` beside a server with WEBHOOK_CONCURRENCY=0: the server
    writes the events, the sending process alone delivers them, and stops on SIGTERM."""
    env = service_env(
        own_database,
        app.settings.stripe_api_base or "",
        smtp.port,
        WEBHOOK_CONCURRENCY="0",
        SWEEP_INTERVAL_SECONDS="0",
    )
    server = ServerProcess(env, "hooks-no-sender")
    async with receiving() as receiver:
        sender: asyncio.subprocess.Process | None = None
        try:
            await server.start()  # migrates the database
            secret = await _register_in(own_database, receiver.url)
            staff, shopper = app.token("sam", staff=True), app.token("buyer")
            created = await _gql(server.url, UPSERT_PRODUCT, token=staff)
            product_id = created["data"]["upsertProduct"]["product"]["id"]
            await _gql(server.url, ADD_TO_CART, {"p": product_id, "q": 1}, token=shopper)
            placed = (await _gql(server.url, CHECKOUT, token=shopper))["data"]["checkout"]
            assert placed["userErrors"] == [], placed
            await asyncio.sleep(1.5)  # the server sends nothing itself
            assert receiver.received == []

            sender = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ordergraph.cli",
                "send-webhooks",
                "--concurrency",
                "4",
                env=env,
            )
            await receiver.wait_for(lambda got: len(got) == 1)
            sender.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(sender.wait(), 10) == 0
        finally:
            if sender is not None and sender.returncode is None:
                sender.kill()
            await server.stop()
    [got] = receiver.received
    assert got.event["type"] == "order.created"
    assert got.event["data"]["order"]["id"] == placed["orderId"]
    assert got.verifies(secret)
    [row] = await _fetch(own_database, "SELECT status, attempts FROM webhook_deliveries")
    assert (row["status"], row["attempts"]) == ("delivered", 1)
