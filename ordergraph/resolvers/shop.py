"""What the shop offers at checkout: shipping rates (listed to everyone, kept by staff) and
promotion codes (staff only)."""

from __future__ import annotations

import re

import strawberry

from ordergraph.domain import promotions, shipping
from ordergraph.domain.errors import ErrorCode, Problem
from ordergraph.resolvers.base import forbidden, page_size, payload, require_staff, require_user
from ordergraph.resolvers.common_types import UserError
from ordergraph.resolvers.context import Info
from ordergraph.resolvers.shop_types import (
    PromotionCode,
    PromotionCodeInput,
    PromotionCodePayload,
    ShippingRate,
    ShippingRateInput,
    ShippingRatePayload,
)
from ordergraph.stripe_gateway import PaymentProviderError

STRIPE_SAID_NO = UserError.from_problem(
    Problem(
        ErrorCode.PAYMENT_PROVIDER_ERROR,
        "Stripe refused the promotion code or could not be reached; nothing was created or "
        "changed. Try again, or check the code's terms.",
    )
)


def _int_id(value: str | None) -> int | None:
    """A row id from the API's ID, or None when it cannot be one (answered as NOT_FOUND)."""
    if value is None or not re.fullmatch(r"[0-9]{1,12}", value):
        return None
    return int(value)


def _not_found(what: str) -> list[UserError]:
    return [UserError(code=ErrorCode.NOT_FOUND, message=f"No such {what}", field=["id"])]


async def shipping_rates(info: Info) -> list[ShippingRate]:
    identity = info.context.identity
    staff = identity is not None and identity.is_staff
    currency = info.context.settings.shop_currency
    return [
        ShippingRate.from_model(row, currency)
        for row in await shipping.list_shipping_rates(staff=staff)
    ]


async def upsert_shipping_rate(
    info: Info, input: ShippingRateInput, id: strawberry.ID | None = None
) -> ShippingRatePayload:
    identity = await require_user(info)
    if not identity.is_staff:
        return ShippingRatePayload(user_errors=forbidden())
    rate_id = _int_id(id)
    if id is not None and rate_id is None:
        return ShippingRatePayload(user_errors=_not_found("shipping rate"))
    draft = shipping.ShippingRateDraft(
        name=input.name,
        amount=input.amount,
        free_from=input.free_from,
        min_delivery_days=input.min_delivery_days,
        max_delivery_days=input.max_delivery_days,
        active=input.active is not False,
    )

    async def run() -> ShippingRatePayload:
        row = await shipping.upsert_shipping_rate(rate_id, draft)
        currency = info.context.settings.shop_currency
        return ShippingRatePayload(shipping_rate=ShippingRate.from_model(row, currency))

    return await payload(ShippingRatePayload, run())


async def promotion_codes(info: Info, first: int | None = 50) -> list[PromotionCode]:
    await require_staff(info)
    rows = await promotions.list_promotion_codes(page_size(first, 50))
    return [PromotionCode.from_model(row, redeemed) for row, redeemed in rows]


async def create_promotion_code(info: Info, input: PromotionCodeInput) -> PromotionCodePayload:
    identity = await require_user(info)
    if not identity.is_staff:
        return PromotionCodePayload(user_errors=forbidden())
    draft = promotions.PromotionCodeDraft(
        code=input.code,
        percent_off=input.percent_off,
        amount_off=input.amount_off,
        max_redemptions=input.max_redemptions,
        expires_at=input.expires_at,
    )
    services = info.context.services

    async def run() -> PromotionCodePayload:
        try:
            row = await promotions.create_promotion_code(draft, services.settings, services.gateway)
        except PaymentProviderError:
            return PromotionCodePayload(user_errors=[STRIPE_SAID_NO])
        return PromotionCodePayload(promotion_code=PromotionCode.from_model(row))

    return await payload(PromotionCodePayload, run())


async def set_promotion_code_active(
    info: Info, id: strawberry.ID, active: bool
) -> PromotionCodePayload:
    identity = await require_user(info)
    if not identity.is_staff:
        return PromotionCodePayload(user_errors=forbidden())
    code_id = _int_id(id)
    if code_id is None:
        return PromotionCodePayload(user_errors=_not_found("promotion code"))
    gateway = info.context.services.gateway

    async def run() -> PromotionCodePayload:
        try:
            row = await promotions.set_promotion_code_active(code_id, active, gateway)
        except PaymentProviderError:
            return PromotionCodePayload(user_errors=[STRIPE_SAID_NO])
        redeemed = await promotions.times_redeemed(row.code)
        return PromotionCodePayload(promotion_code=PromotionCode.from_model(row, redeemed))

    return await payload(PromotionCodePayload, run())
