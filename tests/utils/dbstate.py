"""What the refusal and fuzz tests compare: the whole stored state of the shop, and the
constraints that must hold whatever a client sent."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ordergraph.models import (
    CartItem,
    GuestSession,
    Order,
    OrderItem,
    OrderNote,
    OrderRefund,
    OrderReturn,
    OrderStatusChange,
    OutboxEmail,
    OutboxStatus,
    PaymentDiscrepancy,
    PaymentTracker,
    ProcessedStripeEvent,
    Product,
    PromotionCode,
    ShippingRate,
    StockMovement,
    User,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from ordergraph.outgoing_webhooks.endpoints import MAX_ENDPOINTS
from ordergraph.stripe_emulator import StripeEmulator


async def snapshot(emulator: StripeEmulator | None = None) -> dict[str, Any]:
    """Every row a request could change (users apart: see `user_ids`), in a comparable form,
    plus the number of calls the service made to Stripe."""
    state: dict[str, Any] = {
        "orders": sorted(
            (
                str(o.id),
                o.user_id,
                o.status.value,
                o.payment_status.value,
                o.version,
                o.total,
                o.amount_refunded,
                o.is_locked,
                str(o.paid_at),
                o.carrier,
                o.tracking_number,
                o.stripe_checkout_session_id,
                o.stripe_payment_intent_id,
                str(o.shipping_address),
                str(o.delivered_at),
            )
            for o in await Order.all()
        ),
        "order_items": sorted(
            (
                str(i.order_id),
                str(i.product_id),
                i.quantity,
                i.unit_price,
                i.quantity_refunded,
                i.quantity_restocked,
                i.quantity_returning,
            )
            for i in await OrderItem.all()
        ),
        "history": sorted(
            (str(c.order_id), c.id, c.status.value, c.payment_status.value, c.reason or "")
            for c in await OrderStatusChange.all()
        ),
        "products": sorted(
            (p.sku, str(p.id), p.name, p.description, p.price, p.stock, p.active, p.tax_code)
            for p in await Product.all()
        ),
        "refunds": sorted(
            (r.request_key, str(r.order_id), r.amount, r.stripe_refund_id)
            for r in await OrderRefund.all()
        ),
        "returns": sorted(
            (
                str(r.id),
                r.status.value,
                str(r.lines),
                r.rejection_reason or "",
                r.refunded_amount,
                str(r.confirmed_at),
                str(r.received_at),
            )
            for r in await OrderReturn.all()
        ),
        "notes": sorted((str(n.order_id), n.body, n.author) for n in await OrderNote.all()),
        "stock_movements": sorted(
            (str(m.product_id), m.delta, m.stock_after, m.reason, m.actor)
            for m in await StockMovement.all()
        ),
        "carts": sorted((c.user_id, str(c.product_id), c.quantity) for c in await CartItem.all()),
        "trackers": sorted(
            (t.session_id, str(t.order_id), t.amount, t.status) for t in await PaymentTracker.all()
        ),
        "stripe_events": sorted(e.event_id for e in await ProcessedStripeEvent.all()),
        "outbox": sorted(e.dedupe_key for e in await OutboxEmail.all()),
        "guest_sessions": sorted(
            (g.client_address, g.user_id, g.email) for g in await GuestSession.all()
        ),
        "shipping_rates": sorted(
            (
                r.id,
                r.name,
                r.amount,
                r.free_from,
                r.min_delivery_days,
                r.max_delivery_days,
                r.active,
            )
            for r in await ShippingRate.all()
        ),
        "promotion_codes": sorted(
            (c.code, c.active, c.stripe_promotion_code_id) for c in await PromotionCode.all()
        ),
        "discrepancies": sorted(d.dedupe_key for d in await PaymentDiscrepancy.all()),
        # Live mail changes state as the sender works; a dead one only when someone acts.
        "dead_mail": sorted(
            (e.dedupe_key, e.attempts) for e in await OutboxEmail.filter(status=OutboxStatus.DEAD)
        ),
        # Whether an endpoint has a secret, never the secret itself (nor a hash of it).
        "webhook_endpoints": sorted(
            (
                str(e.id),
                e.slot,
                e.url,
                str(e.events),
                e.active,
                e.created_by,
                str(e.created_at),
                bool(e.secret),
            )
            for e in await WebhookEndpoint.all()
        ),
        "webhook_events": sorted(
            (str(e.id), e.type, str(e.order_id), e.body, str(e.created_at))
            for e in await WebhookEvent.all()
        ),
        # All but the sender's lease (`claim`, `claimed_until`): no request takes one.
        "webhook_deliveries": sorted(
            (
                d.id,
                str(d.endpoint_id),
                str(d.event_id),
                str(d.order_id),
                d.event_type,
                d.status.value,
                d.attempts,
                str(d.next_attempt_at),
                str(d.retry_until),
                d.response_status,
                d.last_error or "",
                str(d.created_at),
                str(d.delivered_at),
            )
            for d in await WebhookDelivery.all()
        ),
    }
    if emulator is not None:
        state["stripe_calls"] = [(r.method, r.path) for r in emulator.requests]
    return state


def without_cart_of(state: dict[str, Any], user_id: str) -> dict[str, Any]:
    """The state less one user's cart rows: what a request acting on that cart may change."""
    return {**state, "carts": [row for row in state["carts"] if row[0] != user_id]}


async def user_ids() -> set[str]:
    return {u.id for u in await User.all()}


async def constraint_violations() -> list[str]:
    """What the stored data must never show, whatever clients sent: negative stock, empty cart
    lines or order lines, an order whose total is not the sum of its lines, an order whose
    history does not end where it is, more webhook endpoints than the limit, an endpoint
    without a secret or without event types."""
    problems: list[str] = []
    webhook_endpoints = await WebhookEndpoint.all()
    if len(webhook_endpoints) > MAX_ENDPOINTS:
        problems.append(f"{len(webhook_endpoints)} webhook endpoints, over {MAX_ENDPOINTS}")
    for endpoint in webhook_endpoints:
        if not endpoint.secret.startswith("whsec_") or not endpoint.events:
            problems.append(f"webhook endpoint {endpoint.id} has no secret or no event types")
        if not 1 <= endpoint.slot <= MAX_ENDPOINTS:
            problems.append(f"webhook endpoint {endpoint.id} has slot {endpoint.slot}")
    for product in await Product.all():
        if product.stock < 0:
            problems.append(f"product {product.sku!r} has stock {product.stock}")
        if product.price < 0:
            problems.append(f"product {product.sku!r} has price {product.price}")
    for line in await CartItem.all():
        if line.quantity <= 0:
            problems.append(f"cart line {line.id} of {line.user_id!r} has quantity {line.quantity}")
    lines: dict[str, list[OrderItem]] = defaultdict(list)
    for item in await OrderItem.all():
        lines[str(item.order_id)].append(item)
        if item.quantity <= 0:
            problems.append(f"order item {item.id} has quantity {item.quantity}")
    history: dict[str, list[OrderStatusChange]] = defaultdict(list)
    for change in await OrderStatusChange.all().order_by("id"):
        history[str(change.order_id)].append(change)
    for order in await Order.all():
        key = str(order.id)
        total = sum(i.unit_price * i.quantity for i in lines[key])
        if not lines[key]:
            problems.append(f"order {key} has no lines")
        if order.total != total:
            problems.append(f"order {key} total {order.total} != sum of its lines {total}")
        if order.amount_refunded < 0 or order.amount_refunded > order.total:
            problems.append(f"order {key} refunded {order.amount_refunded} of {order.total}")
        changes = history[key]
        if not changes:
            problems.append(f"order {key} has no history")
        elif (changes[-1].status, changes[-1].payment_status) != (
            order.status,
            order.payment_status,
        ):
            problems.append(
                f"order {key} is {order.status.value}/{order.payment_status.value} but its "
                f"history ends at {changes[-1].status.value}/{changes[-1].payment_status.value}"
            )
    return problems
