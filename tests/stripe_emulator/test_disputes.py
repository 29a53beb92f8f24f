"""Disputes opened and closed by the emulator, with their webhooks."""

from __future__ import annotations

from typing import Any

from tests.stripe_emulator.conftest import EmuEnv, paid_session


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
