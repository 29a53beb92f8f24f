"""Comparing Stripe's Checkout Sessions with the orders, both ways, and settling what a rule
covers.

Events get lost and processes die, so the sweeper settles each overdue order by asking Stripe;
reconciliation also looks from Stripe's side: a session paid there but not here is confirmed
(or, if the service refuses it, refunded), and a payment recorded here that Stripe does not
show, or an amount that differs, is left for staff. Each finding is a `PaymentDiscrepancy`,
recorded once however often it is found again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from ordergraph.domain.discrepancies import LEFT_FOR_STAFF, Discrepancy, record_discrepancy
from ordergraph.domain.expiry import sweep_overdue_orders
from ordergraph.domain.ids import parse_uuid
from ordergraph.domain.payments import Outcome, PaymentServices, settle_session
from ordergraph.models import Order, PaymentStatus
from ordergraph.stripe_gateway import PaymentProviderError
from ordergraph.stripe_objects import CheckoutSession

log = logging.getLogger(__name__)

ACTOR = "reconcile"


@dataclass
class Finding:
    kind: Discrepancy
    detail: str
    action: str
    order_id: str | None = None
    session_id: str | None = None

    @property
    def needs_staff(self) -> bool:
        return self.action == LEFT_FOR_STAFF


@dataclass
class Report:
    sessions: int = 0
    orders: int = 0
    swept: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def needs_staff(self) -> list[Finding]:
        return [f for f in self.findings if f.needs_staff]


async def _found(report: Report, finding: Finding) -> None:
    report.findings.append(finding)
    await record_discrepancy(
        finding.kind,
        detail=finding.detail,
        action=finding.action,
        order_id=finding.order_id,
        session_id=finding.session_id,
    )


async def _paid_at_stripe(
    report: Report, session: CheckoutSession, services: PaymentServices
) -> None:
    """A session Stripe says is paid: its order must say so too, for the same amount."""
    order_id = parse_uuid(session.metadata.get("order_id"))
    order = await Order.filter(id=order_id).first() if order_id else None
    if order is None:
        detail = f"session {session.id} is paid ({session.amount_total} {session.currency}) "
        await _found(
            report,
            Finding(
                Discrepancy.UNKNOWN_ORDER,
                detail + "but names no order",
                LEFT_FOR_STAFF,
                session_id=session.id,
            ),
        )
        return
    own = order.stripe_checkout_session_id in (None, session.id)
    if order.paid_at is None or not own:  # not recorded, or a second payment for the order
        outcome = await settle_session(session, actor=ACTOR, services=services)
        if outcome == Outcome.APPLIED:
            await order.refresh_from_db()
            confirmed = order.payment_status == PaymentStatus.PAID
            await _found(
                report,
                Finding(
                    Discrepancy.PAID_NOT_RECORDED,
                    f"session {session.id} was paid at Stripe; the order did not know",
                    "payment confirmed" if confirmed else f"payment {order.payment_status.value}",
                    str(order.id),
                    session.id,
                ),
            )
        elif outcome == Outcome.REFUSED:  # refunded, and recorded by the refusal itself
            report.findings.append(
                Finding(
                    Discrepancy.REFUSED_PAYMENT,
                    f"session {session.id} paid for an order that cannot accept it",
                    "refunded",
                    str(order.id),
                    session.id,
                )
            )
        elif order.paid_at is None:
            await _found(
                report,
                Finding(
                    Discrepancy.PAID_NOT_RECORDED,
                    f"session {session.id} was paid at Stripe; the order ({order.status.name}) "
                    "cannot take the payment",
                    LEFT_FOR_STAFF,
                    str(order.id),
                    session.id,
                ),
            )
        return
    if order.stripe_checkout_session_id == session.id and (
        session.amount_total != order.total or session.currency != order.currency
    ):
        await _found(
            report,
            Finding(
                Discrepancy.AMOUNT_MISMATCH,
                f"Stripe charged {session.amount_total} {session.currency}, "
                f"the order is {order.total} {order.currency}",
                LEFT_FOR_STAFF,
                str(order.id),
                session.id,
            ),
        )


async def _paid_here(
    report: Report, order: Order, sessions: dict[str, CheckoutSession], services: PaymentServices
) -> None:
    """An order recorded as paid: Stripe's session must say paid too."""
    session_id = order.stripe_checkout_session_id or ""
    session = sessions.get(session_id)
    if session is None:
        try:
            session = await services.gateway.retrieve_checkout_session(session_id)
        except PaymentProviderError as exc:
            if not exc.missing:
                raise
            await _found(
                report,
                Finding(
                    Discrepancy.UNKNOWN_AT_STRIPE,
                    f"the order is paid, but Stripe does not know its session {session_id}",
                    LEFT_FOR_STAFF,
                    str(order.id),
                    session_id,
                ),
            )
            return
    if session.payment_status != "paid":
        await _found(
            report,
            Finding(
                Discrepancy.NOT_PAID_AT_STRIPE,
                f"the order is paid, but Stripe's session {session_id} is "
                f"{session.status}/{session.payment_status}",
                LEFT_FOR_STAFF,
                str(order.id),
                session_id,
            ),
        )


async def reconcile(services: PaymentServices, *, since: datetime) -> Report:
    """Settle overdue orders, then compare both ways every session and paid order since then.

    Raises `PaymentProviderError` when Stripe cannot be asked: a reconciliation that could not
    look is not a clean one.
    """
    report = Report(swept=await sweep_overdue_orders(services))
    listed = await services.gateway.list_checkout_sessions(since)
    report.sessions = len(listed)
    for session in listed:
        if session.payment_status == "paid":
            await _paid_at_stripe(report, session, services)
    sessions = {s.id: s for s in listed}
    paid = await Order.filter(paid_at__gte=since, stripe_checkout_session_id__isnull=False)
    report.orders = len(paid)
    for order in paid:
        await _paid_here(report, order, sessions, services)
    return report
