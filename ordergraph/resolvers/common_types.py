"""The small GraphQL types every part of the API shares: money, errors, pages and cursors."""

from __future__ import annotations

import base64

import strawberry

from ordergraph import models
from ordergraph.domain.errors import ErrorCode as DomainErrorCode
from ordergraph.domain.errors import Problem

ErrorCode = strawberry.enum(DomainErrorCode, name="ErrorCode")
OrderStatus = strawberry.enum(models.OrderStatus, name="OrderStatus")
PaymentStatus = strawberry.enum(models.PaymentStatus, name="PaymentStatus")


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


def decode_cursor(cursor: str) -> str | None:
    try:
        value = base64.b64decode(cursor.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return value if value and "\x00" not in value else None


@strawberry.type
class Money:
    amount: int
    currency: str


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class UserError:
    code: ErrorCode  # type: ignore[valid-type]
    message: str
    field: list[str] | None = strawberry.field(
        default=None, description="Path to the input field at fault, when there is one."
    )
    product_id: strawberry.ID | None = strawberry.field(
        default=None,
        description="For OUT_OF_STOCK: the product at fault and how many units are left.",
    )
    available: int | None = None

    @classmethod
    def from_problem(cls, problem: Problem) -> UserError:
        return cls(
            code=problem.code,
            message=problem.message,
            field=list(problem.field) if problem.field else None,
            product_id=strawberry.ID(problem.product_id) if problem.product_id else None,
            available=problem.available,
        )
