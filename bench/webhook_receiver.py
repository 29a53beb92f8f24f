"""The benchmark's receiver of outgoing webhooks: answers every POST with 200 at once.

    .venv/bin/python -m bench.webhook_receiver LISTENERS

Run by `bench.webhooks` in a process of its own. It listens on loopback on LISTENERS + 1 ports
chosen by the system (the first is also where `bench.webhooks` reads its counters: `GET
/_stats`, `GET /_times`, `GET /_last`, `POST /_reset`) and prints them as one JSON line,
`{"ports": [...]}`, once it is ready. Each endpoint of the benchmark gets a port of its own,
as endpoints of different receivers have different origins (no connection of the sender is
shared between two of them); the first port can also take every endpoint on one origin.

A hand-written asyncio protocol on uvloop with httptools' request parser, answering from
`on_message_complete`: a few tens of microseconds a request. uvicorn with a bare ASGI callable
costs several times that (a scope dict, receive/send coroutines and a task per request), and
on two cores the receiver's CPU comes out of the sender's and PostgreSQL's share. It checks
nothing: it keeps the last POST (headers and body) so that the benchmark can verify one
signature, and the arrival time (CLOCK_MONOTONIC, the same clock in every process) of each.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from typing import Any

import httptools

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
OK_CLOSE = (
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n"
    b"connection: close\r\n\r\nok"
)


class Stats:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.connections = 0
        self.last: dict[str, Any] = {}

    def reset(self) -> None:
        self.times = []
        self.connections = 0
        self.last = {}

    def summary(self) -> dict[str, Any]:
        times = self.times
        return {
            "count": len(times),
            "first": times[0] if times else None,
            "last": times[-1] if times else None,
            "connections": self.connections,
        }


STATS = Stats()


class Receiver(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        STATS.connections += 1

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        keep = self.parser.should_keep_alive()
        if self.url.startswith(b"/_"):
            self.control()
            return
        STATS.times.append(time.monotonic())
        self.transport.write(OK if keep else OK_CLOSE)
        if not keep:
            self.transport.close()
        STATS.last = {"url": self.url, "headers": self.headers, "body": self.body}

    def control(self) -> None:
        path = self.url.split(b"?", 1)[0]
        answer: Any
        if path == b"/_stats":
            answer = STATS.summary()
        elif path == b"/_times":
            answer = STATS.times
        elif path == b"/_last":
            last = STATS.last
            answer = last and {
                "url": last["url"].decode(),
                "headers": {k.decode().lower(): v.decode() for k, v in last["headers"]},
                "body": b"".join(last["body"]).decode(),
            }
        elif path == b"/_reset":
            STATS.reset()
            answer = {"reset": True}
        else:
            answer = {"unknown": path.decode(errors="replace")}
        body = json.dumps(answer).encode()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )


async def serve(listeners: int) -> None:
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(Receiver, "127.0.0.1", 0, backlog=1024)
        for _ in range(listeners + 1)
    ]
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    print(json.dumps({"ports": ports}), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    import uvloop

    listeners = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(listeners))


if __name__ == "__main__":
    main()
