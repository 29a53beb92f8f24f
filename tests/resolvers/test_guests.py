"""Guest checkout: a guest token from `startGuestSession`, used like any shopper's; the
per-address hourly limit, also under concurrent requests; and the switch that turns it off."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ordergraph.auth import decode_token
from ordergraph.models import GuestSession, Order, User
from ordergraph.stripe_emulator import StripeEmulator
from ordergraph.web.client_address import resolve
from tests.conftest import JWT_SECRET, Harness, Mailbox, SmtpServer, service_env
from tests.utils.helpers import checked_out_order, make_product
from tests.utils.live import ServerProcess

START = """mutation($e: String) {
  startGuestSession(email: $e) { token expiresAt userErrors { code message field } }
}"""
ORDER = "query($o: ID!) { order(id: $o) { id status email accessToken } }"


async def start(
    app: Harness, email: str | None = "guest@example.com", *, address: str | None = None
) -> dict[str, Any]:
    """startGuestSession, from `address` (a client behind the local proxy uvicorn trusts)."""
    headers = {"X-Forwarded-For": address} if address else {}
    response = await app.http.post(
        f"{app.url}/graphql", json={"query": START, "variables": {"e": email}}, headers=headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    payload: dict[str, Any] = body["data"]["startGuestSession"]
    return payload


async def test_a_guest_shops_checks_out_and_gets_the_receipt(
    app: Harness, mailbox: Mailbox
) -> None:
    session = await start(app, "  Guest.Shopper@example.com ")
    assert session["userErrors"] == [] and session["expiresAt"], session
    identity = decode_token(JWT_SECRET, session["token"])
    assert identity.user_id.startswith("guest:") and not identity.is_staff
    assert identity.email == "Guest.Shopper@example.com"

    tee = await make_product("TEE", price=2500, stock=5)
    order_id = (await checked_out_order(app, session["token"], tee, 2))["orderId"]
    order = await Order.get(id=order_id)
    assert (order.user_id, order.email) == (identity.user_id, "Guest.Shopper@example.com")
    user = await User.get(id=identity.user_id)
    assert (user.email, user.is_staff) == ("Guest.Shopper@example.com", False)
    assert order.stripe_checkout_session_id
    delivery = await app.emulator.complete_session(order.stripe_checkout_session_id)
    assert delivery.status_code == 200, delivery.body

    body = await app.gql(ORDER, {"o": order_id}, token=session["token"])
    seen = body["data"]["order"]
    assert seen["status"] == "PAYMENT_CONFIRMED" and seen["accessToken"], body
    mails = await mailbox.wait_for(1)
    assert [m["X-Envelope-To"] for m in mails] == ["Guest.Shopper@example.com"]

    # Another guest sees nothing of it.
    other = await start(app, "other@example.com")
    body = await app.gql(ORDER, {"o": order_id}, token=other["token"])
    assert body == {"data": {"order": None}}, body
    body = await app.gql("{ myOrders { edges { node { id } } } }", token=other["token"])
    assert body["data"]["myOrders"]["edges"] == []


async def test_a_guest_session_without_an_email(app: Harness) -> None:
    session = await start(app, None)
    assert session["userErrors"] == [] and session["token"]
    assert decode_token(JWT_SECRET, session["token"]).email == ""


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "two@@example.com", "a b@example.com"])
async def test_a_malformed_email_is_invalid_input(app: Harness, email: str) -> None:
    session = await start(app, email)
    assert session["token"] is None and session["expiresAt"] is None
    assert [(e["code"], e["field"]) for e in session["userErrors"]] == [
        ("INVALID_INPUT", ["email"])
    ]
    assert await GuestSession.all().count() == 0


async def test_guest_sessions_past_the_hourly_limit_are_rate_limited(app: Harness) -> None:
    limit = app.settings.guest_sessions_per_hour
    for _ in range(limit):
        assert (await start(app, address="203.0.113.7"))["userErrors"] == []
    refused = await start(app, address="203.0.113.7")
    assert [e["code"] for e in refused["userErrors"]] == ["RATE_LIMITED"], refused
    assert refused["token"] is None
    # Another address has its own allowance.
    assert (await start(app, address="203.0.113.8"))["userErrors"] == []
    assert await GuestSession.filter(client_address="203.0.113.7").count() == limit


async def test_concurrent_guest_sessions_never_pass_the_limit(app: Harness) -> None:
    limit = app.settings.guest_sessions_per_hour
    answers = await asyncio.gather(
        *(start(app, f"g{i}@example.com", address="198.51.100.9") for i in range(limit + 15))
    )
    codes = [[e["code"] for e in a["userErrors"]] for a in answers]
    assert codes.count([]) == limit, codes
    assert codes.count(["RATE_LIMITED"]) == 15, codes
    assert await GuestSession.filter(client_address="198.51.100.9").count() == limit
    assert await GuestSession.all().count() == limit


def test_the_client_address_behind_trusted_proxies() -> None:
    trusted = ("10.0.0.0/8", "192.0.2.1")
    assert resolve("203.0.113.5", "1.2.3.4", trusted) == "203.0.113.5"  # not a proxy: its own
    assert resolve("10.1.2.3", "1.2.3.4", ()) == "10.1.2.3"  # no proxies trusted
    assert resolve("10.1.2.3", "1.2.3.4", trusted) == "1.2.3.4"
    # The right-most untrusted hop: what the client wrote itself to the left is not believed.
    assert resolve("10.1.2.3", "6.6.6.6, 1.2.3.4, 192.0.2.1", trusted) == "1.2.3.4"
    assert resolve("10.1.2.3", "10.9.9.9, 10.8.8.8", trusted) == "10.9.9.9"
    assert resolve("10.1.2.3", None, trusted) == "10.1.2.3"
    assert resolve(None, "1.2.3.4", trusted) == "unknown"


@pytest.fixture(scope="module")
async def no_guests(
    harness: Harness,
    database_url: str,
    stripe_server: tuple[StripeEmulator, str],
    smtp: SmtpServer,
) -> AsyncIterator[Harness]:
    """The service as `ordergraph serve` with GUEST_CHECKOUT=false, on the harness's database."""
    env = service_env(
        database_url,
        stripe_server[1],
        smtp.port,
        GUEST_CHECKOUT="false",
        SWEEP_INTERVAL_SECONDS="0",
    )
    process = ServerProcess(env, "no-guests")
    await process.start()
    try:
        settings = dataclasses.replace(harness.settings, guest_checkout=False)
        yield dataclasses.replace(harness, url=process.url, settings=settings)
    finally:
        await process.stop()


async def test_guest_checkout_turned_off_refuses(app: Harness, no_guests: Harness) -> None:
    session = await start(no_guests)
    assert session["token"] is None
    assert [e["code"] for e in session["userErrors"]] == ["FORBIDDEN"], session
    assert "turned off" in session["userErrors"][0]["message"]
    assert await GuestSession.all().count() == 0
