"""What a shop offers at Stripe's Checkout besides its lines: shipping options, promotion codes
(a coupon and its promotion code), automatic tax. `StripeGateway` takes these calls from
`OfferCalls`; `offer_params` is the part of a session's parameters they add."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import stripe


@dataclass(frozen=True)
class ShippingOption:
    """One `shipping_rate_data` of a session: the rate's name, what it costs this order (0 when
    its free-from subtotal is reached) and its delivery estimate in days."""

    name: str
    amount: int
    min_days: int | None = None
    max_days: int | None = None


@dataclass(frozen=True)
class PromotionCodeAtStripe:
    coupon_id: str
    promotion_code_id: str


def _estimate(option: ShippingOption) -> dict[str, Any] | None:
    bounds = {
        bound: {"unit": "business_day", "value": days}
        for bound, days in (("minimum", option.min_days), ("maximum", option.max_days))
        if days is not None
    }
    return bounds or None


def product_data(name: str, tax_code: str | None) -> dict[str, Any]:
    """A line's `product_data`; its tax code is set only on orders that asked for automatic tax."""
    return {"name": name, "tax_code": tax_code} if tax_code else {"name": name}


def offer_params(
    currency: str,
    shipping_options: Sequence[ShippingOption],
    allow_promotion_codes: bool,
    automatic_tax: bool,
) -> dict[str, Any]:
    """Only what is offered: a shop without rates, codes or tax sends none of these keys."""
    params: dict[str, Any] = {}
    if shipping_options:
        params["shipping_options"] = []
        for option in shipping_options:
            data: dict[str, Any] = {
                "display_name": option.name,
                "type": "fixed_amount",
                "fixed_amount": {"amount": option.amount, "currency": currency.lower()},
            }
            estimate = _estimate(option)
            if estimate:
                data["delivery_estimate"] = estimate
            params["shipping_options"].append({"shipping_rate_data": data})
    if allow_promotion_codes:
        params["allow_promotion_codes"] = True
    if automatic_tax:
        params["automatic_tax"] = {"enabled": True}
    return params


class OfferCalls:
    """Promotion codes at Stripe, each call with an idempotency key; mixed into StripeGateway."""

    @property
    def client(self) -> stripe.StripeClient:  # pragma: no cover - StripeGateway's
        raise NotImplementedError

    async def _call(
        self, what: str, make: Callable[[], Awaitable[Any]]
    ) -> Any:  # pragma: no cover - StripeGateway's
        raise NotImplementedError

    async def create_promotion_code(
        self,
        *,
        key: str,
        code: str,
        currency: str,
        percent_off: float | None,
        amount_off: int | None,
        max_redemptions: int | None,
        expires_at: datetime | None,
    ) -> PromotionCodeAtStripe:
        """A `once` coupon, then its promotion code; `key` makes a retry return the same two."""
        coupon_params: dict[str, Any] = {"duration": "once", "name": code}
        if percent_off is not None:
            coupon_params["percent_off"] = percent_off
        else:
            coupon_params.update(amount_off=amount_off, currency=currency.lower())
        coupon = await self._call(
            "coupon create",
            lambda: self.client.v1.coupons.create_async(
                params=coupon_params,  # type: ignore[arg-type]
                options={"idempotency_key": f"coupon-{key}"},
            ),
        )
        promo_params: dict[str, Any] = {
            "promotion": {"type": "coupon", "coupon": coupon.id},
            "code": code,
        }
        if max_redemptions is not None:
            promo_params["max_redemptions"] = max_redemptions
        if expires_at is not None:
            promo_params["expires_at"] = int(expires_at.timestamp())
        promo = await self._call(
            "promotion code create",
            lambda: self.client.v1.promotion_codes.create_async(
                params=promo_params,  # type: ignore[arg-type]
                options={"idempotency_key": f"promotion-code-{key}"},
            ),
        )
        return PromotionCodeAtStripe(coupon_id=coupon.id, promotion_code_id=promo.id)

    async def set_promotion_code_active(
        self, promotion_code_id: str, active: bool, key: str
    ) -> None:
        await self._call(
            "promotion code update",
            lambda: self.client.v1.promotion_codes.update_async(
                promotion_code_id,
                params={"active": active},
                options={"idempotency_key": key},
            ),
        )
