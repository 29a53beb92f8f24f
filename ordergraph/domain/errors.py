"""Business errors: what a caller did that the rules refuse, each with a contract error code.

Domain functions raise `BusinessError`; GraphQL turns its problems into `userErrors`, so the
same refusal reads the same whichever way it arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ErrorCode(StrEnum):
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    INVALID_INPUT = "INVALID_INPUT"
    CART_EMPTY = "CART_EMPTY"
    OUT_OF_STOCK = "OUT_OF_STOCK"
    ORDER_LOCKED = "ORDER_LOCKED"
    INVALID_TRANSITION = "INVALID_TRANSITION"
    PAYMENT_PROVIDER_ERROR = "PAYMENT_PROVIDER_ERROR"
    RATE_LIMITED = "RATE_LIMITED"
    # A size limit was reached: lines in a cart, units of one product in a line, units one
    # shopper may hold in unpaid orders, or an amount past what can be shown (MAX_AMOUNT).
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    # The statutory withdrawal period of the order is over (or the shop has none).
    WITHDRAWAL_PERIOD_OVER = "WITHDRAWAL_PERIOD_OVER"


@dataclass(frozen=True)
class Problem:
    code: ErrorCode
    message: str
    field: tuple[str, ...] | None = None
    product_id: str | None = None
    available: int | None = None


class BusinessError(Exception):
    def __init__(self, *problems: Problem) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = list(problems)

    @classmethod
    def of(
        cls, code: ErrorCode, message: str, *, field: tuple[str, ...] | None = None
    ) -> BusinessError:
        return cls(Problem(code, message, field=field))

    @property
    def code(self) -> ErrorCode:
        return self.problems[0].code


def order_not_found() -> BusinessError:
    """What anyone hears of an order that is not theirs, and of one that does not exist."""
    return BusinessError.of(ErrorCode.NOT_FOUND, "No such order", field=("orderId",))
