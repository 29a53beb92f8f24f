"""Property: whatever order Stripe's events arrive in, however often, mixed with shopper
cancels and sweeper passes, stock is never negative, reserved units are exactly those of the
orders that hold stock, every order's path is one the state machine allows, no order gets two
receipts, no payment is refunded twice, and each order ends where its ordered story ends.

The stories include what goes wrong: payments the service refuses, async results whose event
is lost, disputes lost after payment, checkouts cut short between commit and session. And once
every event is in, a sweep with Stripe reachable leaves no order PENDING_PAYMENT past its
expiry.

Stripe is modelled as it behaves: a delivery answered with 5xx is delivered again later.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ordergraph.db import is_postgres, transaction
from ordergraph.domain.checkout import place_order
from ordergraph.domain.errors import BusinessError
from ordergraph.domain.expiry import sweep_overdue_orders
from ordergraph.domain.order_state import (
    HOLDS_STOCK,
    PAYMENT_TRANSITIONS,
    SHIPPED_STATES,
    TRANSITIONS,
)
from ordergraph.models import (
    Order,
    OrderItem,
    OrderStatus,
    OrderStatusChange,
    OutboxEmail,
    PaymentStatus,
    Product,
)
from ordergraph.stripe_emulator import Delivery
from tests.conftest import Harness, SmtpServer, reset_service
from tests.utils.helpers import ADD_TO_CART, CHECKOUT

SCENARIOS = [
    "paid",
    "paid_swept",
    "async_ok",
    "async_fail",
    "expired",
    "cancel",
    "sweep",
    "refused",
    "async_fail_lost",
    "async_ok_lost",
    "dispute_lost",
    "crash",
]
EXPECTED = {
    "refused": ("payment_failed", "refunded"),
    "async_fail_lost": ("payment_failed", "failed"),
    "async_ok_lost": ("payment_confirmed", "paid"),
    "dispute_lost": ("refunded", "refunded"),
    "crash": ("cancelled", "failed"),
    "paid": ("payment_confirmed", "paid"),
    "paid_swept": ("payment_confirmed", "paid"),
    "async_ok": ("payment_confirmed", "paid"),
    "async_fail": ("payment_failed", "failed"),
    "expired": ("cancelled", "expired"),
    "cancel": ("cancelled", "expired"),
    "sweep": ("cancelled", "expired"),
}
STOCK = {"A": 4, "B": 3}


@dataclass
class Story:
    order_id: str
    session_id: str
    scenario: str
    steps: list[tuple[str, Any]] = field(default_factory=list)


async def _place(app: Harness, user: str, lines: list[tuple[Product, int]]) -> str | None:
    token = app.token(user)
    for product, quantity in lines:
        await app.gql(ADD_TO_CART, {"p": str(product.id), "q": quantity}, token=token)
    body = await app.gql(CHECKOUT, token=token)
    placed: str | None = body["data"]["checkout"]["orderId"]
    return placed


async def _crashed(app: Harness, user: str, lines: list[tuple[Product, int]]) -> str | None:
    """A checkout whose process died after committing the order, before opening its session."""
    token = app.token(user)
    for product, quantity in lines:
        await app.gql(ADD_TO_CART, {"p": str(product.id), "q": quantity}, token=token)
    await app.gql("{ cart { itemCount } }", token=token)  # the shopper's user row
    try:
        order, _ = await place_order(user, app.settings, email=f"{user}@example.com")
    except BusinessError:  # short of stock: nothing to follow
        return None
    await Order.filter(id=order.id).update(created_at=datetime.now(UTC) - timedelta(minutes=3))
    return str(order.id)


async def _unsent(app: Harness, send: Callable[[], Awaitable[Delivery]]) -> dict[str, Any]:
    """What Stripe does and the event it would send, with the event kept back (lost, or to be
    delivered by the test in its own order)."""
    url, app.emulator.webhook_url = app.emulator.webhook_url, None
    try:
        return (await send()).event
    finally:
        app.emulator.webhook_url = url


async def _story(app: Harness, order_id: str, scenario: str) -> Story:
    emulator = app.emulator
    order = await Order.get(id=order_id)
    session_id = order.stripe_checkout_session_id or ""
    story = Story(order_id, session_id, scenario)
    if scenario == "crash":
        story.steps.append(("sweep", order_id))
    elif scenario == "refused":
        forged = await emulator.complete_session(session_id, amount_total=1, deliver=False)
        story.steps.append(("event", forged.event))
    elif scenario in ("async_fail_lost", "async_ok_lost"):
        unpaid = await emulator.complete_session(session_id, payment_status="unpaid", deliver=False)
        story.steps.append(("event", unpaid.event))
        if scenario == "async_fail_lost":
            await _unsent(app, lambda: emulator.async_payment_failed(session_id))
        else:
            await _unsent(app, lambda: emulator.async_payment_succeeded(session_id))
    elif scenario == "dispute_lost":
        paid = await emulator.complete_session(session_id, deliver=False)
        intent = emulator.sessions[session_id]["payment_intent"]
        opened = await _unsent(app, lambda: emulator.dispute(intent))
        lost = await _unsent(app, lambda: emulator.dispute(intent, status="lost"))
        story.steps += [("event", paid.event), ("event", opened), ("event", lost)]
    elif scenario in ("paid", "paid_swept"):
        story.steps.append(
            ("event", (await emulator.complete_session(session_id, deliver=False)).event)
        )
        if scenario == "paid_swept":
            story.steps.append(("sweep", order_id))
    elif scenario in ("async_ok", "async_fail"):
        unpaid = await emulator.complete_session(session_id, payment_status="unpaid", deliver=False)
        session = dict(unpaid.event["data"]["object"])
        story.steps.append(("event", unpaid.event))
        if scenario == "async_ok":
            session["payment_status"] = "paid"
            kind = "checkout.session.async_payment_succeeded"
        else:
            kind = "checkout.session.async_payment_failed"
        story.steps.append(("event", emulator.build_event(kind, session)))
    elif scenario == "expired":
        session = {**emulator.sessions[session_id], "status": "expired"}
        story.steps.append(("event", emulator.build_event("checkout.session.expired", session)))
    elif scenario == "cancel":
        story.steps.append(("cancel", order_id))
    else:
        story.steps.append(("sweep", order_id))
    return story


async def _check_invariants(products: dict[str, Product], initial: dict[str, int]) -> None:
    """Read in one snapshot: the service's own sweeper may settle an order meanwhile."""
    async with transaction() as connection:
        if is_postgres(connection):
            await connection.execute_script("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        await _invariants_hold(products, initial)


async def _invariants_hold(products: dict[str, Product], initial: dict[str, int]) -> None:
    holding: Counter[str] = Counter()
    orders = {str(o.id): o for o in await Order.all()}
    held = {k for k, o in orders.items() if o.status in HOLDS_STOCK or o.status in SHIPPED_STATES}
    for item in await OrderItem.all():
        if str(item.order_id) in held:
            holding[str(item.product_id)] += item.quantity
    for name, product in products.items():
        await product.refresh_from_db()
        assert product.stock >= 0, (name, product.stock)
        assert initial[name] - product.stock == holding[str(product.id)], (
            name,
            product.stock,
            holding,
        )
    for order_id, order in orders.items():
        changes = await OrderStatusChange.filter(order_id=order_id).order_by("id")
        path = [(c.status, c.payment_status) for c in changes]
        assert path[0] == (OrderStatus.PENDING_PAYMENT, PaymentStatus.PENDING)
        for (s1, p1), (s2, p2) in pairwise(path):
            assert s1 == s2 or s2 in TRANSITIONS[s1], path
            assert p1 == p2 or p2 in PAYMENT_TRANSITIONS[p1], path
        assert path[-1] == (order.status, order.payment_status)
    receipts = Counter(
        e.order_id for e in await OutboxEmail.filter(dedupe_key__startswith="receipt:")
    )
    assert all(count == 1 for count in receipts.values()), receipts


async def _step(app: Harness, kind: str, value: Any, retry: list[tuple[str, Any]]) -> None:
    if kind == "event":
        delivery = await app.emulator.deliver(value)
        if delivery.status_code >= 500:
            retry.append((kind, value))  # Stripe delivers it again later
        else:
            assert delivery.status_code == 200, delivery.body
    elif kind == "cancel":
        order = await Order.get(id=value)
        body = await app.gql(
            "mutation($id: ID!) { cancelOrder(orderId: $id) { userErrors { code } } }",
            {"id": value},
            token=app.token(order.user_id),
        )
        assert "errors" not in body, body
    else:
        await Order.filter(id=value).update(expires_at=datetime.now(UTC) - timedelta(hours=1))
        await sweep_overdue_orders(app.asgi.state.services)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    scenarios=st.lists(st.sampled_from(SCENARIOS), min_size=2, max_size=4),
    quantities=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=4, max_size=4),
    duplicates=st.lists(st.integers(0, 50), max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
async def test_any_interleaving_keeps_stock_and_ends_in_the_ordered_state(
    harness: Harness,
    smtp: SmtpServer,
    scenarios: list[str],
    quantities: list[tuple[int, int]],
    duplicates: list[int],
    seed: int,
) -> None:
    app = harness
    await reset_service(app, smtp)
    products = {
        name: await Product.create(sku=name, name=f"Product {name}", price=1000, stock=stock)
        for name, stock in STOCK.items()
    }
    stories: list[Story] = []
    for index, scenario in enumerate(scenarios):
        qa, qb = quantities[index]
        lines = [(products["A"], qa), (products["B"], qb)]
        lines = [(p, q) for p, q in lines if q] or [(products["A"], 1)]
        if scenario == "crash":
            order_id: str | None = await _crashed(app, f"shopper-{index}", lines)
        else:
            order_id = await _place(app, f"shopper-{index}", lines)
        if order_id is not None:  # refused for short stock: nothing to follow
            stories.append(await _story(app, order_id, scenario))
    await _check_invariants(products, STOCK)

    steps = [step for story in stories for step in story.steps]
    if steps:
        steps += [steps[i % len(steps)] for i in duplicates]
    random.Random(seed).shuffle(steps)
    retry: list[tuple[str, Any]] = []
    for kind, value in steps:
        await _step(app, kind, value, retry)
        await _check_invariants(products, STOCK)
    for _ in range(5):
        pending, retry = retry, []
        for kind, value in pending:
            await _step(app, kind, value, retry)
            await _check_invariants(products, STOCK)
    assert retry == []
    await app.emulator.drain()
    await _check_invariants(products, STOCK)

    # Every event is in: one sweep, with Stripe reachable and every claim lapsed, settles
    # every order past its expiry.
    later = datetime.now(UTC) + timedelta(hours=2)
    await sweep_overdue_orders(app.asgi.state.services, now=later)
    await app.emulator.drain()
    await _check_invariants(products, STOCK)
    overdue = Order.filter(status=OrderStatus.PENDING_PAYMENT, expires_at__lt=later)
    assert await overdue.count() == 0
    refunded = Counter((r["payment_intent"], r["amount"]) for r in app.emulator.refunds.values())
    assert all(count == 1 for count in refunded.values()), refunded

    for story in stories:
        order = await Order.get(id=story.order_id)
        assert (order.status.value, order.payment_status.value) == EXPECTED[story.scenario], (
            story.scenario,
            [kind for kind, _ in story.steps],
        )
