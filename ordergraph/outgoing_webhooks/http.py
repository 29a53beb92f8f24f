"""The webhook sender's HTTP client: keep-alive HTTP/1.1 POSTs, each new connection made to
an address `targets.checked_addresses` let through.

Why our own: sending is most of what a delivery costs, and a general client pays for what we
never use. At 16 POSTs at once to a local keep-alive receiver (uvloop), httpcore's connection
pool took 1.05 ms of the sender's CPU a POST; this client, an `asyncio.Protocol` with
httptools' C parser (the one uvicorn serves with), 0.011 ms.

What it does: one request at a time per connection, idle connections kept per origin for
`keepalive_seconds` and reused while the answers allow it, a reused connection the receiver
closed while idle replaced once, TLS that verifies the URL's host name. What it does not do,
on purpose: HTTP/2, proxies, compression, redirects (a 3xx is answered as it is, and the
sender counts it a failure) and reading more than `max_response_bytes` of an answer (the
status is what counts; a longer answer closes its connection).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import cast
from urllib.parse import urlsplit

import httptools

from ordergraph.outgoing_webhooks.targets import Resolver, checked_addresses

# scheme, host, port
Origin = tuple[str, str, int]


class _Target:
    """What a URL says about where and how to send; parsed once per URL."""

    __slots__ = ("head", "origin")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.origin: Origin = (parts.scheme, parts.hostname, port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]  # as written: with its port, if any
        self.head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n".encode("ascii")


class _Connection(asyncio.Protocol):
    """One connection, one request at a time; the answer's status once it is complete.

    The parser lives as long as the connection: after a complete answer that keeps the
    connection, llhttp is ready for the next one."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[int] | None = None
        self.closed = False  # by either side
        self.dropped = False  # by the receiver, before any byte of the pending answer
        self.reusable = False
        self.received = 0  # bytes of the pending answer
        self.body = 0  # bytes of the current message's body
        self.framed = False  # the current message's length is known from its headers
        self.head_done = False
        self.idle_since = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        answer = self.answer
        if answer is None or answer.done():
            self.close()  # bytes no request asked for: the connection is not to be trusted
            return
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # not an HttpParserError
            self.fail(ConnectionError("bad HTTP answer: a protocol switch no one asked for"))
        except httptools.HttpParserError as exc:
            self.fail(ConnectionError(f"bad HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        by_receiver = not self.closed
        self.closed = True
        answer = self.answer
        if answer is None or answer.done():
            return
        if by_receiver and exc is None and self.head_done and not self.framed:
            # An answer without Content-Length or chunks (HTTP/1.0's way, say Python's
            # http.server): its body ends with the connection, so the answer is complete.
            status = self.parser.get_status_code()
            if status >= 200:
                answer.set_result(status)
                return
        if not self.received:
            self.dropped = by_receiver
            self.fail(ConnectionError("the connection closed before the answer"))
        else:
            self.fail(ConnectionError("the connection closed in the middle of the answer"))

    # httptools callbacks

    def on_message_begin(self) -> None:
        # Also when a second answer follows the first in the same bytes: `reusable` is then
        # left False, and the connection is closed rather than kept.
        self.body, self.framed, self.head_done, self.reusable = 0, False, False, False

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 14 and name.lower() == b"content-length":
            self.framed = True
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            self.framed = value.rstrip().lower().endswith(b"chunked")

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body += len(body)
        if self.body > self.max_body:
            answer = self.answer
            if answer is not None and not answer.done():
                answer.set_result(self.parser.get_status_code())
            self.close()  # the rest is not read: the connection cannot carry another request

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 100 Continue and other interim answers: the answer is to come
            return
        answer = self.answer
        if answer is not None and not answer.done():
            self.reusable = self.parser.should_keep_alive()
            answer.set_result(status)

    # ours

    async def send(self, request: bytes) -> int:
        if self.closed or self.transport is None:
            raise ConnectionError("the connection closed before the request was sent")
        self.answer = answer = asyncio.get_running_loop().create_future()
        self.received = 0
        self.transport.write(request)
        try:
            return await answer
        except BaseException:
            self.close()  # cut short (a timeout) or failed: never reused
            raise

    def fail(self, exc: Exception) -> None:
        answer = self.answer
        if answer is not None and not answer.done():
            answer.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()


class HookClient:
    """Keep-alive HTTP/1.1 POSTs to webhook endpoints, each connection to a checked address."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        allow_private: bool,
        ssl_context: ssl.SSLContext | None = None,
        max_idle_per_origin: int = 8,
        keepalive_seconds: float = 30.0,
        max_response_bytes: int = 4096,
    ) -> None:
        self.resolver = resolver
        self.allow_private = allow_private
        self.ssl_context = ssl_context
        self.max_idle_per_origin = max_idle_per_origin
        self.keepalive_seconds = keepalive_seconds
        self.max_response_bytes = max_response_bytes
        self.idle: dict[Origin, list[_Connection]] = {}
        self.busy: set[_Connection] = set()
        self.targets: dict[str, _Target] = {}
        self.sweeper: asyncio.TimerHandle | None = None

    async def post(self, url: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
        """The answer's status. Raises `TargetRefused` for an address not to be called and
        `ConnectionError` or `OSError` when no complete answer came."""
        target = self.targets.get(url)
        if target is None:
            target = self.targets[url] = _Target(url)
            if len(self.targets) > 10_000:  # endpoints come and go: forget the oldest
                del self.targets[next(iter(self.targets))]
        request = b"".join(
            [
                target.head,
                *(b"%s: %s\r\n" % header for header in headers),
                b"Content-Length: %d\r\n\r\n" % len(body),
                body,
            ]
        )
        connection = self._idle(target.origin)
        if connection is not None:
            try:
                return await self._send(target.origin, connection, request)
            except ConnectionError:
                if not connection.dropped:  # it answered something, or we closed it
                    raise
                # The receiver had closed it while idle, before our request reached it:
                # once more, on a new connection (and never again).
        connection = await self._connect(target.origin)
        return await self._send(target.origin, connection, request)

    async def _send(self, origin: Origin, connection: _Connection, request: bytes) -> int:
        self.busy.add(connection)
        try:
            status = await connection.send(request)
        finally:
            self.busy.discard(connection)
        if not connection.reusable or connection.closed:
            connection.close()
            return status
        idle = self.idle.get(origin)
        if idle is None:
            idle = self.idle[origin] = []
        if len(idle) >= self.max_idle_per_origin:
            connection.close()
            return status
        connection.idle_since = time.monotonic()
        idle.append(connection)
        if self.sweeper is None:
            self._sweep_later()
        return status

    def _idle(self, origin: Origin) -> _Connection | None:
        """The most recently used idle connection of `origin` still open and fresh."""
        idle = self.idle.get(origin)
        if not idle:
            return None
        oldest = time.monotonic() - self.keepalive_seconds
        while idle:
            connection = idle.pop()
            if not connection.closed and connection.idle_since >= oldest:
                return connection
            connection.close()
        return None

    def _sweep_later(self) -> None:
        loop = asyncio.get_running_loop()
        self.sweeper = loop.call_later(self.keepalive_seconds / 2, self._sweep)

    def _sweep(self) -> None:
        """Close idle connections past `keepalive_seconds` and forget those the receivers
        closed, also of origins no longer posted to (one timer for all, none per POST)."""
        self.sweeper = None
        oldest = time.monotonic() - self.keepalive_seconds
        for origin, idle in list(self.idle.items()):
            kept: list[_Connection] = []
            for connection in idle:
                if connection.closed or connection.idle_since < oldest:
                    connection.close()
                else:
                    kept.append(connection)
            if kept:
                self.idle[origin] = kept
            else:
                del self.idle[origin]
        if self.idle:
            self._sweep_later()

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        addresses = await checked_addresses(
            self.resolver, host, port, allow_private=self.allow_private
        )
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            if self.ssl_context is None:
                self.ssl_context = ssl.create_default_context()
            tls = self.ssl_context
        loop = asyncio.get_running_loop()
        failure: OSError | None = None
        for address in addresses:
            try:
                _, connection = await loop.create_connection(
                    lambda: _Connection(self.max_response_bytes),
                    address,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                )
                return connection
            except OSError as exc:  # ssl.SSLError included
                failure = exc
        assert failure is not None
        raise failure

    async def aclose(self) -> None:
        """Close every connection, idle or in use (a POST under way fails with
        `ConnectionError`, and is not tried again)."""
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        for idle in self.idle.values():
            for connection in idle:
                connection.close()
        self.idle.clear()
        for connection in list(self.busy):
            connection.fail(ConnectionError("the client was closed"))
        await asyncio.sleep(0)  # the transports let go of their sockets
