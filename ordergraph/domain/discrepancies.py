"""Where Stripe and the service disagree: each finding recorded once, with what was done.

A discrepancy is found by an event (a payment the service refused), by the sweeper (a session
Stripe no longer knows) or by `ordergraph reconcile` (a payment one side has and the other has
not). What a rule settles is recorded as resolved, with its action; the rest waits for staff.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from ordergraph.models import PaymentDiscrepancy


class Discrepancy(StrEnum):
    # Stripe took money the service refused (amount, currency, owner or session mismatch).
    REFUSED_PAYMENT = "REFUSED_PAYMENT"
    # Stripe says paid; the order did not know.
    PAID_NOT_RECORDED = "PAID_NOT_RECORDED"
    # The order says paid; Stripe's session does not.
    NOT_PAID_AT_STRIPE = "NOT_PAID_AT_STRIPE"
    # The order's amount differs from what Stripe charged.
    AMOUNT_MISMATCH = "AMOUNT_MISMATCH"
    # Stripe does not know the order's session (`resource_missing`).
    UNKNOWN_AT_STRIPE = "UNKNOWN_AT_STRIPE"
    # A paid session names no order of this service.
    UNKNOWN_ORDER = "UNKNOWN_ORDER"
    # Stripe refused the refund of a confirmed withdrawal: staff must settle it.
    REFUND_REFUSED = "REFUND_REFUSED"


LEFT_FOR_STAFF = "left for staff"


def _key(kind: Discrepancy, order_id: str | None, session_id: str | None) -> str:
    return f"{kind.value}:{session_id or order_id}"


async def already_recorded(
    kind: Discrepancy, *, order_id: str | None = None, session_id: str | None = None
) -> bool:
    return await PaymentDiscrepancy.filter(dedupe_key=_key(kind, order_id, session_id)).exists()


async def record_discrepancy(
    kind: Discrepancy,
    *,
    detail: str,
    action: str,
    order_id: str | None = None,
    session_id: str | None = None,
) -> None:
    """Record a finding once (by kind and the session, else the order), however often it is
    found again; settled unless its action is `LEFT_FOR_STAFF`."""
    now = datetime.now(UTC)
    row = PaymentDiscrepancy(
        dedupe_key=_key(kind, order_id, session_id),
        order_id=order_id,
        checkout_session_id=session_id,
        kind=kind.value,
        detail=detail[:2000],
        action=action[:255],
        resolved_at=None if action == LEFT_FOR_STAFF else now,
    )
    await PaymentDiscrepancy.bulk_create([row], ignore_conflicts=True)


async def list_discrepancies(*, unresolved_only: bool, limit: int) -> list[PaymentDiscrepancy]:
    query = PaymentDiscrepancy.all()
    if unresolved_only:
        query = query.filter(resolved_at__isnull=True)
    return await query.order_by("-found_at", "-id").limit(limit)
