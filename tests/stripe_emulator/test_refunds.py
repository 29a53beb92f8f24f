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


async def test_a_refund_expands_its_charge_with_the_running_total(
    emu_env: EmuEnv, emu_stripe: Any
) -> None:
    """`expand[]=charge`: what the service reads to record Stripe's running total at once."""
    _, pi = await paid_session(emu_env, emu_stripe)
    first = await emu_stripe.v1.refunds.create_async(
        params={"payment_intent": pi, "amount": 1000, "expand": ["charge"]}
    )
    assert first.charge.object == "charge"
    assert (first.charge.amount_refunded, first.charge.refunded) == (1000, False)
    with pytest.raises(stripe.InvalidRequestError) as info:
        await emu_stripe.v1.refunds.create_async(
            params={"payment_intent": pi, "amount": 1, "expand": ["chrage"]}
        )
    assert info.value.param == "expand"
    assert len(emu_env.emu.refunds) == 1  # refused whole: nothing refunded
    second = await emu_stripe.v1.refunds.create_async(
        params={"payment_intent": pi, "amount": 1999, "expand": ["charge"]}
    )
    assert (second.charge.amount_refunded, second.charge.refunded) == (2999, True)
    plain = await emu_stripe.v1.refunds.retrieve_async(second.id)
    assert plain.charge == second.charge.id  # an id unless expanded


async def test_refunds_are_listed_by_payment_intent(emu_env: EmuEnv, emu_stripe: Any) -> None:
    """`GET /v1/refunds?payment_intent=`: how the service finds a refund whose answer it lost."""
    _, pi = await paid_session(emu_env, emu_stripe)
    _, other = await paid_session(emu_env, emu_stripe)
    first = await emu_stripe.v1.refunds.create_async(
        params={"payment_intent": pi, "amount": 100, "metadata": {"order_refund": "k1"}}
    )
    second = await emu_stripe.v1.refunds.create_async(params={"payment_intent": pi, "amount": 200})
    await emu_stripe.v1.refunds.create_async(params={"payment_intent": other, "amount": 300})

    page = await emu_stripe.v1.refunds.list_async(
        params={"payment_intent": pi, "limit": 100, "expand": ["data.charge"]}
    )

    assert [r.id for r in page.data] == [second.id, first.id]  # newest first
    assert page.data[1].metadata["order_refund"] == "k1"
    assert page.data[0].charge.amount_refunded == 300
    with pytest.raises(stripe.InvalidRequestError) as info:
        await emu_stripe.v1.refunds.list_async(params={"payment_intnet": pi})  # type: ignore[typeddict-unknown-key]
    assert "payment_intnet" in str(info.value)
