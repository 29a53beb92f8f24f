"""The ``/_emulator/...`` control routes over plain HTTP."""

from __future__ import annotations

from typing import Any

import httpx

from tests.stripe_emulator.conftest import EmuEnv, create_session


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
