"""Fixtures for the Stripe emulator's tests: the emulator and a webhook receiver, served.

The emulator is driven only through the real ``stripe`` SDK and a real webhook
receiver. Both run under uvicorn on loopback ports inside the test loop; the
receiver verifies every delivery with ``stripe.Webhook.construct_event`` on the
raw body, as the service must.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import stripe
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ordergraph.stripe_emulator import DEFAULT_TAX_RATES, StripeEmulator

SECRET = "whsec_test_emulator_secret"
KEY = "sk_test_emulator_key_1234"


async def _serve(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, f"http://127.0.0.1:{port}"


async def _stop(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await task


@dataclass
class Receiver:
    """A webhook endpoint that accepts only correctly signed deliveries."""

    secret: str
    events: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    answer_status: int = 200
    url: str = ""

    async def endpoint(self, request: Request) -> Response:
        raw = await request.body()
        try:
            event = stripe.Webhook.construct_event(
                raw, request.headers.get("stripe-signature"), self.secret
            )
        except (stripe.SignatureVerificationError, ValueError) as exc:
            self.rejected.append(str(exc))
            return JSONResponse({"error": "bad signature"}, status_code=400)
        # The verified StripeObject agrees with the raw JSON kept for assertions.
        body = json.loads(raw)
        assert event["id"] == body["id"] and event["type"] == body["type"]
        self.events.append(body)
        return JSONResponse({"received": True}, status_code=self.answer_status)

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == event_type]


@dataclass
class EmuEnv:
    emu: StripeEmulator
    base: str
    receiver: Receiver
    http_clients: list[stripe.HTTPXClient] = field(default_factory=list)

    def client(self, *, timeout: float = 5.0, retries: int = 0, key: str = KEY) -> Any:
        """A real SDK client pointed at the emulator; closed when the test ends."""
        http_client = stripe.HTTPXClient(timeout=timeout)
        self.http_clients.append(http_client)
        return stripe.StripeClient(
            key,
            http_client=http_client,
            max_network_retries=retries,
            base_addresses={"api": self.base},
        )


@pytest.fixture(scope="module")
async def emu_servers() -> AsyncIterator[EmuEnv]:
    receiver = Receiver(SECRET)
    rx_server, rx_task, rx_base = await _serve(
        Starlette(routes=[Route("/webhooks/stripe", receiver.endpoint, methods=["POST"])])
    )
    receiver.url = f"{rx_base}/webhooks/stripe"
    emu = StripeEmulator(webhook_url=receiver.url, webhook_secret=SECRET)
    server, task, base = await _serve(emu.app)
    yield EmuEnv(emu, base, receiver)
    await _stop(server, task)
    await _stop(rx_server, rx_task)


@pytest.fixture
async def emu_env(emu_servers: EmuEnv) -> AsyncIterator[EmuEnv]:
    env = emu_servers
    env.emu.reset()
    env.emu.webhook_url = env.receiver.url
    env.emu.webhook_secret = SECRET
    env.emu.set_tax_rates(DEFAULT_TAX_RATES)  # configuration: reset() keeps it
    env.receiver.events.clear()
    env.receiver.rejected.clear()
    env.receiver.answer_status = 200
    yield env
    await env.emu.drain()
    while env.http_clients:
        await env.http_clients.pop().close_async()


@pytest.fixture
def emu_stripe(emu_env: EmuEnv) -> Any:
    return emu_env.client()


def session_params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "mode": "payment",
        "ui_mode": "embedded_page",
        "line_items": [
            {
                "price_data": {
                    "currency": "USD",
                    "unit_amount": 1250,
                    "product_data": {"name": "Teapot"},
                },
                "quantity": 2,
            },
            {
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 499,
                    "product_data": {"name": "Cup"},
                },
                "quantity": 1,
            },
        ],
        "metadata": {"order_id": "ord_42", "user_id": "user_7"},
        "client_reference_id": "ord_42",
        "return_url": "http://localhost:5173/order-success/ord_42?session_id={CHECKOUT_SESSION_ID}",
        "expires_at": int(time.time()) + 45 * 60,
        "shipping_address_collection": {"allowed_countries": ["US", "DE"]},
    }
    params.update(overrides)
    return params


async def create_session(client: Any, **overrides: Any) -> Any:
    return await client.v1.checkout.sessions.create_async(params=session_params(**overrides))


async def paid_session(env: EmuEnv, client: Any) -> tuple[Any, str]:
    session = await create_session(client)
    delivery = await env.emu.complete_session(session.id)
    assert delivery.status_code == 200
    return session, env.emu.sessions[session.id]["payment_intent"]
