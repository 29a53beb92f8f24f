"""Promotion codes: staff create them, shoppers type them at Stripe's Checkout.

A code is a Stripe coupon and its promotion code, created at Stripe first (with idempotency
keys derived from the code), then recorded here; Stripe counts and enforces redemptions, the
service counts the paid orders that used a code (`times_redeemed`).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import astuple, dataclass
from datetime import UTC, datetime

from tortoise.exceptions import IntegrityError
from tortoise.functions import Count

from ordergraph.domain.catalog import MAX_AMOUNT
from ordergraph.domain.errors import BusinessError, ErrorCode, Problem
from ordergraph.models import Order, PromotionCode
from ordergraph.settings import Settings
from ordergraph.stripe_gateway import StripeGateway

CODE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_REDEMPTIONS = 1_000_000_000


@dataclass(frozen=True)
class PromotionCodeDraft:
    code: str
    percent_off: float | None = None
    amount_off: int | None = None
    max_redemptions: int | None = None
    expires_at: datetime | None = None


def _invalid(field: str, message: str) -> Problem:
    return Problem(ErrorCode.INVALID_INPUT, message, field=("input", field))


def _validate(draft: PromotionCodeDraft) -> None:
    problems = []
    if not CODE.match(draft.code):
        problems.append(_invalid("code", "A code is 1 to 64 letters, digits, - or _"))
    percent, amount = draft.percent_off, draft.amount_off
    if (percent is None) == (amount is None):
        problems.append(_invalid("percentOff", "Give exactly one of percentOff and amountOff"))
    elif percent is not None and not (math.isfinite(percent) and 0 < percent <= 100):
        problems.append(_invalid("percentOff", "percentOff must be above 0 and at most 100"))
    elif amount is not None and not 0 < amount <= MAX_AMOUNT:
        problems.append(_invalid("amountOff", f"amountOff must be between 1 and {MAX_AMOUNT}"))
    if draft.max_redemptions is not None and not 1 <= draft.max_redemptions <= MAX_REDEMPTIONS:
        problems.append(_invalid("maxRedemptions", "maxRedemptions must be at least 1"))
    if draft.expires_at is not None and (
        draft.expires_at.tzinfo is None or draft.expires_at <= datetime.now(UTC)
    ):
        problems.append(_invalid("expiresAt", "expiresAt must be a future time with a zone"))
    if problems:
        raise BusinessError(*problems)


def _duplicate(code: str) -> BusinessError:
    return BusinessError.of(
        ErrorCode.INVALID_INPUT, f"The code {code} exists already", field=("input", "code")
    )


async def create_promotion_code(
    draft: PromotionCodeDraft, settings: Settings, gateway: StripeGateway
) -> PromotionCode:
    """Create the coupon and promotion code at Stripe, then the row; a refusal at Stripe
    (PaymentProviderError, raised) leaves no row. Codes are unique case-insensitively, as
    customers type them at Stripe."""
    _validate(draft)
    code = draft.code.upper()
    if await PromotionCode.filter(code=code).exists():
        raise _duplicate(code)
    # The same request again (after a lost answer) gets the same coupon and promotion code.
    made = await gateway.create_promotion_code(
        key=hashlib.sha256(repr((code, *astuple(draft)[1:])).encode()).hexdigest()[:32],
        code=code,
        currency=settings.shop_currency,
        percent_off=draft.percent_off,
        amount_off=draft.amount_off,
        max_redemptions=draft.max_redemptions,
        expires_at=draft.expires_at,
    )
    try:
        return await PromotionCode.create(
            code=code,
            percent_off=draft.percent_off,
            amount_off=draft.amount_off,
            currency=settings.shop_currency,
            max_redemptions=draft.max_redemptions,
            expires_at=draft.expires_at,
            stripe_coupon_id=made.coupon_id,
            stripe_promotion_code_id=made.promotion_code_id,
        )
    except IntegrityError:
        raise _duplicate(code) from None


async def set_promotion_code_active(
    code_id: int, active: bool, gateway: StripeGateway
) -> PromotionCode:
    row = await PromotionCode.filter(id=code_id).first()
    if row is None:
        raise BusinessError.of(ErrorCode.NOT_FOUND, "No such promotion code", field=("id",))
    # A toggle may be repeated (off, on, off): each is a new request, so the key carries the time.
    await gateway.set_promotion_code_active(
        row.stripe_promotion_code_id,
        active,
        key=f"promotion-code-active-{row.id}-{active}-{datetime.now(UTC).timestamp()}",
    )
    await PromotionCode.filter(id=code_id).update(active=active)
    row.active = active
    return row


async def list_promotion_codes(first: int) -> list[tuple[PromotionCode, int]]:
    """Newest first, each with the number of paid orders that used it."""
    rows = list(await PromotionCode.all().order_by("-created_at", "-id").limit(first))
    codes = [r.code for r in rows]
    counts: dict[str, int] = {}
    if codes:
        found = (
            await Order.filter(promotion_code__in=codes, paid_at__isnull=False)
            .annotate(n=Count("id"))
            .group_by("promotion_code")
            .values_list("promotion_code", "n")
        )
        counts = {str(code): int(n) for code, n in found}
    return [(r, counts.get(r.code, 0)) for r in rows]


async def times_redeemed(code: str) -> int:
    return await Order.filter(promotion_code=code, paid_at__isnull=False).count()
