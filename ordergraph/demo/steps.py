"""What every step of `ordergraph demo` stands on: the stack as a client sees it, a GraphQL
client, the timeline that prints each step, and the mail sink's queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import httpx

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
