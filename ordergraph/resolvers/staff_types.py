"""The GraphQL types of what only staff see: notes, stock movements, order search, payment
discrepancies and undelivered mail."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry

from ordergraph import models
from ordergraph.resolvers.common_types import OrderStatus, PaymentStatus, UserError


@strawberry.type
class OrderNote:
    id: strawberry.ID
    body: str
    author: str
    at: datetime

    @classmethod
    def from_model(cls, row: models.OrderNote) -> OrderNote:
        return cls(id=strawberry.ID(str(row.id)), body=row.body, author=row.author, at=row.at)


@strawberry.type
class StockMovement:
    at: datetime
    delta: int
    stock_after: int
    reason: str
    actor: str

    @classmethod
    def from_model(cls, row: models.StockMovement) -> StockMovement:
        return cls(
            at=row.at,
            delta=row.delta,
            stock_after=row.stock_after,
            reason=row.reason,
            actor=row.actor,
        )


@strawberry.input
class OrderFilter:
    status: list[OrderStatus] | None = None  # type: ignore[valid-type]
    payment_status: list[PaymentStatus] | None = None  # type: ignore[valid-type]
    search: str | None = strawberry.field(
        default=None,
        description=(
            "Matches an order id (whole or its first 8 characters), the shopper's email, or a "
            "product name."
        ),
    )
    created_from: datetime | None = None
    created_to: datetime | None = None


@strawberry.enum
class OrderSort(Enum):
    CREATED_DESC = "CREATED_DESC"
    CREATED_ASC = "CREATED_ASC"
    UPDATED_DESC = "UPDATED_DESC"
    TOTAL_DESC = "TOTAL_DESC"


@strawberry.type
class PaymentDiscrepancy:
    id: strawberry.ID
    order_id: strawberry.ID | None
    checkout_session_id: str | None
    kind: str = strawberry.field(
        description="e.g. PAID_NOT_RECORDED, REFUSED_PAYMENT, AMOUNT_MISMATCH, UNKNOWN_AT_STRIPE."
    )
    detail: str
    action: str = strawberry.field(
        description="What the service did about it (refunded, cancelled, left for staff)."
    )
    found_at: datetime
    resolved_at: datetime | None

    @classmethod
    def from_model(cls, row: models.PaymentDiscrepancy) -> PaymentDiscrepancy:
        return cls(
            id=strawberry.ID(str(row.id)),
            order_id=strawberry.ID(str(row.order_id)) if row.order_id else None,
            checkout_session_id=row.checkout_session_id,
            kind=row.kind,
            detail=row.detail,
            action=row.action,
            found_at=row.found_at,
            resolved_at=row.resolved_at,
        )


@strawberry.type(description="A mail the outbox could not deliver yet, or gave up on (DEAD).")
class UndeliveredEmail:
    id: strawberry.ID
    order_id: strawberry.ID | None
    recipient: str
    subject: str
    status: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime

    @classmethod
    def from_model(cls, row: models.OutboxEmail) -> UndeliveredEmail:
        return cls(
            id=strawberry.ID(str(row.id)),
            order_id=strawberry.ID(str(row.order_id)) if row.order_id else None,
            recipient=row.recipient,
            subject=row.subject,
            status=row.status.name,
            attempts=row.attempts,
            last_error=row.last_error,
            next_attempt_at=row.next_attempt_at,
            created_at=row.created_at,
        )


@strawberry.type
class EmailPayload:
    email: UndeliveredEmail | None = None
    user_errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class RetryDeadEmailsPayload:
    retried: int | None = strawberry.field(
        default=None, description="How many DEAD mails were given a fresh set of tries."
    )
    user_errors: list[UserError] = strawberry.field(default_factory=list)
