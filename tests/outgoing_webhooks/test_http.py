"""The sender's HTTP client against real sockets on loopback: the exact request, keep-alive
and when a connection is not kept, capped answers, answers whose body ends with the
connection, a connection closed while idle, one closed without an answer, a request cut short,
idle connections that expire or are too many, closing the client, 1xx answers, and TLS that
verifies the host name.

Every name is resolved by the test's own resolver to 127.0.0.1. Every test also checks that
asyncio reported nothing (no "Future exception was never retrieved", no failed callback).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ordergraph.outgoing_webhooks.http import HookClient
from ordergraph.outgoing_webhooks.targets import TargetRefused

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

# writer, the request's number on the server, its number on its connection (both from 1)
Answer = Callable[[asyncio.StreamWriter, int, int], Awaitable[None]]


async def loopback(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


def client(**options: object) -> HookClient:
    return HookClient(loopback, allow_private=True, **options)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def asyncio_stays_quiet() -> Iterator[None]:
    """Fails a test after which asyncio logged something: a future whose exception no one
    retrieved (reported when it is collected), a protocol callback that raised."""
    handler = Noted(logging.WARNING)
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield
        gc.collect()
    finally:
        logger.removeHandler(handler)
    assert [record.getMessage() for record in handler.records] == []


class Noted(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Server:
    """Answers each request as `answer` writes; notes requests and connections."""

    answer: Answer
    port: int = 0
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    open: int = 0
    closed_by_client: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        on_connection = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                self.requests.append(head + await reader.readexactly(length))
                on_connection += 1
                await self.answer(writer, len(self.requests), on_connection)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client += 1
        finally:
            self.open -= 1
            writer.close()


@asynccontextmanager
async def serving(answer: Answer, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server(answer)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


def replying(*chunks: bytes, close: bool = False) -> Answer:
    async def answer(writer: asyncio.StreamWriter, _: int, __: int) -> None:
        for chunk in chunks:
            writer.write(chunk)
        await writer.drain()
        if close:
            writer.close()

    return answer


async def until(condition: Callable[[], bool], seconds: float = 1.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    assert condition()


async def test_the_request_is_exactly_what_was_asked_and_the_answer_its_status() -> None:
    created = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    async with serving(replying(created)) as server:
        sender = client()
        status = await sender.post(
            f"http://hooks.test:{server.port}/in/hooks?shop=1",
            [(b"Content-Type", b"application/json"), (b"Ordergraph-Signature", b"t=1,v1=ab")],
            b'{"id":"evt"}',
        )
        await sender.aclose()
    assert status == 201
    assert server.requests == [
        b"POST /in/hooks?shop=1 HTTP/1.1\r\n"
        + f"Host: hooks.test:{server.port}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + b"Ordergraph-Signature: t=1,v1=ab\r\n"
        + b"Content-Length: 12\r\n\r\n"
        + b'{"id":"evt"}'
    ]


async def test_an_empty_path_is_posted_as_the_root() -> None:
    async with serving(replying(OK)) as server:
        sender = client()
        assert await sender.post(f"http://hooks.test:{server.port}?a=b", [], b"") == 200
        await sender.aclose()
    assert server.requests[0].startswith(b"POST /?a=b HTTP/1.1\r\n")
    assert server.requests[0].endswith(b"\r\nContent-Length: 0\r\n\r\n")


BIG = 1_000_000
CHUNKED_BIG = b"".join([b"10000\r\n" + b"x" * 0x10000 + b"\r\n"] * 16) + b"0\r\n\r\n"


@pytest.mark.parametrize(
    ("answer", "connections"),
    [
        (OK, 1),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 1),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", 3),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 3),
        (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG + b"x" * BIG, 3),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_BIG, 3),
    ],
    ids=["kept", "chunked-kept", "connection-close", "http-1.0", "too-long", "too-long-chunked"],
)
async def test_a_connection_is_kept_only_when_its_answer_allows(
    answer: bytes, connections: int
) -> None:
    async with serving(replying(answer)) as server:
        sender = client(max_response_bytes=4096)
        statuses = [
            await sender.post(f"http://hooks.test:{server.port}/", [], b"{}") for _ in "abc"
        ]
        await sender.aclose()
    assert statuses == [200, 200, 200]
    assert len(server.requests) == 3
    assert server.connections == connections


async def test_a_redirect_and_an_interim_answer_are_answered_as_they_are() -> None:
    moved = b"HTTP/1.1 301 Moved\r\nLocation: http://elsewhere.test/\r\nContent-Length: 0\r\n\r\n"
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + OK
    async with serving(replying(moved)) as redirecting, serving(replying(interim)) as continuing:
        sender = client()
        assert await sender.post(f"http://hooks.test:{redirecting.port}/", [], b"{}") == 301
        assert await sender.post(f"http://hooks.test:{continuing.port}/", [], b"{}") == 200
        assert await sender.post(f"http://hooks.test:{continuing.port}/", [], b"{}") == 200
        await sender.aclose()
    assert len(redirecting.requests) == 1  # not followed
    assert continuing.connections == 1  # the interim answer did not end the exchange


@pytest.mark.parametrize(
    "answer",
    [b"HTTP/1.0 202 Accepted\r\nServer: BaseHTTP/0.6\r\n\r\n", b"HTTP/1.1 202 OK\r\n\r\nthanks"],
    ids=["http-1.0", "http-1.1"],
)
async def test_an_answer_whose_body_ends_with_the_connection_is_complete_at_its_end(
    answer: bytes,
) -> None:
    """Neither Content-Length nor chunks: the body runs to the close (Python's http.server)."""
    async with serving(replying(answer, close=True)) as server:
        sender = client()
        assert await sender.post(f"http://hooks.test:{server.port}/", [], b"{}") == 202
        assert await sender.post(f"http://hooks.test:{server.port}/", [], b"{}") == 202
        await sender.aclose()
    assert server.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nshort\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",
        b"HTTP/1.1 20",
    ],
    ids=["short-body", "no-last-chunk", "no-end-of-head", "half-a-status-line"],
)
async def test_an_answer_cut_by_the_connection_is_a_connection_error(answer: bytes) -> None:
    async with serving(replying(answer, close=True)) as server:
        sender = client()
        with pytest.raises(ConnectionError, match="in the middle of the answer"):
            await sender.post(f"http://hooks.test:{server.port}/", [], b"{}")
        await sender.aclose()
    assert server.connections == 1


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (b"SMTP ready\r\n\r\n", "bad HTTP answer"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            "switch",
        ),
    ],
    ids=["not-http", "protocol-switch"],
)
async def test_an_answer_that_is_not_http_is_a_connection_error(
    answer: bytes, problem: str
) -> None:
    async with serving(replying(answer)) as server:
        sender = client()
        with pytest.raises(ConnectionError, match=problem):
            await sender.post(f"http://hooks.test:{server.port}/", [], b"{}")
        await until(lambda: server.closed_by_client == 1)
        await sender.aclose()
    assert server.connections == 1


async def test_a_second_answer_to_one_request_closes_the_connection() -> None:
    twice = OK + b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"
    async with serving(replying(twice)) as server:
        sender = client()
        assert await sender.post(f"http://hooks.test:{server.port}/", [], b"{}") == 200
        assert await sender.post(f"http://hooks.test:{server.port}/", [], b"{}") == 200
        await sender.aclose()
    assert server.connections == 2


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def answer_then_close(writer: asyncio.StreamWriter, _: int, __: int) -> None:
        writer.write(OK)  # keep-alive is allowed, yet the server closes the connection
        await writer.drain()
        writer.close()

    async with serving(answer_then_close) as server:
        sender = client()
        first = await sender.post(f"http://hooks.test:{server.port}/", [], b"{}")
        await asyncio.sleep(0.05)
        second = await sender.post(f"http://hooks.test:{server.port}/", [], b"{}")
        await sender.aclose()
    assert (first, second) == (200, 200)
    assert (len(server.requests), server.connections) == (2, 2)


def closing_the_second_on_a_connection(partial: bytes = b"") -> Answer:
    """Answers a connection's first request; at its second, writes `partial` and closes (with
    nothing written, as a server that closed the idle connection as the request came)."""

    async def answer(writer: asyncio.StreamWriter, _: int, on_connection: int) -> None:
        writer.write(OK if on_connection == 1 else partial)
        await writer.drain()
        if on_connection > 1:
            writer.close()

    return answer


async def test_a_reused_connection_closed_before_any_answer_is_replaced_once() -> None:
    async with serving(closing_the_second_on_a_connection()) as server:
        sender = client()
        assert await sender.post(f"http://hooks.test:{server.port}/", [], b"1") == 200
        assert await sender.post(f"http://hooks.test:{server.port}/", [], b"2") == 200
        await sender.aclose()
    # The second POST went on the first connection (closed unanswered), then on a new one.
    assert [request[-1:] for request in server.requests] == [b"1", b"2", b"2"]
    assert server.connections == 2


async def test_a_reused_connection_closed_after_part_of_an_answer_is_not_tried_again() -> None:
    async with serving(closing_the_second_on_a_connection(b"HTTP/1.1 200 OK\r\n")) as server:
        sender = client()
        assert await sender.post(f"http://hooks.test:{server.port}/", [], b"{}") == 200
        with pytest.raises(ConnectionError, match="in the middle of the answer"):
            await sender.post(f"http://hooks.test:{server.port}/", [], b"{}")
        await sender.aclose()
    assert (len(server.requests), server.connections) == (2, 1)


async def test_a_replacement_closed_without_an_answer_is_not_tried_again() -> None:
    async def once_per_server(writer: asyncio.StreamWriter, n: int, __: int) -> None:
        if n == 1:
            writer.write(OK)
            await writer.drain()
        else:
            writer.close()

    async with serving(once_per_server) as server:
        sender = client()
        assert await sender.post(f"http://hooks.test:{server.port}/", [], b"{}") == 200
        with pytest.raises(ConnectionError, match="before the answer"):
            await sender.post(f"http://hooks.test:{server.port}/", [], b"{}")
        await sender.aclose()
    assert (len(server.requests), server.connections) == (3, 2)


async def test_a_new_connection_closed_without_an_answer_fails_once() -> None:
    async with serving(replying(close=True)) as server:
        sender = client()
        with pytest.raises(ConnectionError, match="before the answer"):
            await sender.post(f"http://hooks.test:{server.port}/", [], b"{}")
        await sender.aclose()
    assert (len(server.requests), server.connections) == (1, 1)  # no second try


async def test_a_request_cut_short_closes_its_connection() -> None:
    async def first_never(writer: asyncio.StreamWriter, n: int, __: int) -> None:
        if n > 1:  # the first is never answered: the server waits for a next request
            writer.write(OK)

    async with serving(first_never) as server:
        sender = client()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await sender.post(f"http://hooks.test:{server.port}/", [], b"{}")
        await until(lambda: server.closed_by_client == 1)
        assert (sender.busy, sender.idle) == (set(), {})
        assert await sender.post(f"http://hooks.test:{server.port}/", [], b"{}") == 200
        await sender.aclose()
    assert server.connections == 2


async def test_idle_connections_expire_and_are_closed() -> None:
    async with serving(replying(OK)) as server:
        sender = client(keepalive_seconds=0.1)
        assert await sender.post(f"http://hooks.test:{server.port}/", [], b"{}") == 200
        assert await sender.post(f"http://hooks.test:{server.port}/", [], b"{}") == 200
        assert server.connections == 1
        # Closed by the client's own sweep, with no POST to make it look.
        await until(lambda: server.closed_by_client == 1)
        assert sender.idle == {}
        assert await sender.post(f"http://hooks.test:{server.port}/", [], b"{}") == 200
        # Past its time, a connection is not reused even if the sweep has not come yet.
        time.sleep(0.15)  # noqa: ASYNC251 (the loop, and so the sweep, must not run)
        assert await sender.post(f"http://hooks.test:{server.port}/", [], b"{}") == 200
        await sender.aclose()
    assert server.connections == 3


async def test_at_most_max_idle_per_origin_connections_are_kept() -> None:
    release = asyncio.Event()

    async def together(writer: asyncio.StreamWriter, _: int, __: int) -> None:
        await release.wait()
        writer.write(OK)

    async with serving(together) as server:
        sender = client(max_idle_per_origin=2)
        url = f"http://hooks.test:{server.port}/"
        for round_ in (1, 2):
            posts = [asyncio.create_task(sender.post(url, [], b"{}")) for _ in range(4)]
            await until(lambda n=round_: len(server.requests) == 4 * n)
            release.set()
            assert await asyncio.gather(*posts) == [200] * 4
            release.clear()
            await until(lambda: server.open == 2)
        await sender.aclose()
    assert server.connections == 4 + 2  # the second round reused the 2 kept


async def test_aclose_closes_idle_and_busy_connections_without_trying_again() -> None:
    async def third_never(writer: asyncio.StreamWriter, n: int, __: int) -> None:
        if n < 3:
            writer.write(OK)

    async with serving(third_never) as server:
        sender = client()
        url = f"http://hooks.test:{server.port}/"
        assert await asyncio.gather(sender.post(url, [], b"{}"), sender.post(url, [], b"{}")) == [
            200,
            200,
        ]
        hanging = asyncio.create_task(sender.post(url, [], b"{}"))  # on one of the two
        await until(lambda: len(server.requests) == 3)
        await sender.aclose()
        with pytest.raises(ConnectionError, match="client was closed"):
            async with asyncio.timeout(1):  # not on another connection
                await hanging
        await until(lambda: server.open == 0)
    assert (server.connections, server.closed_by_client, len(server.requests)) == (2, 2, 3)


async def test_a_private_address_is_refused_before_connecting() -> None:
    async with serving(replying(OK)) as server:
        sender = HookClient(loopback, allow_private=False)
        with pytest.raises(TargetRefused, match=re.escape("hooks.test resolves to 127.0.0.1")):
            await sender.post(f"https://hooks.test:{server.port}/", [], b"{}")
        await sender.aclose()
    assert server.connections == 0


async def test_the_next_address_is_tried_when_one_does_not_connect() -> None:
    closed = await asyncio.start_server(lambda r, w: None, "127.0.0.2", 0)
    nothing_there = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()

    async def two(host: str, port: int) -> list[str]:
        return ["127.0.0.2", "127.0.0.1"]

    async with serving(replying(OK)) as server:
        sender = HookClient(two, allow_private=True)
        assert await sender.post(f"http://hooks.test:{server.port}/", [], b"{}") == 200
        await sender.aclose()
        refusing = HookClient(two, allow_private=True)
        with pytest.raises(ConnectionRefusedError):
            await refusing.post(f"http://hooks.test:{nothing_there}/", [], b"{}")
    assert server.connections == 1


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for hooks.test, made by the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=hooks.test", "-addext", "subjectAltName=DNS:hooks.test"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


async def test_https_verifies_the_certificate_and_the_host_name(
    certificate: tuple[Path, Path],
) -> None:
    key, cert = certificate
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    async with serving(replying(OK), tls=served) as server:
        sender = client(ssl_context=trusting)
        assert await sender.post(f"https://hooks.test:{server.port}/", [], b"{}") == 200
        assert await sender.post(f"https://hooks.test:{server.port}/", [], b"{}") == 200
        with pytest.raises(
            ssl.SSLCertVerificationError, match=re.escape("other.test")
        ):  # not its name
            await sender.post(f"https://other.test:{server.port}/", [], b"{}")
        await sender.aclose()
        default = client()  # the system's authorities do not know the certificate
        with pytest.raises(ssl.SSLCertVerificationError, match=r"self[- ]signed"):
            await default.post(f"https://hooks.test:{server.port}/", [], b"{}")
        await default.aclose()
    assert len(server.requests) == 2
    assert server.connections == 1  # kept alive over TLS; the refused handshakes sent nothing
