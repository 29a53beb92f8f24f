"""What ordergraph writes to people, and to whom.

Each mail is queued in the outbox by `outbox.enqueue_email` inside the transaction of the change
it reports, with a dedupe key that makes "one mail per event" a database fact.
"""

from __future__ import annotations

import html
import logging
from datetime import UTC
from typing import Any
from urllib.parse import quote

from ordergraph.auth import issue_order_token
from ordergraph.db.sql import Rider
from ordergraph.mail import outbox
from ordergraph.mail.outbox import Composed
from ordergraph.models import Order, OrderItem, OrderReturn, User
from ordergraph.settings import Settings

log = logging.getLogger(__name__)

# (FRONTEND_URL, JWT_SECRET) of this process, for the order links in shoppers' mails; set by
# `configure` where the process builds its services (app.py's lifespan, cli.py's commands).
_links: tuple[str, str] | None = None


def configure(settings: Settings) -> None:
    global _links
    _links = (settings.frontend_url, settings.jwt_secret)


def order_link(order: Order) -> str | None:
    """`{FRONTEND_URL}/order-success/{id}?access=<token>`: opens the order without signing in."""
    if _links is None:
        return None
    frontend_url, secret = _links
    token = issue_order_token(secret, str(order.id))
    return f"{frontend_url}/order-success/{order.id}?access={quote(token)}"


def with_order_link(order: Order, composed: Composed) -> Composed:
    """The mail with a last paragraph that links to the order."""
    link = order_link(order)
    if link is None:
        log.warning("no order link in %r: mail links are not configured", composed.subject)
        return composed
    anchor = f'<p>See your order: <a href="{html.escape(link)}">{html.escape(link)}</a></p>'
    return Composed(
        composed.subject,
        f"{composed.text}\n\nSee your order: {link}",
        composed.html.replace("</body></html>", anchor + "</body></html>"),
    )


def money(amount: int, currency: str) -> str:
    return f"{amount / 100:,.2f} {currency}"


def _address_lines(address: dict[str, str | None] | None) -> list[str]:
    if not address:
        return []
    city_line = " ".join(part for part in (address.get("postal_code"), address.get("city")) if part)
    parts = [
        address.get("name"),
        address.get("line1"),
        address.get("line2"),
        city_line,
        address.get("state"),
        address.get("country"),
    ]
    return [p for p in parts if p]


def _compose(
    subject: str, paragraphs: list[str], table: list[tuple[str, str]] | None = None
) -> Composed:
    """One mail in both parts: plain text, and the same words as simple HTML.

    The table, when there is one, follows the first paragraph.
    """
    first, rest = paragraphs[:1], paragraphs[1:]
    rows = table or []
    text_table = ["\n".join(f"{left}: {right}" for left, right in rows)] if rows else []
    text = "\n\n".join([*first, *text_table, *rest])

    def para(p: str) -> str:
        return "<p>" + html.escape(p).replace("\n", "<br>") + "</p>"

    html_table = (
        "<table>"
        + "".join(
            f"<tr><td>{html.escape(left)}</td><td>{html.escape(right)}</td></tr>"
            for left, right in rows
        )
        + "</table>"
        if rows
        else ""
    )
    html_body = (
        "<html><body>"
        + "".join(map(para, first))
        + html_table
        + "".join(map(para, rest))
        + "</body></html>"
    )
    return Composed(subject, text, html_body)


def _short(order: Order) -> str:
    return str(order.id)[:8]


def _money_rows(order: Order) -> list[tuple[str, str]]:
    """Subtotal, discount (with its code), shipping (with its method), tax: those not zero."""
    code = f" ({order.promotion_code})" if order.promotion_code else ""
    method = (order.shipping_method or {}).get("name")
    rows = [
        ("Subtotal", order.subtotal),
        (f"Discount{code}", -order.discount),
        (f"Shipping ({method})" if method else "Shipping", order.shipping_cost),
        ("Tax", order.tax),
    ]
    if all(amount == 0 for _, amount in rows[1:]):
        return []  # the lines are the whole story
    return [(label, money(amount, order.currency)) for label, amount in rows if amount]


def compose_receipt(order: Order, items: list[OrderItem]) -> Composed:
    table = [
        (
            f"{item.quantity} x {item.product_name}",
            money(item.unit_price * item.quantity, order.currency),
        )
        for item in items
    ]
    table += _money_rows(order)
    table.append(("Total paid", money(order.total, order.currency)))
    address = "\n".join(["Shipping to:", *_address_lines(order.shipping_address)])
    return _compose(
        f"Your receipt for order {_short(order)}",
        [f"Thank you for your order.\nOrder: {order.id}", address],
        table,
    )


def compose_awaiting_shipment(order: Order) -> Composed:
    return _compose(
        f"Order {_short(order)} is being packed",
        [f"Your order {order.id} is being prepared for shipment."],
    )


def compose_shipped(order: Order) -> Composed:
    carrier = f" with {order.carrier}" if order.carrier else ""
    return _compose(
        f"Order {_short(order)} has shipped",
        [
            f"Your order {order.id} has shipped{carrier}.",
            f"Tracking number: {order.tracking_number}",
        ],
    )


def compose_delivered(order: Order) -> Composed:
    return _compose(
        f"Order {_short(order)} was delivered",
        [f"Your order {order.id} was delivered. Enjoy!"],
    )


def compose_payment_failed(order: Order) -> Composed:
    return _compose(
        f"Payment for order {_short(order)} failed",
        [
            f"The payment for your order {order.id} did not go through, so the order was "
            "cancelled and nothing was charged. You are welcome to order again."
        ],
    )


def compose_refund(order: Order, amount: int, reason: str) -> Composed:
    return _compose(
        f"Refund for order {_short(order)}",
        [
            f"We have refunded {money(amount, order.currency)} for your order {order.id}.",
            reason,
            "The money usually reaches your account within 5 to 10 business days.",
        ],
    )


def _return_rows(lines: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(str(line["product_name"]), f"{line['quantity']} unit(s)") for line in lines]


def compose_withdrawal_confirmed(order: Order, order_return: OrderReturn) -> Composed:
    """The acknowledgement on a durable medium that the EU asks for: what, and exactly when."""
    at = order_return.confirmed_at
    stamp = at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if at else "now"
    return _compose(
        f"Withdrawal confirmed for order {_short(order)}",
        [
            f"We received your withdrawal from order {order.id} on {stamp} "
            f"(reference {order_return.id}). It covers:",
            "If the goods have not left us yet, we refund them now. If you have them, please "
            "send them back; we refund them when they arrive.",
        ],
        _return_rows(order_return.lines),
    )


def compose_return_rejected(order: Order, order_return: OrderReturn) -> Composed:
    return _compose(
        f"Your return for order {_short(order)} was declined",
        [
            f"We could not accept the return {order_return.id} of order {order.id}:",
            order_return.rejection_reason or "",
            "Reply to this mail if you have questions.",
        ],
        _return_rows(order_return.lines),
    )


def compose_dispute(order: Order, dispute_id: str, amount: int | None) -> Composed:
    shown = money(amount, order.currency) if amount is not None else "the payment"
    return _compose(
        f"Dispute opened on order {_short(order)}",
        [
            f"The shopper's bank opened dispute {dispute_id} over {shown} for order {order.id}.",
            "Respond with evidence in the Stripe dashboard before the deadline.",
        ],
    )


async def _shopper_address(order: Order, composed: Composed) -> str | None:
    """The order's email (known at checkout, else the one Stripe collected), else the one
    they paid with, else their account's address."""
    recipient = order.email or order.customer_email
    if not recipient:
        user = await User.get_or_none(id=order.user_id)
        recipient = user.email if user is not None else None
    if not recipient:
        log.warning("order %s has no email address for %r", order.id, composed.subject)
    return recipient


async def email_shopper(order: Order, *, dedupe_key: str, composed: Composed) -> None:
    """Queue a mail to the order's shopper (`_shopper_address`), with the order's link."""
    recipient = await _shopper_address(order, composed)
    if recipient:
        await outbox.enqueue_email(
            dedupe_key=dedupe_key,
            recipient=recipient,
            composed=with_order_link(order, composed),
            order=order,
        )


async def shopper_mail_rider(order: Order, *, dedupe_key: str, composed: Composed) -> list[Rider]:
    """`email_shopper` as a rider of a change of `order` (`order` as the change leaves it):
    none when the shopper has no address."""
    recipient = await _shopper_address(order, composed)
    if not recipient:
        return []
    composed = with_order_link(order, composed)
    return [
        outbox.email_rider(
            dedupe_key=dedupe_key, recipient=recipient, composed=composed, order=order
        )
    ]


async def email_staff(
    settings: Settings, order: Order, *, dedupe_key: str, composed: Composed
) -> None:
    await outbox.enqueue_email(
        dedupe_key=dedupe_key, recipient=settings.staff_email, composed=composed, order=order
    )
