"""What every resolver does first and last: who may ask, and turning refusals into answers.

Business refusals come back as `userErrors`; a caller who is not signed in (or not allowed to
use a staff-only query) gets a GraphQL error whose `extensions.code` says so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from graphql import GraphQLError
from strawberry.types import ExecutionContext

from ordergraph.auth import Identity, ensure_user
from ordergraph.domain.errors import BusinessError, ErrorCode, Problem
from ordergraph.resolvers.common_types import UserError
from ordergraph.resolvers.context import Info
from ordergraph.stripe_gateway import PaymentProviderError

MAX_PAGE = 100
P = TypeVar("P")


def graphql_error(code: ErrorCode, message: str) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code.value})


async def require_user(info: Info) -> Identity:
    context = info.context
    if context.identity is None:
        raise graphql_error(ErrorCode.UNAUTHENTICATED, context.auth_error or "Sign in first")
    await ensure_user(context.identity)
    return context.identity


async def require_staff(info: Info) -> Identity:
    identity = await require_user(info)
    if not identity.is_staff:
        raise graphql_error(ErrorCode.FORBIDDEN, "Staff only")
    return identity


def page_size(first: int | None, default: int) -> int:
    size = default if first is None else first
    if not 0 <= size <= MAX_PAGE:
        raise graphql_error(ErrorCode.INVALID_INPUT, f"first must be between 0 and {MAX_PAGE}")
    return size


PROVIDER_DOWN = Problem(
    ErrorCode.PAYMENT_PROVIDER_ERROR,
    "The payment provider could not be reached; nothing was charged or changed. Try again.",
)


async def payload(make: Callable[..., P], action: Awaitable[P]) -> P:
    """Run a mutation's domain call, answering its business errors (and a payment provider
    that failed it, after the domain undid what it had prepared) as `userErrors`."""
    try:
        return await action
    except BusinessError as error:
        problems = error.problems
    except PaymentProviderError:
        problems = [PROVIDER_DOWN]
    return make(user_errors=[UserError.from_problem(p) for p in problems])


def forbidden() -> list[UserError]:
    return [UserError(code=ErrorCode.FORBIDDEN, message="Staff only")]


def refuse_bad_token(execution: ExecutionContext) -> None:
    """A request that carries a bad bearer token (malformed, forged, expired) is refused whole,
    public fields included: served as anonymous, a client would never learn that its token
    went bad, and a shopper's app would show an empty cart instead of asking to sign in.
    (Before each operation: `schema.OperationRules`.)"""
    problem = getattr(execution.context, "auth_error", None)
    if problem is not None:
        raise graphql_error(ErrorCode.UNAUTHENTICATED, problem)
