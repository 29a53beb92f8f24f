"""The API entry: idempotency, routing, authentication and injected faults."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import stripe

from tests.stripe_emulator.conftest import EmuEnv, create_session, session_params


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
