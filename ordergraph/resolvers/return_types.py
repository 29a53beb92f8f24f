"""The GraphQL types of returns and withdrawals."""

from __future__ import annotations

from datetime import datetime

import strawberry

from ordergraph import models
from ordergraph.resolvers.common_types import Money

ReturnStatus = strawberry.enum(models.ReturnStatus, name="ReturnStatus")


@strawberry.type
class ReturnLine:
    product_id: strawberry.ID
    product_name: str
    quantity: int


@strawberry.type
class OrderReturn:
    id: strawberry.ID
    order_id: strawberry.ID
    status: ReturnStatus  # type: ignore[valid-type]
    is_withdrawal: bool = strawberry.field(
        description=(
            "A withdrawal under the shopper's statutory right (EU: 14 days, two steps, "
            "no reason needed)."
        )
    )
    lines: list[ReturnLine]
    reason: str | None
    requested_at: datetime
    confirmed_at: datetime | None
    received_at: datetime | None
    refunded: Money | None = strawberry.field(
        description="What was paid back for this return, once refunded."
    )

    @classmethod
    def from_model(cls, row: models.OrderReturn, currency: str) -> OrderReturn:
        return cls(
            id=strawberry.ID(str(row.id)),
            order_id=strawberry.ID(str(row.order_id)),
            status=row.status,
            is_withdrawal=row.is_withdrawal,
            lines=[
                ReturnLine(
                    product_id=strawberry.ID(str(line["product_id"])),
                    product_name=str(line["product_name"]),
                    quantity=int(line["quantity"]),
                )
                for line in row.lines
            ],
            reason=row.reason,
            requested_at=row.requested_at,
            confirmed_at=row.confirmed_at,
            received_at=row.received_at,
            refunded=(
                Money(amount=row.refunded_amount, currency=currency)
                if row.refunded_amount is not None
                else None
            ),
        )


@strawberry.input
class ReturnLineInput:
    product_id: strawberry.ID
    quantity: int
