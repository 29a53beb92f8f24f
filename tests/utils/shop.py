"""What a shop offers at checkout, set up through the public API: shipping rates, promotion
codes, and a service with automatic tax on (`AUTOMATIC_TAX=true`, a separate `ordergraph
serve` on the harness's database and emulator)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ordergraph.stripe_emulator import StripeEmulator
from tests.conftest import Harness, SmtpServer, service_env
from tests.utils.live import ServerProcess

UPSERT_RATE = """mutation($id: ID, $input: ShippingRateInput!) {
  upsertShippingRate(id: $id, input: $input) {
    shippingRate { id name amount { amount currency } freeFrom minDeliveryDays maxDeliveryDays
                   active }
    userErrors { code message field }
  }
}"""
CREATE_CODE = """mutation($input: PromotionCodeInput!) {
  createPromotionCode(input: $input) {
    promotionCode { id code percentOff amountOff { amount currency } active maxRedemptions
                    timesRedeemed expiresAt }
    userErrors { code message field }
  }
}"""
SET_CODE_ACTIVE = """mutation($id: ID!, $active: Boolean!) {
  setPromotionCodeActive(id: $id, active: $active) {
    promotionCode { id code active timesRedeemed } userErrors { code message field }
  }
}"""
RATES = "{ shippingRates { id name amount { amount } freeFrom active } }"
CODES = "{ promotionCodes { id code active maxRedemptions timesRedeemed } }"


def staff(app: Harness) -> str:
    return app.token("sam", staff=True)


async def upsert_rate(app: Harness, rate_id: str | None = None, **values: Any) -> dict[str, Any]:
    body = await app.gql(UPSERT_RATE, {"id": rate_id, "input": values}, token=staff(app))
    assert "errors" not in body, body
    payload: dict[str, Any] = body["data"]["upsertShippingRate"]
    return payload


async def create_code(app: Harness, **values: Any) -> dict[str, Any]:
    body = await app.gql(CREATE_CODE, {"input": values}, token=staff(app))
    assert "errors" not in body, body
    payload: dict[str, Any] = body["data"]["createPromotionCode"]
    return payload


async def made(payload: dict[str, Any], key: str) -> dict[str, Any]:
    assert payload["userErrors"] == [], payload
    value: dict[str, Any] = payload[key]
    return value


def offered_rate(app: Harness, session_id: str, name: str) -> str:
    """The id of the shipping rate Stripe made of the session's option with this name."""
    [rate_id] = [
        option["shipping_rate"]
        for option in app.emulator.sessions[session_id]["shipping_options"]
        if app.emulator.shipping_rates[option["shipping_rate"]]["display_name"] == name
    ]
    return str(rate_id)


@asynccontextmanager
async def taxed_service(
    harness: Harness,
    database_url: str,
    stripe_server: tuple[StripeEmulator, str],
    smtp: SmtpServer,
    name: str,
) -> AsyncIterator[Harness]:
    """The harness, served by an `ordergraph serve` with AUTOMATIC_TAX=true."""
    env = service_env(
        database_url, stripe_server[1], smtp.port, AUTOMATIC_TAX="true", SWEEP_INTERVAL_SECONDS="0"
    )
    process = ServerProcess(env, name)
    await process.start()
    try:
        settings = dataclasses.replace(harness.settings, automatic_tax=True)
        yield dataclasses.replace(harness, url=process.url, settings=settings)
    finally:
        await process.stop()
