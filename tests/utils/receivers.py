"""Real HTTP receivers of outgoing webhooks, on loopback: uvicorn serving a Starlette app that
records every request and answers as the test scripts it (fail, hang, succeed)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ordergraph.models import WebhookEvent
from ordergraph.outgoing_webhooks import signing
from ordergraph.outgoing_webhooks.fan_out import fan_out_all
from tests.conftest import Served


@dataclass
class Received:
    headers: dict[str, str]
    body: str
    at: float

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    @property
    def delivery(self) -> tuple[str, int]:
        return self.headers["ordergraph-delivery-id"], int(
            self.headers["ordergraph-delivery-attempt"]
        )

    def verifies(self, secret: str) -> bool:
        return signing.verify(secret, self.body, self.headers.get("ordergraph-signature", ""))


Answer = Callable[[Received], Awaitable[int]]


async def ok(_: Received) -> int:
    return 200


@dataclass
class Receiver:
    """Records every request (`received`), in arrival order; `answer` decides the status."""

    url: str = ""
    answer: Answer = ok
    received: list[Received] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: Request) -> Response:
        got = Received(dict(request.headers), (await request.body()).decode(), time.monotonic())
        self.received.append(got)
        self.arrived.set()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            status = await self.answer(got)
        finally:
            self.in_flight -= 1
        return Response(b"thanks", status_code=status)

    def events(self) -> list[dict[str, Any]]:
        return [r.event for r in self.received]

    async def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 15
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        while not predicate(self.received):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"the receiver did not get what was awaited; it got "
                    f"{[(r.event['type'], r.delivery) for r in self.received]}"
                )
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), timeout=min(remaining, 0.2))
            except TimeoutError:
                pass
        return self.received


@asynccontextmanager
async def receiving(answer: Answer = ok, path: str = "/hooks") -> AsyncIterator[Receiver]:
    receiver = Receiver(answer=answer)
    app = Starlette(routes=[Route(path, receiver.handle, methods=["POST"])])
    async with Served(app) as base:
        receiver.url = base + path
        yield receiver


async def deliveries_written(timeout: float = 10) -> None:
    """Wait until every recorded event has its deliveries (the sender writes them, and so does
    this, whichever comes first)."""
    deadline = time.monotonic() + timeout
    while True:
        await fan_out_all()
        if not await WebhookEvent.filter(fan_out_pending=True).exists():
            return
        assert time.monotonic() < deadline, "events still waiting to be fanned out"
        await asyncio.sleep(0.01)
