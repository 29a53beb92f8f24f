"""Shipping rates staff offer at checkout, and what one order is offered.

A checkout fixes its offer on the order (`Order.checkout_options`): the shipping options with
the amounts this order pays (0 where a rate's `free_from` is reached by its subtotal), whether
promotion codes may be typed and whether Stripe computes tax. The session request is built from
that record alone, so a replay by the sweeper (same idempotency key) sends the very same
parameters, whatever staff changed in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tortoise.expressions import Q

from ordergraph.db import get_connection, is_postgres
from ordergraph.domain.catalog import MAX_AMOUNT
from ordergraph.domain.errors import BusinessError, ErrorCode, Problem
from ordergraph.models import PromotionCode, ShippingRate
from ordergraph.settings import Settings
from ordergraph.stripe_offers import ShippingOption

# Stripe takes at most 5 shipping options on a Checkout Session.
MAX_SHIPPING_OPTIONS = 5
MAX_DELIVERY_DAYS = 365


@dataclass(frozen=True)
class ShippingRateDraft:
    name: str
    amount: int
    free_from: int | None = None
    min_delivery_days: int | None = None
    max_delivery_days: int | None = None
    active: bool = True


def _validate(draft: ShippingRateDraft) -> None:
    problems: list[tuple[str, str]] = []
    if not draft.name.strip() or len(draft.name) > 100 or "\x00" in draft.name:
        problems.append(("name", "Name must be 1 to 100 characters, without NUL"))
    if not 0 <= draft.amount <= MAX_AMOUNT:
        problems.append(("amount", f"Amount must be between 0 and {MAX_AMOUNT} minor units"))
    if draft.free_from is not None and not 0 <= draft.free_from <= MAX_AMOUNT:
        problems.append(("freeFrom", f"freeFrom must be between 0 and {MAX_AMOUNT} minor units"))
    for field, days in (
        ("minDeliveryDays", draft.min_delivery_days),
        ("maxDeliveryDays", draft.max_delivery_days),
    ):
        if days is not None and not 1 <= days <= MAX_DELIVERY_DAYS:
            problems.append((field, f"Delivery days must be between 1 and {MAX_DELIVERY_DAYS}"))
    low, high = draft.min_delivery_days, draft.max_delivery_days
    if low is not None and high is not None and low > high:
        problems.append(("maxDeliveryDays", "maxDeliveryDays must not be below minDeliveryDays"))
    if problems:
        raise BusinessError(
            *(Problem(ErrorCode.INVALID_INPUT, msg, field=("input", f)) for f, msg in problems)
        )


async def upsert_shipping_rate(rate_id: int | None, draft: ShippingRateDraft) -> ShippingRate:
    """Create a rate (no id) or change one; an archived rate is `active=false`."""
    _validate(draft)
    values: dict[str, Any] = {
        "name": draft.name.strip(),
        "amount": draft.amount,
        "free_from": draft.free_from,
        "min_delivery_days": draft.min_delivery_days,
        "max_delivery_days": draft.max_delivery_days,
        "active": draft.active,
    }
    if rate_id is None:
        return await ShippingRate.create(**values)
    if not await ShippingRate.filter(id=rate_id).update(**values):
        raise BusinessError.of(ErrorCode.NOT_FOUND, "No such shipping rate", field=("id",))
    return await ShippingRate.get(id=rate_id)


async def list_shipping_rates(staff: bool) -> list[ShippingRate]:
    query = ShippingRate.all() if staff else ShippingRate.filter(active=True)
    return list(await query.order_by("amount", "id"))


_RATE_COLUMNS = ("name", "amount", "free_from", "min_delivery_days", "max_delivery_days")


def _option(rate: dict[str, Any], subtotal: int) -> dict[str, Any]:
    free = rate["free_from"] is not None and subtotal >= rate["free_from"]
    return {
        "name": rate["name"],
        "amount": 0 if free else rate["amount"],
        "min_days": rate["min_delivery_days"],
        "max_days": rate["max_delivery_days"],
    }


# The active rates and whether any promotion code can be typed, in one round trip (one row
# with NULL rate columns when there is no rate). `{extra}`: more columns for every row, a
# caller's own read in the same round trip (checkout's unpaid units).
_OFFER = f"""
SELECT {", ".join(f"r.{column}" for column in _RATE_COLUMNS)},
    EXISTS (
        SELECT 1 FROM promotion_codes c
        WHERE c.active AND (c.expires_at IS NULL OR c.expires_at > now())
    ) AS promotions{{extra}}
FROM (SELECT 1) AS one
LEFT JOIN (
    SELECT * FROM shipping_rates WHERE active ORDER BY amount, id LIMIT {MAX_SHIPPING_OPTIONS}
) AS r ON true
ORDER BY r.amount, r.id
"""


@dataclass(frozen=True, slots=True)
class Offer:
    """What the shop offers now: its active rates, and whether a promotion code can be typed."""

    rates: list[dict[str, Any]]
    promotions: bool


def offer_query(extra: str = "") -> str:
    """The offer's statement (PostgreSQL), with `extra` (", expression AS name ...") read by
    the same statement; `offer_from` reads the offer from its rows."""
    return _OFFER.format(extra=extra)


def offer_from(rows: list[dict[str, Any]]) -> Offer:
    return Offer([r for r in rows if r["name"] is not None], bool(rows[0]["promotions"]))


async def read_offer() -> Offer:
    connection = get_connection()
    if is_postgres(connection):
        return offer_from(await connection.execute_query_dict(offer_query()))
    active = ShippingRate.filter(active=True).order_by("amount", "id")
    rates = await active.limit(MAX_SHIPPING_OPTIONS).values(*_RATE_COLUMNS)
    promotions = await PromotionCode.filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=datetime.now(UTC)), active=True
    ).exists()
    return Offer(rates, promotions)


async def checkout_offer(
    subtotal: int, settings: Settings, offer: Offer | None = None
) -> dict[str, Any]:
    """What an order with this subtotal is offered (`offer`, read now when not given), to be
    stored on it at checkout."""
    offer = offer or await read_offer()
    return {
        "shipping_options": [_option(r, subtotal) for r in offer.rates],
        "allow_promotion_codes": offer.promotions,
        "automatic_tax": settings.automatic_tax,
    }


def offered_options(offer: dict[str, Any] | None) -> tuple[ShippingOption, ...]:
    """The shipping options a stored offer names (none for orders placed before offers)."""
    return tuple(
        ShippingOption(o["name"], int(o["amount"]), o.get("min_days"), o.get("max_days"))
        for o in (offer or {}).get("shipping_options") or []
    )
