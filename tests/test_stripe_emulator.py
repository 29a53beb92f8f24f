"""The Stripe emulator, driven only through the real ``stripe`` SDK and a real webhook receiver.

Both the emulator and a small Starlette receiver run under uvicorn on loopback
ports inside the test loop; the receiver verifies every delivery with
``stripe.Webhook.construct_event`` on the raw body, as the service must.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import stripe
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ordergraph.stripe_emulator import StripeEmulator

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


# ------------------------------------------------------------------ sessions


async def test_create_embedded_page_session(emu_env: EmuEnv, emu_stripe: Any) -> None:
    params = session_params()
    session = await emu_stripe.v1.checkout.sessions.create_async(
        params=params, options={"idempotency_key": "order-ord_42"}
    )
    assert session.id.startswith("cs_test_")
    assert session.object == "checkout.session"
    assert session.amount_subtotal == session.amount_total == 2 * 1250 + 499
    assert session.currency == "usd"
    assert session.client_secret.startswith(f"{session.id}_secret_")
    assert session.return_url == (
        f"http://localhost:5173/order-success/ord_42?session_id={session.id}"
    )
    assert session.url is None and session.success_url is None
    assert session.metadata.to_dict() == {"order_id": "ord_42", "user_id": "user_7"}
    assert session.client_reference_id == "ord_42"
    assert (session.status, session.payment_status) == ("open", "unpaid")
    assert session.payment_intent is None and session.collected_information is None
    assert session.expires_at == params["expires_at"]
    assert session.shipping_address_collection.allowed_countries == ["US", "DE"]
    assert (session.ui_mode, session.mode, session.livemode) == ("embedded_page", "payment", False)

    recorded = emu_env.emu.requests[-1]
    assert (recorded.method, recorded.path) == ("POST", "/v1/checkout/sessions")
    assert recorded.idempotency_key == "order-ord_42"
    assert recorded.params["metadata"] == {"order_id": "ord_42", "user_id": "user_7"}
    assert recorded.params["line_items"][0]["price_data"]["product_data"]["name"] == "Teapot"
    assert recorded.params["line_items"][1]["quantity"] == "1"
    assert recorded.headers["authorization"] == f"Bearer {KEY}"
    assert recorded.headers["stripe-version"] == "2026-10-28.endive"

    items = await emu_stripe.v1.checkout.sessions.line_items.list_async(session.id)
    assert [(i.description, i.quantity, i.amount_total) for i in items.data] == [
        ("Teapot", 2, 2500),
        ("Cup", 1, 499),
    ]
    fetched = await emu_stripe.v1.checkout.sessions.retrieve_async(session.id)
    assert fetched.id == session.id and fetched.client_secret == session.client_secret


async def test_idempotent_replay_and_key_reuse_with_other_params(
    emu_env: EmuEnv, emu_stripe: Any
) -> None:
    params = session_params()
    options = {"idempotency_key": "order-ord_42"}
    first = await emu_stripe.v1.checkout.sessions.create_async(params=params, options=options)
    again = await emu_stripe.v1.checkout.sessions.create_async(params=params, options=options)
    assert again.id == first.id
    assert again.last_response.headers["idempotent-replayed"] == "true"
    assert len(emu_env.emu.sessions) == 1

    changed = session_params(expires_at=params["expires_at"] + 60)
    with pytest.raises(stripe.IdempotencyError) as info:
        await emu_stripe.v1.checkout.sessions.create_async(params=changed, options=options)
    assert info.value.http_status == 400
    assert "same parameters" in str(info.value.user_message)
    assert len(emu_env.emu.sessions) == 1


@pytest.mark.parametrize(
    ("overrides", "param", "fragment"),
    [
        ({"ui_mode": "embedded"}, "ui_mode", "Invalid ui_mode"),
        ({"ui_mode": "hosted"}, "ui_mode", "Invalid ui_mode"),
        ({"success_url": "http://x/ok"}, "success_url", "not supported"),
        ({"return_url": None}, "return_url", "required"),
        ({"expires_at": int(time.time()) + 10 * 60}, "expires_at", "at least 30 minutes"),
        ({"expires_at": int(time.time()) + 25 * 3600}, "expires_at", "less than 24 hours"),
        ({"line_items": None}, "line_items", "Missing required param"),
        ({"mode": "subscription"}, "mode", "mode"),
        ({"shipping_details": {"name": "x"}}, "shipping_details", "unknown parameter"),
    ],
)
async def test_create_refuses_what_stripe_refuses(
    emu_stripe: Any, overrides: dict[str, Any], param: str, fragment: str
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        await create_session(emu_stripe, **overrides)
    assert info.value.http_status == 400
    assert info.value.param == param
    assert fragment in str(info.value.user_message)
    assert info.value.error.type == "invalid_request_error"


async def test_line_item_validation(emu_stripe: Any) -> None:
    mixed = session_params()
    mixed["line_items"][1]["price_data"]["currency"] = "eur"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await emu_stripe.v1.checkout.sessions.create_async(params=mixed)
    assert info.value.param == "line_items[1][price_data][currency]"
    zero = session_params()
    zero["line_items"][0]["quantity"] = 0
    with pytest.raises(stripe.InvalidRequestError) as info:
        await emu_stripe.v1.checkout.sessions.create_async(params=zero)
    assert info.value.param == "line_items[0][quantity]"


async def test_retrieve_expire_and_expire_twice(emu_env: EmuEnv, emu_stripe: Any) -> None:
    session = await create_session(emu_stripe)
    expired = await emu_stripe.v1.checkout.sessions.expire_async(session.id)
    assert expired.status == "expired"
    assert (await emu_stripe.v1.checkout.sessions.retrieve_async(session.id)).status == "expired"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await emu_stripe.v1.checkout.sessions.expire_async(session.id)
    assert info.value.http_status == 400
    assert "Only Checkout Sessions with a status in [open] can be expired" in str(
        info.value.user_message
    )
    # Stripe also tells the webhook that the session expired, after answering.
    await emu_env.emu.drain()
    [event] = emu_env.receiver.of_type("checkout.session.expired")
    assert event["data"]["object"]["id"] == session.id
    assert event["request"]["idempotency_key"] is not None


async def test_unknown_session_and_unknown_route(emu_stripe: Any) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        await emu_stripe.v1.checkout.sessions.retrieve_async("cs_test_nope")
    assert info.value.http_status == 404
    assert info.value.code == "resource_missing"
    assert info.value.param == "id"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await emu_stripe.raw_request_async("get", "/v1/nothing_here")
    assert info.value.http_status == 404
    assert "Unrecognized request URL (GET: /v1/nothing_here)" in str(info.value.user_message)


async def test_publishable_key_is_refused(emu_env: EmuEnv) -> None:
    client = emu_env.client(key="pk_test_123456789")
    with pytest.raises(stripe.AuthenticationError) as info:
        await create_session(client)
    assert info.value.http_status == 401
    assert emu_env.emu.sessions == {}


# ------------------------------------------------------------------ webhooks


async def test_complete_delivers_signed_completed_event(emu_env: EmuEnv, emu_stripe: Any) -> None:
    session = await create_session(emu_stripe)
    shipping = {
        "name": "Ada Lovelace",
        "address": {
            "line1": "1 Analytical Row",
            "city": "London",
            "postal_code": "N1",
            "country": "GB",
        },
    }
    delivery = await emu_env.emu.complete_session(
        session.id, shipping=shipping, customer_email="ada@example.com"
    )
    assert delivery.status_code == 200
    [event] = emu_env.receiver.events
    assert event["type"] == "checkout.session.completed"
    assert event["id"] == delivery.event["id"] and event["id"].startswith("evt_")
    assert event["api_version"] == "2026-10-28.endive"
    obj = event["data"]["object"]
    assert (obj["id"], obj["status"], obj["payment_status"]) == (session.id, "complete", "paid")
    assert obj["collected_information"]["shipping_details"] == {
        "name": "Ada Lovelace",
        "address": {
            "line1": "1 Analytical Row",
            "line2": None,
            "city": "London",
            "state": None,
            "postal_code": "N1",
            "country": "GB",
        },
    }
    assert "shipping_details" not in obj
    assert obj["customer_details"]["email"] == "ada@example.com"
    assert (obj["amount_total"], obj["currency"]) == (2999, "usd")
    assert obj["metadata"] == {"order_id": "ord_42", "user_id": "user_7"}
    assert obj["payment_intent"].startswith("pi_")

    pi = await emu_stripe.v1.payment_intents.retrieve_async(obj["payment_intent"])
    assert (pi.status, pi.amount, pi.currency) == ("succeeded", 2999, "usd")
    assert pi.latest_charge.startswith("ch_")
    fetched = await emu_stripe.v1.checkout.sessions.retrieve_async(session.id)
    assert fetched.collected_information.shipping_details.name == "Ada Lovelace"

    # Redelivering the same event is how tests exercise duplicates.
    again = await emu_env.emu.deliver(delivery.event)
    assert again.status_code == 200
    assert [e["id"] for e in emu_env.receiver.events] == [event["id"], event["id"]]


async def test_forged_amount_and_metadata_and_bad_signatures(
    emu_env: EmuEnv, emu_stripe: Any
) -> None:
    session = await create_session(emu_stripe)
    delivery = await emu_env.emu.complete_session(
        session.id, amount_total=1, metadata={"user_id": "intruder"}
    )
    obj = emu_env.receiver.events[-1]["data"]["object"]
    assert obj["amount_total"] == 1
    assert obj["metadata"] == {"order_id": "ord_42", "user_id": "intruder"}

    wrong = await emu_env.emu.deliver(delivery.event, secret="whsec_wrong")
    stale = await emu_env.emu.deliver(delivery.event, timestamp=int(time.time()) - 3600)
    assert (wrong.status_code, stale.status_code) == (400, 400)
    assert len(emu_env.receiver.rejected) == 2

    payload = json.dumps(delivery.event, indent=2)
    headers = emu_env.emu.signed_headers(payload)
    async with httpx.AsyncClient() as http:
        altered = await http.post(
            emu_env.receiver.url,
            content=payload.replace('"amount_total": 1', '"amount_total": 2999'),
            headers=headers,
        )
        intact = await http.post(emu_env.receiver.url, content=payload, headers=headers)
    assert (altered.status_code, intact.status_code) == (400, 200)
    assert len(emu_env.receiver.rejected) == 3


async def test_delayed_payment_success_and_failure(emu_env: EmuEnv, emu_stripe: Any) -> None:
    ok = await create_session(emu_stripe)
    ko = await create_session(emu_stripe)
    for sid in (ok.id, ko.id):
        delivery = await emu_env.emu.complete_session(sid, payment_status="unpaid")
        assert delivery.event["data"]["object"]["payment_status"] == "unpaid"
    succeeded = await emu_env.emu.async_payment_succeeded(ok.id)
    failed = await emu_env.emu.async_payment_failed(ko.id)
    assert (succeeded.status_code, failed.status_code) == (200, 200)
    assert [e["type"] for e in emu_env.receiver.events] == [
        "checkout.session.completed",
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "checkout.session.async_payment_failed",
    ]
    assert succeeded.event["data"]["object"]["payment_status"] == "paid"
    assert failed.event["data"]["object"]["payment_status"] == "unpaid"
    ok_pi = await emu_stripe.v1.payment_intents.retrieve_async(
        emu_env.emu.sessions[ok.id]["payment_intent"]
    )
    ko_pi = await emu_stripe.v1.payment_intents.retrieve_async(
        emu_env.emu.sessions[ko.id]["payment_intent"]
    )
    assert (ok_pi.status, ko_pi.status) == ("succeeded", "requires_payment_method")


async def test_expire_session_event(emu_env: EmuEnv, emu_stripe: Any) -> None:
    session = await create_session(emu_stripe)
    delivery = await emu_env.emu.expire_session_event(session.id)
    assert delivery.status_code == 200
    [event] = emu_env.receiver.events
    assert event["type"] == "checkout.session.expired"
    assert event["data"]["object"]["status"] == "expired"
    assert event["request"] == {"id": None, "idempotency_key": None}
    with pytest.raises(stripe.InvalidRequestError):
        await emu_stripe.v1.checkout.sessions.expire_async(session.id)


async def test_webhook_answer_is_reported(emu_env: EmuEnv, emu_stripe: Any) -> None:
    session = await create_session(emu_stripe)
    emu_env.receiver.answer_status = 503
    delivery = await emu_env.emu.complete_session(session.id)
    assert delivery.status_code == 503
    emu_env.emu.webhook_url = None
    nowhere = await emu_env.emu.deliver(delivery.event)
    assert (nowhere.status_code, nowhere.body) == (0, "no webhook_url configured")


# ------------------------------------------------------------------- refunds


async def test_refunds_and_charge_refunded_events(emu_env: EmuEnv, emu_stripe: Any) -> None:
    _, pi = await paid_session(emu_env, emu_stripe)
    partial = await emu_stripe.v1.refunds.create_async(
        params={"payment_intent": pi, "amount": 999, "metadata": {"order_id": "ord_42"}},
        options={"idempotency_key": "refund-ord_42-1"},
    )
    assert partial.id.startswith("re_") and partial.status == "succeeded"
    assert (partial.amount, partial.payment_intent, partial.currency) == (999, pi, "usd")
    replay = await emu_stripe.v1.refunds.create_async(
        params={"payment_intent": pi, "amount": 999, "metadata": {"order_id": "ord_42"}},
        options={"idempotency_key": "refund-ord_42-1"},
    )
    assert replay.id == partial.id and len(emu_env.emu.refunds) == 1

    with pytest.raises(stripe.InvalidRequestError) as info:
        await emu_stripe.v1.refunds.create_async(params={"payment_intent": pi, "amount": 5000})
    assert (info.value.code, info.value.param) == ("amount_too_large", "amount")

    rest = await emu_stripe.v1.refunds.create_async(params={"payment_intent": pi})
    assert rest.amount == 2999 - 999
    assert (await emu_stripe.v1.refunds.retrieve_async(rest.id)).amount == 2000
    with pytest.raises(stripe.InvalidRequestError) as info:
        await emu_stripe.v1.refunds.create_async(params={"payment_intent": pi})
    assert info.value.code == "charge_already_refunded"

    await emu_env.emu.drain()
    refunded = emu_env.receiver.of_type("charge.refunded")
    assert [
        (e["data"]["object"]["amount_refunded"], e["data"]["object"]["refunded"]) for e in refunded
    ] == [(999, False), (2999, True)]
    charge = refunded[-1]["data"]["object"]
    assert (charge["payment_intent"], charge["amount"], charge["currency"]) == (pi, 2999, "usd")
    assert refunded[0]["request"]["idempotency_key"] == "refund-ord_42-1"


async def test_disputes(emu_env: EmuEnv, emu_stripe: Any) -> None:
    _, pi = await paid_session(emu_env, emu_stripe)
    opened = await emu_env.emu.dispute(pi)
    closed = await emu_env.emu.dispute(pi, status="lost")
    assert [e["type"] for e in emu_env.receiver.events[1:]] == [
        "charge.dispute.created",
        "charge.dispute.closed",
    ]
    assert opened.event["data"]["object"]["id"] == closed.event["data"]["object"]["id"]
    assert closed.event["data"]["object"]["payment_intent"] == pi
    assert closed.event["data"]["object"]["status"] == "lost"


# -------------------------------------------------------------------- faults


async def test_error500_fault_is_api_error_not_retried(emu_env: EmuEnv) -> None:
    client = emu_env.client(retries=2)
    emu_env.emu.inject_fault("error500")
    with pytest.raises(stripe.APIError) as info:
        await create_session(client)
    assert info.value.http_status == 500
    assert info.value.headers["stripe-should-retry"] == "false"
    assert len(emu_env.emu.requests) == 1  # Stripe-Should-Retry: false stops the SDK
    session = await create_session(client)  # the fault was used up
    assert session.status == "open"


async def test_delay_fault_times_out_but_takes_effect(emu_env: EmuEnv) -> None:
    client = emu_env.client(timeout=0.3)
    emu_env.emu.inject_fault("delay", delay=0.8)
    options = {"idempotency_key": "order-slow"}
    params = session_params()
    with pytest.raises(stripe.APIConnectionError):
        await client.v1.checkout.sessions.create_async(params=params, options=options)
    # While the first request is still running, the same key is refused with a 409
    # (which the SDK would retry if it had retries left).
    with pytest.raises(stripe.APIError) as info:
        await client.v1.checkout.sessions.create_async(params=params, options=options)
    assert info.value.http_status == 409
    assert info.value.json_body["error"]["code"] == "idempotency_key_in_use"
    assert emu_env.emu.sessions == {}
    for _ in range(100):  # the emulator finishes the request the client gave up on
        if emu_env.emu.sessions:
            break
        await asyncio.sleep(0.02)
    [created] = emu_env.emu.sessions
    retried = await client.v1.checkout.sessions.create_async(params=params, options=options)
    assert retried.id == created
    assert retried.last_response.headers["idempotent-replayed"] == "true"


async def test_drop_fault_is_retried_with_the_same_key(emu_env: EmuEnv) -> None:
    client = emu_env.client(retries=1)
    emu_env.emu.inject_fault("drop")
    session = await create_session(client)
    assert list(emu_env.emu.sessions) == [session.id]
    first, second = emu_env.emu.requests
    assert first.idempotency_key == second.idempotency_key is not None


# ------------------------------------------------------------------ controls


async def test_control_endpoints(emu_env: EmuEnv, emu_stripe: Any) -> None:
    session = await create_session(emu_stripe)
    async with httpx.AsyncClient(base_url=emu_env.base) as http:
        done = await http.post(
            f"/_emulator/checkout/sessions/{session.id}/complete",
            json={"payment_status": "paid", "customer_email": "c@example.com"},
        )
        assert done.status_code == 200
        assert done.json()["webhook_status"] == 200
        assert (
            done.json()["event"]["data"]["object"]["customer_details"]["email"] == "c@example.com"
        )
        again = await http.post(f"/_emulator/checkout/sessions/{session.id}/complete")
        assert again.status_code == 400
        missing = await http.post("/_emulator/checkout/sessions/cs_test_nope/expire")
        assert missing.status_code == 404

        listed = (await http.get("/_emulator/requests")).json()["data"]
        assert [r["path"] for r in listed] == ["/v1/checkout/sessions"]
        assert listed[0]["headers"]["authorization"].startswith("Bearer sk_test_****")

        faults = await http.post("/_emulator/faults", json={"mode": "error500", "count": 2})
        assert faults.json()["pending_faults"] == [["error500", 0.0], ["error500", 0.0]]
        assert (await http.post("/_emulator/faults", json={"mode": "boom"})).status_code == 400
        hook = await http.put("/_emulator/webhook", json={"url": "http://127.0.0.1:9/x"})
        assert hook.json()["url"] == "http://127.0.0.1:9/x"
        assert emu_env.emu.webhook_url == "http://127.0.0.1:9/x"

        assert (await http.post("/_emulator/reset")).json() == {"reset": True}
    assert emu_env.emu.sessions == {} and emu_env.emu.requests == []
    fresh = await create_session(emu_stripe)  # reset also cleared the pending faults
    assert fresh.status == "open"
