"""What limits a shopper's checkout: a few a minute, so many units waiting for payment, the
cart's own limits. The counts are true only when read after the shopper's lock (`cart.
take_cart`): an order enters PENDING_PAYMENT, or is placed, only by a checkout holding it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient

from ordergraph.db.sql import fetch
from ordergraph.domain.errors import BusinessError, ErrorCode
from ordergraph.models import Order, OrderStatus
from ordergraph.settings import Settings


def limit_exceeded(message: str) -> BusinessError:
    return BusinessError.of(ErrorCode.LIMIT_EXCEEDED, message, field=("cart",))


# The shopper's units waiting for payment, and their orders placed since a moment.
_UNPAID_UNITS = (
    "SELECT COALESCE(SUM(i.quantity), 0) FROM order_items i "
    "JOIN orders o ON o.id = i.order_id WHERE o.user_id = ? AND o.status = ?"
)
_RECENT = "SELECT count(*) FROM orders WHERE user_id = ? AND created_at >= ?"


@dataclass(frozen=True, slots=True)
class Counts:
    """The shopper's counts that limit a checkout."""

    recent: int  # orders placed in the last minute (0 when the rate is not limited)
    unpaid_units: int | None  # units of their PENDING_PAYMENT orders; None: not read yet


def counts_sql(user_id: str, settings: Settings, *, unpaid: bool) -> tuple[str, list[Any]]:
    """Columns (", (...) AS units, (...) AS recent") for a caller's statement, and their values."""
    columns, values = "", list[Any]()
    if unpaid:
        columns += f", ({_UNPAID_UNITS}) AS units"
        values += [user_id, OrderStatus.PENDING_PAYMENT.value]
    if settings.checkout_rate_per_minute > 0:
        columns += f", ({_RECENT}) AS recent"
        values += [user_id, datetime.now(UTC) - timedelta(minutes=1)]
    return columns, values


def counts_from(row: dict[str, Any]) -> Counts:
    units = row.get("units")
    return Counts(int(row.get("recent") or 0), None if units is None else int(units))


def check_rate(counts: Counts, settings: Settings) -> None:
    """A few checkouts a minute per shopper, so that a script cannot hold the whole stock in
    unpaid orders; 0 disables."""
    limit = settings.checkout_rate_per_minute
    if 0 < limit <= counts.recent:
        raise BusinessError.of(
            ErrorCode.RATE_LIMITED, f"At most {limit} checkouts a minute; try again shortly"
        )


def check_cart(quantities: dict[str, int], settings: Settings) -> None:
    """The cart's limits once more (a cart filled before they existed, or lines an undone
    checkout put back)."""
    if len(quantities) > settings.cart_max_lines:
        raise limit_exceeded(f"At most {settings.cart_max_lines} different products in a cart")
    if max(quantities.values()) > settings.max_units_per_line:
        raise limit_exceeded(
            f"At most {settings.max_units_per_line} units of one product in a cart"
        )


def check_unpaid(counts: Counts, quantities: dict[str, int], settings: Settings) -> None:
    """The units of the shopper's PENDING_PAYMENT orders plus this cart's may be at most
    MAX_UNPAID_UNITS_PER_SHOPPER."""
    held, units = counts.unpaid_units or 0, sum(quantities.values())
    limit = settings.max_unpaid_units_per_shopper
    if held + units > limit:
        raise limit_exceeded(
            f"At most {limit} units may wait for payment at once: {held} already do and this "
            f"cart has {units}; pay or cancel an order first"
        )


async def read_counts(connection: BaseDBAsyncClient, user_id: str, settings: Settings) -> Counts:
    """The counts, in statements of their own (SQLite's checkout, after the lock)."""
    unpaid = (user_id, OrderStatus.PENDING_PAYMENT.value)
    rows = await fetch(connection, f"SELECT ({_UNPAID_UNITS}) AS units", *unpaid)
    recent = 0
    if settings.checkout_rate_per_minute > 0:
        since = datetime.now(UTC) - timedelta(minutes=1)
        recent = await Order.filter(user_id=user_id, created_at__gte=since).count()
    return Counts(recent, int(rows[0]["units"]))
