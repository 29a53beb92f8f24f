"""Property: whatever order Stripe's events arrive in, however often, mixed with shopper
cancels and sweeper passes, stock is never negative, reserved units are exactly those of the
orders that hold stock, every order's path is one the state machine allows, no order gets two
receipts, no payment is refunded twice, and each order ends where its ordered story ends.

The stories include what goes wrong: payments the service refuses, async results whose event
is lost, disputes lost after payment, checkouts cut short between commit and session. And once
every event is in, a sweep with Stripe reachable leaves no order PENDING_PAYMENT past its
expiry.

Then the paid orders of the after-payment stories (`lifecycle_steps`) are fulfilled, refunded
in part or whole, withdrawn from and returned through the API, interleaved and with requests
sent twice, and the ledger holds: a product's units out of stock are exactly those the orders
hold or shipped, less what was restocked, plus what was refunded before shipping and written
off; each unit is refunded and restocked at most once; no order gets back more than it paid,
and each refund request is one Stripe refund.

And every change is told to the shop's webhook endpoint exactly once, in the transaction of
the change: an order's events carry its versions one by one, each with the status and payment
status of the history row of that version.

Stripe is modelled as it behaves: a delivery answered with 5xx is delivered again later.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
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
    WebhookDelivery,
    WebhookEvent,
)
from ordergraph.outgoing_webhooks import endpoints
from ordergraph.stripe_emulator import Delivery
from tests.conftest import Harness, SmtpServer, reset_service
from tests.domain.lifecycle_steps import (
    API_SCENARIOS,
    Plan,
    plan_after_payment,
    refunds_hold,
    run_after_payment,
)
from tests.utils.helpers import ADD_TO_CART, CHECKOUT
from tests.utils.receivers import deliveries_written

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
    elif scenario in ("paid", "paid_swept", *API_SCENARIOS):
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


async def _check_invariants(
    app: Harness, products: dict[str, Product], initial: dict[str, int]
) -> None:
    """Read in one snapshot: the service's own sweeper may settle an order meanwhile."""
    await deliveries_written()
    async with transaction() as connection:
        if is_postgres(connection):
            await connection.execute_script("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        await _invariants_hold(app, products, initial)


async def _invariants_hold(
    app: Harness, products: dict[str, Product], initial: dict[str, int]
) -> None:
    orders = {str(o.id): o for o in await Order.all()}
    paths: defaultdict[str, list[tuple[OrderStatus, PaymentStatus]]] = defaultdict(list)
    for change in await OrderStatusChange.all().order_by("id"):
        paths[str(change.order_id)].append((change.status, change.payment_status))
    holding: Counter[str] = Counter()
    for item in await OrderItem.all():
        refunded, restocked = item.quantity_refunded, item.quantity_restocked
        assert 0 <= restocked <= refunded, (item.id, refunded, restocked)
        assert 0 <= item.quantity_returning <= item.quantity - refunded, item.id
        order = orders[str(item.order_id)]
        shipped = any(status in SHIPPED_STATES for status, _ in paths[str(item.order_id)])
        # Held or shipped: every unit is out but those restocked; otherwise only those
        # refunded before the order let go of the rest, less those restocked.
        out = item.quantity if order.status in HOLDS_STOCK or shipped else refunded
        holding[str(item.product_id)] += out - restocked
    for name, product in products.items():
        await product.refresh_from_db()
        assert product.stock >= 0, (name, product.stock)
        assert initial[name] - product.stock == holding[str(product.id)], (
            name,
            product.stock,
            holding,
        )
    for order_id, order in orders.items():
        path = paths[order_id]
        assert path[0] == (OrderStatus.PENDING_PAYMENT, PaymentStatus.PENDING)
        for (s1, p1), (s2, p2) in pairwise(path):
            assert s1 == s2 or s2 in TRANSITIONS[s1], path
            assert p1 == p2 or p2 in PAYMENT_TRANSITIONS[p1], path
        assert path[-1] == (order.status, order.payment_status)
    receipts = Counter(
        e.order_id for e in await OutboxEmail.filter(dedupe_key__startswith="receipt:")
    )
    assert all(count == 1 for count in receipts.values()), receipts
    await refunds_hold(app, orders)
    await _each_change_told_once(paths)


async def _each_change_told_once(
    paths: dict[str, list[tuple[OrderStatus, PaymentStatus]]],
) -> None:
    told: defaultdict[str, list[tuple[int, OrderStatus, PaymentStatus, str]]] = defaultdict(list)
    for event in await WebhookEvent.all():
        order = json.loads(event.body)["data"]["order"]
        told[order["id"]].append(
            (
                order["version"],
                OrderStatus[order["status"]],
                PaymentStatus[order["paymentStatus"]],
                event.type,
            )
        )
    assert set(told) == set(paths)
    for order_id, path in paths.items():
        events = sorted(told[order_id])
        assert [version for version, *_ in events] == list(range(1, len(path) + 1)), events
        assert [(status, payment) for _, status, payment, _ in events] == path, events
        assert events[0][3] == "order.created"
    # One endpoint: one delivery per event (fanned out before the snapshot was taken).
    assert await WebhookDelivery.all().count() == sum(len(e) for e in told.values())


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
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    # Half the stories go on after payment (`lifecycle_steps`), half are those above.
    scenarios=st.lists(
        st.sampled_from(SCENARIOS) | st.sampled_from(API_SCENARIOS), min_size=2, max_size=4
    ),
    quantities=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=4, max_size=4),
    duplicates=st.lists(st.integers(0, 50), max_size=6),
    seed=st.integers(0, 2**32 - 1),
    after_seed=st.integers(0, 2**32 - 1),
)
async def test_any_interleaving_keeps_stock_and_ends_in_the_ordered_state(
    harness: Harness,
    smtp: SmtpServer,
    scenarios: list[str],
    quantities: list[tuple[int, int]],
    duplicates: list[int],
    seed: int,
    after_seed: int,
) -> None:
    app = harness
    await reset_service(app, smtp)
    # The shop's endpoint hears of every change; paused, so that its deliveries wait.
    endpoint, _ = await endpoints.create_endpoint(
        "https://erp.example.test/hooks", ["*"], actor="staff:test", settings=app.settings
    )
    await endpoints.set_endpoint_active(str(endpoint.id), False)
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
    await _check_invariants(app, products, STOCK)

    steps = [step for story in stories for step in story.steps]
    if steps:
        steps += [steps[i % len(steps)] for i in duplicates]
    random.Random(seed).shuffle(steps)
    retry: list[tuple[str, Any]] = []
    for kind, value in steps:
        await _step(app, kind, value, retry)
        await _check_invariants(app, products, STOCK)
    for _ in range(5):
        pending, retry = retry, []
        for kind, value in pending:
            await _step(app, kind, value, retry)
            await _check_invariants(app, products, STOCK)
    assert retry == []
    await app.emulator.drain()
    await _check_invariants(app, products, STOCK)

    # Every payment is in: the after-payment stories go on through the API.
    plans: dict[str, Plan] = {}
    rnd = random.Random(after_seed)
    for story in stories:
        if story.scenario in API_SCENARIOS:
            plans[story.order_id] = await plan_after_payment(story.order_id, story.scenario, rnd)
    await run_after_payment(
        app, list(plans.values()), rnd, lambda: _check_invariants(app, products, STOCK)
    )
    await app.emulator.drain()
    await _check_invariants(app, products, STOCK)

    # Every event is in: one sweep, with Stripe reachable and every claim lapsed, settles
    # every order past its expiry.
    later = datetime.now(UTC) + timedelta(hours=2)
    await sweep_overdue_orders(app.asgi.state.services, now=later)
    await app.emulator.drain()
    await _check_invariants(app, products, STOCK)
    overdue = Order.filter(status=OrderStatus.PENDING_PAYMENT, expires_at__lt=later)
    assert await overdue.count() == 0

    for story in stories:
        order = await Order.get(id=story.order_id)
        plan = plans.get(story.order_id)
        expected = plan.expected if plan else EXPECTED[story.scenario]
        assert (order.status.value, order.payment_status.value) == expected, (
            story.scenario,
            [kind for kind, _ in story.steps],
            plan,
        )
