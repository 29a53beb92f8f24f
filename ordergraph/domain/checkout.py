"""Checkout: the cart becomes an order before payment, then Stripe is asked to take the money.

The order, its lines, the stock it holds and the emptied cart commit together or not at all.
Stripe is called only after that commit (a slow Stripe must not hold row locks); if the call
fails the order is cancelled, its stock released and its lines put back in the cart, again in
one transaction, so a failed checkout leaves everything as it was.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.expressions import F

from ordergraph import events, logs, metrics
from ordergraph.db import get_connection, is_postgres, transaction
from ordergraph.db.sql import fetch
from ordergraph.domain.cart import TAKE_CART, take_cart
from ordergraph.domain.catalog import MAX_AMOUNT
from ordergraph.domain.errors import BusinessError, ErrorCode, Problem
from ordergraph.domain.inventory import reserve_stock
from ordergraph.domain.order_state import change_order, lock_order
from ordergraph.domain.shipping import (
    Offer,
    checkout_offer,
    offer_from,
    offer_query,
    offered_options,
)
from ordergraph.models import (
    CartItem,
    Order,
    OrderItem,
    OrderStatus,
    OrderStatusChange,
    PaymentStatus,
    Product,
)
from ordergraph.outgoing_webhooks.events import (
    ORDER_CREATED,
    event_cte,
    line_payload,
    prepare_order_event,
    write_event,
)
from ordergraph.settings import Settings
from ordergraph.stripe_gateway import PaymentProviderError, StripeGateway
from ordergraph.stripe_objects import CheckoutSessionRequest, SessionLine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckoutResult:
    order: Order
    client_secret: str


def return_url(settings: Settings, order_id: str) -> str:
    return f"{settings.frontend_url}/order-success/{order_id}?session_id={{CHECKOUT_SESSION_ID}}"


def checkout_ttl(settings: Settings) -> timedelta:
    """How long the order holds its stock and its session stays payable.

    Stripe measures its 30-minute minimum and 24-hour maximum from its own clock when the
    session is created, a moment after the order; one minute of margin keeps both ends valid.
    """
    return timedelta(minutes=min(max(settings.checkout_ttl_minutes, 31), 1439))


def _limit(message: str) -> BusinessError:
    return BusinessError.of(ErrorCode.LIMIT_EXCEEDED, message, field=("cart",))


# The shopper's units waiting for payment, and their orders placed since a moment.
_UNPAID_UNITS = (
    "SELECT COALESCE(SUM(i.quantity), 0) FROM order_items i "
    "JOIN orders o ON o.id = i.order_id WHERE o.user_id = ? AND o.status = ?"
)
_RECENT = "SELECT count(*) FROM orders WHERE user_id = ? AND created_at >= ?"


@dataclass(frozen=True, slots=True)
class _Counts:
    """The shopper's counts that limit a checkout: an order enters PENDING_PAYMENT, or is
    placed, only by a checkout holding the shopper's lock (`take_cart`), so counts read after
    that lock is taken stay true until the commit."""

    recent: int  # orders placed in the last minute (0 when the rate is not limited)
    unpaid_units: int | None  # units of their PENDING_PAYMENT orders; None: not read yet


def _counts_sql(user_id: str, settings: Settings, *, unpaid: bool) -> tuple[str, list[Any]]:
    """Columns (", (...) AS units, (...) AS recent") for a caller's statement, and their values."""
    columns, values = "", list[Any]()
    if unpaid:
        columns += f", ({_UNPAID_UNITS}) AS units"
        values += [user_id, OrderStatus.PENDING_PAYMENT.value]
    if settings.checkout_rate_per_minute > 0:
        columns += f", ({_RECENT}) AS recent"
        values += [user_id, datetime.now(UTC) - timedelta(minutes=1)]
    return columns, values


def _counts_from(row: dict[str, Any]) -> _Counts:
    units = row.get("units")
    return _Counts(int(row.get("recent") or 0), None if units is None else int(units))


async def _take_cart(
    connection: BaseDBAsyncClient, user_id: str, settings: Settings
) -> tuple[list[tuple[Any, int]], _Counts, Offer | None]:
    """The shopper's lock, their cart, what limits them and, on PostgreSQL, the shop's offer.

    SQLite reads the counts after the lock. PostgreSQL reads the lock, the cart, the offer and
    the recent orders in one statement whose snapshot is taken before the lock's wait: its count
    of recent orders can only be short of the truth (orders are never unplaced), so a refusal
    on it stands; the exact counts come with the order's own statement (`_record_order`)."""
    if not is_postgres(connection):
        cart = [(r["product_id"], r["quantity"]) for r in await take_cart(connection, user_id)]
        unpaid = (user_id, OrderStatus.PENDING_PAYMENT.value)
        rows = await fetch(connection, f"SELECT ({_UNPAID_UNITS}) AS units", *unpaid)
        recent = 0
        if settings.checkout_rate_per_minute > 0:
            since = datetime.now(UTC) - timedelta(minutes=1)
            recent = await Order.filter(user_id=user_id, created_at__gte=since).count()
        return cart, _Counts(recent, int(rows[0]["units"])), None
    columns, values = _counts_sql(user_id, settings, unpaid=False)
    columns += ", ARRAY(SELECT ROW(t.product_id, t.quantity) FROM taken t) AS og_cart"
    query = f"WITH {TAKE_CART} {offer_query(columns)}"
    rows = await fetch(connection, query, user_id, user_id, *values)
    return list(rows[0]["og_cart"]), _counts_from(rows[0]), offer_from(rows)


def _check_rate(counts: _Counts, settings: Settings) -> None:
    """A few checkouts a minute per shopper, so that a script cannot hold the whole stock in
    unpaid orders; 0 disables."""
    limit = settings.checkout_rate_per_minute
    if 0 < limit <= counts.recent:
        raise BusinessError.of(
            ErrorCode.RATE_LIMITED, f"At most {limit} checkouts a minute; try again shortly"
        )


def _check_cart(quantities: dict[str, int], settings: Settings) -> None:
    """The cart's limits once more (a cart filled before they existed, or lines an undone
    checkout put back)."""
    if len(quantities) > settings.cart_max_lines:
        raise _limit(f"At most {settings.cart_max_lines} different products in a cart")
    if max(quantities.values()) > settings.max_units_per_line:
        raise _limit(f"At most {settings.max_units_per_line} units of one product in a cart")


def _check_unpaid(counts: _Counts, quantities: dict[str, int], settings: Settings) -> None:
    """The units of the shopper's PENDING_PAYMENT orders plus this cart's may be at most
    MAX_UNPAID_UNITS_PER_SHOPPER."""
    held, units = counts.unpaid_units or 0, sum(quantities.values())
    limit = settings.max_unpaid_units_per_shopper
    if held + units > limit:
        raise _limit(
            f"At most {limit} units may wait for payment at once: {held} already do and this "
            f"cart has {units}; pay or cancel an order first"
        )


async def place_order(
    user_id: str, settings: Settings, *, email: str | None = None
) -> tuple[Order, list[OrderItem]]:
    """Turn the cart into a PENDING_PAYMENT order holding its stock, in one transaction.

    The shopper's lock comes first (`take_cart`): their checkouts and cart changes
    run one at a time, so the unpaid-units limit holds however many arrive together. A
    refusal raises inside the transaction, whose rollback puts the cart back untouched, and
    the stock and the order too when the exact counts come with the order (PostgreSQL).
    """
    async with transaction() as connection:
        cart, counts, shop_offer = await _take_cart(connection, user_id, settings)
        _check_rate(counts, settings)
        if not cart:
            raise BusinessError.of(ErrorCode.CART_EMPTY, "Your cart is empty")
        quantities = {str(product_id): quantity for product_id, quantity in cart}
        bad = [pid for pid, qty in quantities.items() if qty < 1]
        if bad:
            raise BusinessError(
                *(
                    Problem(ErrorCode.INVALID_INPUT, "Quantity must be positive", product_id=p)
                    for p in bad
                )
            )
        _check_cart(quantities, settings)
        if counts.unpaid_units is not None:
            _check_unpaid(counts, quantities, settings)
        products = await reserve_stock(quantities.items())
        total = sum(products[pid].price * qty for pid, qty in quantities.items())
        if total > MAX_AMOUNT:
            raise _limit(
                f"The order's total would be {total} minor units; at most {MAX_AMOUNT} can be "
                "paid in one order"
            )
        now = datetime.now(UTC)
        offer = await checkout_offer(total, settings, shop_offer)
        tax_codes: dict[str, str | None] = {}
        if offer["automatic_tax"]:
            rows = await Product.filter(id__in=list(quantities)).values_list("id", "tax_code")
            tax_codes = {str(pid): code for pid, code in rows}
        order = Order(
            user_id=user_id,
            status=OrderStatus.PENDING_PAYMENT,
            payment_status=PaymentStatus.PENDING,
            currency=settings.shop_currency,
            subtotal=total,
            total=total,
            email=email or None,
            expires_at=now + checkout_ttl(settings),
            checkout_options=offer,
        )
        items = [
            OrderItem(
                order_id=order.id,
                product_id=pid,
                product_name=products[pid].name,
                unit_price=products[pid].price,
                quantity=qty,
                tax_code=tax_codes.get(pid),
            )
            for pid, qty in quantities.items()
        ]
        # On PostgreSQL the exact counts come with the order's own statement (one round trip
        # fewer); a refusal then rolls the order back with the rest.
        pending = counts.unpaid_units is None
        exact = await _record_order(
            connection,
            order,
            items,
            actor=f"user:{user_id}",
            counts=_counts_sql(user_id, settings, unpaid=True) if pending else None,
        )
        if exact is not None:
            _check_rate(exact, settings)
            _check_unpaid(exact, quantities, settings)
    return order, items


# The order, its lines, the first row of its history, its event (if any) and its announcement
# (when PostgreSQL carries them) in one round trip. The foreign keys of the lines and the
# history are checked at the end of the statement, when the order's row is there.
_ORDER_LINES_AND_FIRST_CHANGE = """
WITH placed AS (
    INSERT INTO orders ({columns}) VALUES ({values})
), lines AS (
    INSERT INTO order_items (order_id, product_id, product_name, unit_price, quantity, tax_code)
    SELECT ?, * FROM unnest(?::uuid[], ?::text[], ?::bigint[], ?::int[], ?::text[])
){event}
INSERT INTO order_status_changes (order_id, status, payment_status, reason, actor, at)
VALUES (?, ?, ?, 'checkout', ?, now()) RETURNING {returning}
"""


async def _record_order(
    connection: BaseDBAsyncClient,
    order: Order,
    items: list[OrderItem],
    *,
    actor: str,
    counts: tuple[str, list[Any]] | None = None,
) -> _Counts | None:
    """Write the new `order`, its lines, the first row of its history, the `order.created`
    event and the announcement of a new order, for staff following the whole shop
    (orderChanges). On PostgreSQL the statement also reads `counts` (`_counts_sql`'s columns)
    as of its start, which does not see this order."""
    hint = events.OrderEvent(str(order.id), order.version)
    lines = [line_payload(i.product_id, i.product_name, i.unit_price, i.quantity, 0) for i in items]
    if not is_postgres(connection):
        await order.save(force_create=True)
        event = await prepare_order_event(order, ORDER_CREATED, lines=lines)
        await OrderItem.bulk_create(items)
        await OrderStatusChange.create(
            order_id=order.id,
            status=order.status,
            payment_status=order.payment_status,
            reason="checkout",
            actor=actor,
        )
        if event is not None:
            await write_event(event)
        await events.announce(hint)
        return None
    meta = Order._meta
    names = sorted(meta.fields_db_projection)
    # As stored (this sets the order's times, as saving it would), before the event reads them.
    params: list[Any] = [
        meta.fields_map[name].to_db_value(getattr(order, name), order) for name in names
    ]
    event = await prepare_order_event(order, ORDER_CREATED, lines=lines)
    params += [
        order.id,
        [uuid.UUID(str(i.product_id)) for i in items],
        [i.product_name for i in items],
        [i.unit_price for i in items],
        [i.quantity for i in items],
        [i.tax_code for i in items],
    ]
    cte, event_params = event_cte(event)
    params += [*event_params, order.id, order.status.value, order.payment_status.value, actor]
    announce = events.announcement_sql(hint)
    returning = ["1 AS one"]
    if announce is None:
        await events.announce(hint)
    else:
        returning.append(announce[0])
        params += announce[1]
    if counts is not None:
        returning.append(counts[0].lstrip(", "))
        params += counts[1]
    query = _ORDER_LINES_AND_FIRST_CHANGE.format(
        columns=", ".join(f'"{meta.fields_db_projection[name]}"' for name in names),
        values=", ".join("?" * len(names)),
        event=cte,
        returning=", ".join(returning),
    )
    rows = await fetch(connection, query, *params)
    order._saved_in_db = True
    return None if counts is None else _counts_from(rows[0])


async def undo_checkout(order_id: str, reason: str) -> None:
    """Cancel an order whose payment could not be started and put its lines back in the cart."""
    async with transaction():
        order = await lock_order(order_id)
        if order is None or order.status != OrderStatus.PENDING_PAYMENT:
            return
        await change_order(
            order,
            status=OrderStatus.CANCELLED,
            payment_status=PaymentStatus.FAILED,
            reason=reason,
            actor="system",
        )
        for item in await OrderItem.filter(order_id=order_id):
            restored = await CartItem.filter(
                user_id=order.user_id, product_id=item.product_id
            ).update(quantity=F("quantity") + item.quantity)
            if not restored:
                await CartItem.create(
                    user_id=order.user_id, product_id=item.product_id, quantity=item.quantity
                )


def session_request(
    order: Order, items: list[OrderItem], settings: Settings
) -> CheckoutSessionRequest:
    """The Checkout Session an order asks Stripe for, built from the order alone, so that the
    sweeper can send the very same request again (same idempotency key, same parameters) to
    learn what became of a checkout that a crash cut short. What varies with the shop (its
    shipping rates, whether a promotion code is active, AUTOMATIC_TAX, a product's tax code) is
    read from what the checkout stored on the order (`checkout_options`, `OrderItem.tax_code`),
    never from the shop as it is now."""
    assert order.expires_at is not None
    offer = order.checkout_options or {}
    automatic_tax = bool(offer.get("automatic_tax"))
    return CheckoutSessionRequest(
        order_id=str(order.id),
        user_id=order.user_id,
        currency=order.currency,
        lines=[
            SessionLine(
                i.product_name, i.unit_price, i.quantity, i.tax_code if automatic_tax else None
            )
            for i in items
        ],
        return_url=return_url(settings, str(order.id)),
        expires_at=order.expires_at,
        customer_email=order.email or None,
        shipping_options=offered_options(offer),
        allow_promotion_codes=bool(offer.get("allow_promotion_codes")),
        automatic_tax=automatic_tax,
    )


async def checkout(
    user_id: str, email: str | None, settings: Settings, gateway: StripeGateway
) -> CheckoutResult:
    """Place the order and open its Stripe session; every attempt is counted by outcome."""
    try:
        result = await _checkout(user_id, email, settings, gateway)
    except BusinessError as exc:
        metrics.CHECKOUTS.labels(exc.code.value.lower()).inc()
        raise
    except PaymentProviderError:
        metrics.CHECKOUTS.labels(ErrorCode.PAYMENT_PROVIDER_ERROR.value.lower()).inc()
        raise
    except BaseException:
        metrics.CHECKOUTS.labels("error").inc()
        raise
    metrics.CHECKOUTS.labels("created").inc()
    return result


_SESSION_ID = "UPDATE orders SET stripe_checkout_session_id = ? WHERE id = ?"


async def _checkout(
    user_id: str, email: str | None, settings: Settings, gateway: StripeGateway
) -> CheckoutResult:
    order, items = await place_order(user_id, settings, email=email)
    logs.bind_order(str(order.id))
    request = session_request(order, items, settings)
    try:
        session = await gateway.create_checkout_session(request)
        if not session.client_secret:
            raise PaymentProviderError("Stripe returned a session without a client secret")
    except PaymentProviderError as exc:
        log.warning("checkout of order %s undone: %s", order.id, exc)
        await undo_checkout(str(order.id), f"payment provider error: {exc}")
        if exc.uncertain:
            gateway.expire_late_session(request)
        raise
    # Fixed text: the ORM's UPDATE cost a tenth of a checkout's CPU to build.
    await fetch(get_connection(), _SESSION_ID, session.id, order.id)
    order.stripe_checkout_session_id = session.id
    return CheckoutResult(order=order, client_secret=session.client_secret)
