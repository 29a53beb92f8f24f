"""Checkout Sessions through the SDK: create, validate, retrieve, expire, line items."""

from __future__ import annotations

import time
from typing import Any

import pytest
import stripe

from tests.stripe_emulator.conftest import KEY, EmuEnv, create_session, session_params


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


async def test_list_sessions_pages_and_filters(emu_stripe: Any) -> None:
    sessions = emu_stripe.v1.checkout.sessions
    first, second, third = [await create_session(emu_stripe) for _ in range(3)]
    await sessions.expire_async(second.id)
    page = await sessions.list_async(params={"limit": 2})
    assert [s.id for s in page.data] == [third.id, second.id] and page.has_more is True
    rest = await sessions.list_async(params={"limit": 2, "starting_after": second.id})
    assert [s.id for s in rest.data] == [first.id] and rest.has_more is False
    before = await sessions.list_async(params={"ending_before": first.id, "limit": 1})
    assert [s.id for s in before.data] == [second.id] and before.has_more is True
    expired = await sessions.list_async(params={"status": "expired"})
    assert [s.id for s in expired.data] == [second.id]
    later = await sessions.list_async(params={"created": {"gt": first.created + 3600}})
    assert later.data == []
    with pytest.raises(stripe.InvalidRequestError) as info:
        await sessions.list_async(params={"limit": 101})
    assert info.value.param == "limit"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await sessions.list_async(params={"customer": "cus_1"})
    assert "does not filter by customer" in str(info.value.user_message)
