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
from ordergraph.domain.checkout_limits import (
    Counts,
    check_cart,
    check_rate,
    check_unpaid,
    counts_from,
    counts_sql,
    limit_exceeded,
    read_counts,
)
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


@dataclass(frozen=True, slots=True)
class _Line:
    """A line of the cart taken, with its product as the taking statement saw it."""

    product_id: str
    quantity: int
    name: str
    price: int
    tax_code: str | None


# The cart's lines with their products, from `cart.TAKE_CART`'s `taken`, in the order they
# were put in the cart.
_LINES_TAKEN = (
    "ARRAY(SELECT ROW(t.product_id, t.quantity, p.name, p.price, p.tax_code)"
    " FROM taken t JOIN products p ON p.id = t.product_id ORDER BY t.id) AS og_cart"
)


async def _take_cart(
    connection: BaseDBAsyncClient, user_id: str, settings: Settings
) -> tuple[list[_Line], Counts, Offer | None]:
    """The shopper's lock, their cart with its products, what limits them and, on PostgreSQL,
    the shop's offer.

    SQLite reads the counts after the lock. PostgreSQL reads the lock, the cart, the offer and
    the recent orders in one statement whose snapshot is taken before the lock's wait: its count
    of recent orders can only be short of the truth (orders are never unplaced), so a refusal
    on it stands; the exact counts come with the order's own statement (`_record_order`)."""
    if not is_postgres(connection):
        taken = sorted(await take_cart(connection, user_id), key=lambda row: row["id"])
        products = {
            str(p): (name, price, tax)
            for p, name, price, tax in await Product.filter(
                id__in=[row["product_id"] for row in taken]
            ).values_list("id", "name", "price", "tax_code")
        }
        cart = [
            _Line(str(r["product_id"]), r["quantity"], *products[str(r["product_id"])])
            for r in taken
        ]
        return cart, await read_counts(connection, user_id, settings), None
    columns, values = counts_sql(user_id, settings, unpaid=False)
    query = f"WITH {TAKE_CART} {offer_query(f'{columns}, {_LINES_TAKEN}')}"
    rows = await fetch(connection, query, user_id, user_id, *values)
    cart = [_Line(str(line[0]), *line[1:]) for line in rows[0]["og_cart"]]
    return cart, counts_from(rows[0]), offer_from(rows)


async def place_order(
    user_id: str, settings: Settings, *, email: str | None = None
) -> tuple[Order, list[OrderItem]]:
    """Turn the cart into a PENDING_PAYMENT order holding its stock, in one transaction.

    The shopper's lock comes first (`take_cart`): their checkouts and cart changes run one at a
    time, so the unpaid-units limit holds however many arrive together. The order is priced as
    the statement that took the cart saw its products. The stock is reserved last, right
    before the commit: a product's row stays locked from its reservation to the commit, and a
    popular product's checkouts queue on it. A refusal raises inside the transaction, whose
    rollback puts everything back: the cart, and the order and the stock when it comes after
    them (a short line, or the exact counts that come with the order on PostgreSQL).
    """
    async with transaction() as connection:
        cart, counts, shop_offer = await _take_cart(connection, user_id, settings)
        check_rate(counts, settings)
        if not cart:
            raise BusinessError.of(ErrorCode.CART_EMPTY, "Your cart is empty")
        quantities = {line.product_id: line.quantity for line in cart}
        bad = [pid for pid, qty in quantities.items() if qty < 1]
        if bad:
            raise BusinessError(
                *(
                    Problem(ErrorCode.INVALID_INPUT, "Quantity must be positive", product_id=p)
                    for p in bad
                )
            )
        check_cart(quantities, settings)
        if counts.unpaid_units is not None:
            check_unpaid(counts, quantities, settings)
        total = sum(line.price * line.quantity for line in cart)
        if total > MAX_AMOUNT:
            raise limit_exceeded(
                f"The order's total would be {total} minor units; at most {MAX_AMOUNT} can be "
                "paid in one order"
            )
        offer = await checkout_offer(total, settings, shop_offer)
        order = Order(
            user_id=user_id,
            status=OrderStatus.PENDING_PAYMENT,
            payment_status=PaymentStatus.PENDING,
            currency=settings.shop_currency,
            subtotal=total,
            total=total,
            email=email or None,
            expires_at=datetime.now(UTC) + checkout_ttl(settings),
            checkout_options=offer,
        )
        automatic_tax = offer["automatic_tax"]
        items = [
            OrderItem(
                order_id=order.id,
                product_id=line.product_id,
                product_name=line.name,
                unit_price=line.price,
                quantity=line.quantity,
                tax_code=line.tax_code if automatic_tax else None,
            )
            for line in cart
        ]
        # On PostgreSQL the exact counts come with the order's own statement (one round trip
        # fewer); a refusal then rolls the order back with the rest.
        pending = counts.unpaid_units is None
        exact = await _record_order(
            connection,
            order,
            items,
            actor=f"user:{user_id}",
            counts=counts_sql(user_id, settings, unpaid=True) if pending else None,
        )
        if exact is not None:
            check_rate(exact, settings)
            check_unpaid(exact, quantities, settings)
        await reserve_stock(quantities.items())
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
) -> Counts | None:
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
    return None if counts is None else counts_from(rows[0])


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
