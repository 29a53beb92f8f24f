"""What the live-update tests share: WebSocket clients for both protocols, the order
subscription, Redis for a run, and real `ordergraph serve` processes."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from websockets.typing import Origin, Subprotocol

from ordergraph.events.postgres import APPLICATION_NAME
from tests.conftest import IN_CI, SmtpServer, free_port, service_env
from tests.utils.helpers import ORDER_FIELDS

TRANSPORT_WS = "graphql-transport-ws"
GRAPHQL_WS = "graphql-ws"
PROTOCOLS = (TRANSPORT_WS, GRAPHQL_WS)

SUBSCRIBE = (
    "subscription($id: ID!) { orderStatusChanged(orderId: $id) { %s updatedAt } }" % ORDER_FIELDS
)

# The same, for a caller who holds the order's access token (and perhaps no bearer token).
SUBSCRIBE_WITH_ACCESS = (
    "subscription($id: ID!, $access: String) "
    "{ orderStatusChanged(orderId: $id, accessToken: $access) { %s updatedAt } }" % ORDER_FIELDS
)

REDIS_URL = os.environ.get("ORDERGRAPH_TEST_REDIS", "redis://127.0.0.1:6379/0")
# Every run has its own channel, so that runs sharing one Redis never see each other.
REDIS_CHANNEL = f"ordergraph-test-{os.getpid()}-{secrets.token_hex(4)}"


def ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://", 1) + "/graphql"


def unique(name: str) -> str:
    """A user id no earlier test used: processes remember the users they have written."""
    return f"{name}-{secrets.token_hex(4)}"


class Follower:
    """A `gql` client following one order over one protocol; its messages are collected in
    the background so that a test can wait for them one by one."""

    def __init__(
        self,
        url: str,
        token: str | None,
        order_id: str,
        protocol: str,
        headers: dict[str, str] | None = None,
        access_token: str | None = None,
    ) -> None:
        payload = {"authorization": f"Bearer {token}"} if token else {}
        self.client = Client(
            transport=WebsocketsTransport(
                url=ws_url(url), init_payload=payload, subprotocols=[protocol], headers=headers
            )
        )
        self.request = (
            GraphQLRequest(SUBSCRIBE, variable_values={"id": order_id})
            if access_token is None
            else GraphQLRequest(
                SUBSCRIBE_WITH_ACCESS, variable_values={"id": order_id, "access": access_token}
            )
        )
        self.messages: asyncio.Queue[dict[str, Any] | Exception] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Follower:
        session = await self.client.connect_async()

        async def collect() -> None:
            try:
                async for result in session.subscribe(self.request):
                    await self.messages.put(result["orderStatusChanged"])
            except Exception as exc:
                await self.messages.put(exc)

        self.task = asyncio.create_task(collect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.client.close_async()

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        message = await asyncio.wait_for(self.messages.get(), timeout)
        if isinstance(message, Exception):
            raise message
        return message

    async def until(self, status: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Messages up to the first one with `status`; each newer than the one before."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while not seen or seen[-1]["status"] != status:
            seen.append(await self.next(max(0.1, deadline - time.monotonic())))
        for older, newer in itertools.pairwise(seen):
            assert len(newer["history"]) > len(older["history"]), seen
        return seen

    async def quiet(self, seconds: float = 0.5) -> bool:
        """Whether nothing more arrives for `seconds`."""
        try:
            message = await asyncio.wait_for(self.messages.get(), seconds)
        except TimeoutError:
            return True
        self.messages.put_nowait(message)
        return False

    async def refused(self) -> dict[str, Any]:
        """The one GraphQL error a refused subscription answers."""
        with pytest.raises(TransportQueryError) as caught:
            await self.next()
        errors = caught.value.errors
        assert errors is not None and len(errors) == 1, errors
        error: dict[str, Any] = errors[0]
        return error


class RawSocket:
    """Either protocol by hand, for what a client library hides: close codes, `ka`, origins."""

    def __init__(self, socket: websockets.ClientConnection, protocol: str) -> None:
        self.socket = socket
        self.protocol = protocol

    @classmethod
    async def open(
        cls,
        url: str,
        protocol: str = TRANSPORT_WS,
        *,
        origin: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> RawSocket:
        socket = await websockets.connect(
            ws_url(url),
            subprotocols=[Subprotocol(protocol)],
            origin=Origin(origin) if origin else None,
            additional_headers=headers,
            compression=None,
            open_timeout=5,
        )
        return cls(socket, protocol)

    async def __aenter__(self) -> RawSocket:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.socket.close()

    async def send(self, message: dict[str, Any]) -> None:
        await self.socket.send(json.dumps(message))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(self.socket.recv(), timeout))
        return message

    async def init(self, token: str | None = None) -> dict[str, Any]:
        payload = {"authorization": f"Bearer {token}"} if token else {}
        await self.send({"type": "connection_init", "payload": payload})
        return await self.recv()

    async def subscribe(self, order_id: str, operation: str = "1") -> None:
        kind = "subscribe" if self.protocol == TRANSPORT_WS else "start"
        await self.send(
            {
                "type": kind,
                "id": operation,
                "payload": {"query": SUBSCRIBE, "variables": {"id": order_id}},
            }
        )

    async def next_order(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next order the server sends, skipping graphql-ws keep-alives."""
        while True:
            message = await self.recv(timeout)
            if message["type"] in ("next", "data"):
                assert "errors" not in message["payload"], message
                order: dict[str, Any] = message["payload"]["data"]["orderStatusChanged"]
                return order
            assert message["type"] == "ka", message


def redis_available() -> str | None:
    client = SyncRedis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        return f"Redis at {REDIS_URL} is not reachable: {exc}"
    finally:
        client.close()
    return None


@pytest.fixture(scope="session")
def redis_events_url() -> str:
    """The EVENTS_URL of this run's Redis channel; with CI=true Redis must answer."""
    problem = redis_available()
    if problem:
        if IN_CI:
            pytest.fail(problem)
        pytest.skip(problem)
    return f"{REDIS_URL}?channel={REDIS_CHANNEL}"


async def kill_redis_listeners(channel: str) -> int:
    """Drop the pub/sub connections of this run's listeners (`CLIENT KILL`), and only those."""
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        killed = 0
        for entry in await client.client_list(_type="pubsub"):
            if entry.get("name") == f"ordergraph-events:{channel}":
                killed += await client.execute_command("CLIENT", "KILL", "ID", entry["id"])
        return killed
    finally:
        await client.aclose()


async def kill_postgres_listeners(dsn: str) -> int:
    """Terminate the listeners' backends on the database `dsn` names (this run's own)."""
    admin = await asyncpg.connect(dsn)
    try:
        killed: int = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = current_database()",
            APPLICATION_NAME,
        )
        return killed
    finally:
        await admin.close()


class ServerProcess:
    """`ordergraph serve` in a process of its own, on a free loopback port."""

    def __init__(self, env: dict[str, str], name: str, *args: str) -> None:
        self.env = {**os.environ, **env}
        self.name = name
        self.args = args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.gettempdir()) / f"ordergraph-{name}-{self.port}.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 60.0) -> None:
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ordergraph.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *self.args,
                env=self.env,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
                try:
                    if (await http.get(f"{self.url}/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready: {self.log.read_text()[-3000:]}")
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll an async `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.1)


ORDER_CHANGES = """subscription {
  orderChanges { id status paymentStatus history { status } notes { body author } }
}"""


class Live(Follower):
    """`Follower`'s client, for any subscription document (`orderChanges` among them)."""

    def __init__(
        self,
        url: str,
        token: str | None,
        query: str = ORDER_CHANGES,
        variables: dict[str, Any] | None = None,
        protocol: str = TRANSPORT_WS,
    ) -> None:
        super().__init__(url, token, "", protocol)
        self.request = GraphQLRequest(query, variable_values=variables or {})
        self.marks: dict[str, tuple[int, int]] = {}

    async def __aenter__(self) -> Live:
        session = await self.client.connect_async()

        async def collect() -> None:
            try:
                async for result in session.subscribe(self.request):
                    await self.messages.put(next(iter(result.values())))
            except Exception as exc:
                await self.messages.put(exc)

        self.task = asyncio.create_task(collect())
        return self

    async def order(
        self, order_id: str, check: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        """The first message of `order_id` that passes `check`, skipping any other; every
        message of one order is newer than the one before (more history, or more notes)."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.next(max(0.1, deadline - time.monotonic()))
            mark = (len(message["history"]), len(message.get("notes") or ()))
            last = self.marks.get(message["id"], (0, 0))
            assert mark[0] > last[0] or mark[1] > last[1], (message, last)
            self.marks[message["id"]] = mark
            if message["id"] == order_id and check(message):
                return message


@dataclass
class Cluster:
    transport: str
    a: ServerProcess
    b: ServerProcess


def two_processes(prefix: str) -> Any:
    """A module-scoped `cluster` fixture: processes A and B on the test database, started once
    with PostgreSQL events and once with Redis events.

    Their own expiry sweepers are off, so that only a test's command expires an order.
    """

    @pytest.fixture(scope="module", params=["postgres", "redis"])
    async def cluster(
        request: pytest.FixtureRequest,
        harness: object,  # migrates the database first
        database_url: str,
        stripe_server: tuple[object, str],
        smtp: SmtpServer,
    ) -> AsyncIterator[Cluster]:
        if request.param == "postgres":
            events_url = database_url
        else:
            events_url = request.getfixturevalue("redis_events_url")
        env = service_env(
            database_url,
            stripe_server[1],
            smtp.port,
            EVENTS_URL=events_url,
            SWEEP_INTERVAL_SECONDS="0",
        )
        a, b = ServerProcess(env, f"{prefix}a"), ServerProcess(env, f"{prefix}b")
        try:
            await asyncio.gather(a.start(), b.start())
            yield Cluster(request.param, a, b)
        finally:
            await asyncio.gather(a.stop(), b.stop())

    return cluster
