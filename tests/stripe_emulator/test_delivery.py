"""Webhooks: the customer's actions on Checkout, signed deliveries, forged and failed ones."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
import stripe

from tests.stripe_emulator.conftest import EmuEnv, create_session


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
