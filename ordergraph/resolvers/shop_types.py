"""The GraphQL types of what a shop offers at checkout: shipping rates and promotion codes."""

from __future__ import annotations

from datetime import datetime

import strawberry

from ordergraph import models
from ordergraph.resolvers.common_types import Money, UserError


@strawberry.type
class ShippingRate:
    id: strawberry.ID
    name: str
    amount: Money
    free_from: int | None = strawberry.field(
        description="Offered free when the order's subtotal reaches this many minor units."
    )
    min_delivery_days: int | None
    max_delivery_days: int | None
    active: bool

    @classmethod
    def from_model(cls, row: models.ShippingRate, currency: str) -> ShippingRate:
        return cls(
            id=strawberry.ID(str(row.id)),
            name=row.name,
            amount=Money(amount=row.amount, currency=currency),
            free_from=row.free_from,
            min_delivery_days=row.min_delivery_days,
            max_delivery_days=row.max_delivery_days,
            active=row.active,
        )


@strawberry.type
class PromotionCode:
    id: strawberry.ID
    code: str
    percent_off: float | None
    amount_off: Money | None
    active: bool
    max_redemptions: int | None
    times_redeemed: int
    expires_at: datetime | None

    @classmethod
    def from_model(cls, row: models.PromotionCode, times_redeemed: int = 0) -> PromotionCode:
        return cls(
            id=strawberry.ID(str(row.id)),
            code=row.code,
            percent_off=row.percent_off,
            amount_off=(
                Money(amount=row.amount_off, currency=row.currency)
                if row.amount_off is not None
                else None
            ),
            active=row.active,
            max_redemptions=row.max_redemptions,
            times_redeemed=times_redeemed,
            expires_at=row.expires_at,
        )


@strawberry.type
class ShippingRatePayload:
    shipping_rate: ShippingRate | None = None
    user_errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class PromotionCodePayload:
    promotion_code: PromotionCode | None = None
    user_errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.input
class ShippingRateInput:
    name: str
    amount: int
    free_from: int | None = None
    min_delivery_days: int | None = None
    max_delivery_days: int | None = None
    active: bool | None = True


@strawberry.input
class PromotionCodeInput:
    code: str
    percent_off: float | None = strawberry.field(
        default=None,
        description=(
            "One of percentOff (0 < p <= 100) and amountOff (minor units of the shop's currency)."
        ),
    )
    amount_off: int | None = None
    max_redemptions: int | None = None
    expires_at: datetime | None = None
