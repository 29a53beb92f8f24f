"""What every step of `ordergraph demo` stands on: the stack as a client sees it, a GraphQL
client, the timeline that prints each step, the mail sink's queue, and the shop's system that
hears outgoing webhooks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ordergraph.outgoing_webhooks import signing
from ordergraph.settings import Settings

WAIT_SECONDS = 10.0


class StepFailed(Exception):
    """What went wrong in a step, in words for the person running the demo."""


def money(amount: int, currency: str) -> str:
    return f"{amount / 100:,.2f} {currency}"


@dataclass
class Stack:
    """The service and what stands around it, as a client sees them."""

    url: str
    emulator_url: str
    settings: Settings
    mail: asyncio.Queue[tuple[float, EmailMessage]]  # each with when it arrived
    hooks: HookReceiver  # the shop's system, hearing outgoing webhooks
    hooks_url: str


class Client:
    """GraphQL over HTTP with a bearer token, as a shop's frontend or back office calls it
    (with none: as a mail's link, whose access token travels in the query's variables)."""

    def __init__(self, http: httpx.AsyncClient, url: str, token: str | None) -> None:
        self.http, self.url, self.token = http, url, token

    async def __call__(self, query: str, variables: dict[str, Any] | None = None) -> Any:
        response = await self.http.post(
            f"{self.url}/graphql",
            json={"query": query, "variables": variables or {}},
            headers={"Authorization": f"Bearer {self.token}"} if self.token else {},
        )
        if response.status_code != 200:
            raise StepFailed(f"HTTP {response.status_code}: {response.text[:300]}")
        body = response.json()
        if body.get("errors"):
            raise StepFailed(f"GraphQL errors: {body['errors']}")
        data = body["data"]
        for payload in data.values():
            if isinstance(payload, dict) and payload.get("userErrors"):
                raise StepFailed(f"userErrors: {payload['userErrors']}")
        return data


class Timeline:
    """Prints each step as it ends: time since start, what happened, how long it took."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.steps = 0
        self.status = "-"

    async def step(self, title: str, action: Callable[[], Awaitable[str]]) -> None:
        self.steps += 1
        began = time.perf_counter()
        try:
            detail = await action()
        except StepFailed as exc:
            self.line(began, f"{title}: FAILED")
            raise StepFailed(f"step {self.steps} ({title}): {exc}") from None
        except Exception as exc:
            self.line(began, f"{title}: FAILED")
            raise StepFailed(f"step {self.steps} ({title}): {type(exc).__name__}: {exc}") from exc
        self.line(began, f"{title}: {detail}")

    def line(self, began: float, text: str) -> None:
        now = time.perf_counter()
        print(
            f"{now - self.started:7.3f}s  {self.steps:>2}  {(now - began) * 1000:8.1f} ms  "
            f"{self.status:<24}  {text}",
            flush=True,
        )

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


async def next_mail(stack: Stack, to: str, subject_has: str = "") -> tuple[float, EmailMessage]:
    """The next mail the sink received, and when; it must be to `to`."""
    try:
        arrived, message = await asyncio.wait_for(stack.mail.get(), WAIT_SECONDS)
    except TimeoutError:
        raise StepFailed(f"no mail arrived in {WAIT_SECONDS:.0f} s") from None
    if message["To"] != to or subject_has not in message["Subject"]:
        raise StepFailed(f"unexpected mail to {message['To']}: {message['Subject']!r}")
    return arrived, message


# The demo's shop system: a receiver of outgoing webhooks on loopback, registered by staff
# through the API, that checks each event's signature as a shop's ERP would.
PATH = "/erp/hooks"
CREATE = """mutation($url: String!) { createWebhookEndpoint(url: $url, events: ["*"]) {
  endpoint { id } secret userErrors { code message } } }"""


@dataclass
class HookReceiver:
    """What the shop's system heard: each event's type and order, whether it verified."""

    secret: str = ""
    heard: list[tuple[str, str, bool]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> Starlette:
        return Starlette(routes=[Route(PATH, self.receive, methods=["POST"])])

    async def receive(self, request: Request) -> Response:
        body = (await request.body()).decode()
        verified = signing.verify(self.secret, body, request.headers.get(signing.HEADER, ""))
        event = json.loads(body)
        self.heard.append((event["type"], event["data"]["order"]["id"], verified))
        self.arrived.set()
        return Response(status_code=204 if verified else 400)

    async def register(self, staff: Client, base_url: str) -> str:
        created = (await staff(CREATE, {"url": base_url + PATH}))["createWebhookEndpoint"]
        if created["userErrors"]:
            raise StepFailed(f"createWebhookEndpoint: {created['userErrors']}")
        self.secret = created["secret"]
        return f"{base_url}{PATH} for every event; secret {self.secret[:10]}… shown once"

    async def of_order(self, order_id: str, count: int) -> list[str]:
        """The types of the first `count` events of the order, once they have arrived."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_SECONDS
        while len(types := [t for t, o, _ in self.heard if o == order_id]) < count:
            self.arrived.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise StepFailed(f"the shop's system heard only {types}")
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except TimeoutError:
                pass
        if not all(ok for _, o, ok in self.heard if o == order_id):
            raise StepFailed("an event's signature did not verify")
        return types


def heard_summary(types: list[str]) -> str:
    return f"{len(types)} events, each signed: {', '.join(types)}"
