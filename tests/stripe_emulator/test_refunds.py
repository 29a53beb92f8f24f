"""Refunds through the SDK and the ``charge.refunded`` events that follow."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from tests.stripe_emulator.conftest import EmuEnv, paid_session


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
