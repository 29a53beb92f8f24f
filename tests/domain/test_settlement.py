"""Nothing stuck: every payment settles, whatever was refused, lost or cut short.

Each test drives a rule through the webhook, the GraphQL API or the sweeper, against the Stripe
emulator (through the real SDK) and the real database, and checks stock, order rows, the calls
made to Stripe and the mail sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import stripe

from ordergraph.domain.checkout import place_order, session_request
from ordergraph.domain.expiry import sweep_overdue_orders
from ordergraph.domain.sweeper import Sweeper
from ordergraph.models import CartItem, Order, OrderItem, PaymentDiscrepancy, Product
from tests.conftest import Harness, Mailbox
from tests.utils.helpers import (
    add_to_cart,
    checked_out_order,
    make_product,
    run_ordergraph,
    stock_of,
)
from tests.utils.live import eventually

CANCEL = "mutation($id: ID!) { cancelOrder(orderId: $id) { order { status paymentStatus } userErrors { code message } } }"  # noqa: E501


async def _placed(app: Harness, *, quantity: int = 2) -> tuple[Product, str, str]:
    product = await make_product("TEE", price=2500, stock=10)
    payload = await checked_out_order(app, app.token("alice"), product, quantity)
    order = await Order.get(id=payload["orderId"])
    assert order.stripe_checkout_session_id
    return product, payload["orderId"], order.stripe_checkout_session_id


async def _overdue(order_id: str) -> None:
    await Order.filter(id=order_id).update(expires_at=datetime.now(UTC) - timedelta(hours=1))


def _refunds(app: Harness) -> list[tuple[str, int]]:
    return sorted((r["payment_intent"], r["amount"]) for r in app.emulator.refunds.values())


def _answers(app: Harness, kind: str) -> list[tuple[int, str]]:
    """How the service answered each delivery of events of that kind."""
    return [
        (d.status_code, json.loads(d.body).get("outcome", d.body) if d.status_code == 200 else "")
        for d in app.emulator.deliveries
        if d.event["type"] == kind
    ]


def _calls(app: Harness, method: str, path: str) -> int:
    return sum(1 for r in app.emulator.requests if r.method == method and r.path == path)


async def _discrepancies() -> list[tuple[str, str | None, str, bool]]:
    return [
        (d.kind, d.checkout_session_id, d.action, d.resolved_at is not None)
        for d in await PaymentDiscrepancy.all().order_by("id")
    ]


async def _state(order_id: str) -> tuple[str, str]:
    order = await Order.get(id=order_id)
    return order.status.value, order.payment_status.value


# Rule 1: every payment settles


async def test_a_refused_payment_is_refunded_and_the_order_released(
    app: Harness, mailbox: Mailbox
) -> None:
    product, order_id, session_id = await _placed(app)
    assert await stock_of(product) == 8

    # Stripe charged less than the order (say a coupon the shop never set up).
    delivery = await app.emulator.complete_session(session_id, amount_total=100)

    assert delivery.status_code == 200, delivery.body
    assert '"outcome":"refused"' in delivery.body.replace(" ", "")
    pi = app.emulator.sessions[session_id]["payment_intent"]
    assert _refunds(app) == [(pi, 100)]
    assert await _state(order_id) == ("payment_failed", "refunded")
    assert await stock_of(product) == 10
    [(kind, session, action, resolved)] = await _discrepancies()
    assert (kind, session, resolved) == ("REFUSED_PAYMENT", session_id, True)
    assert action.startswith("refunded 100 USD")
    [mail] = await mailbox.wait_for(1)
    assert "refund" in mail["Subject"].lower()
    # Stripe then tells of its refund (charge.refunded): acknowledged, nothing more to do.
    await app.emulator.drain()
    assert _answers(app, "charge.refunded") == [(200, "ignored")]

    # Stripe delivers again; the sweeper passes by: nothing is refunded or released twice.
    again = await app.emulator.deliver(delivery.event)
    assert again.status_code == 200
    await _overdue(order_id)
    assert await sweep_overdue_orders(app.asgi.state.services) == 0
    assert _refunds(app) == [(pi, 100)]
    assert await stock_of(product) == 10
    assert len(await _discrepancies()) == 1


async def test_a_session_of_another_shopper_paying_an_order_is_refunded_not_applied(
    app: Harness,
) -> None:
    """A session the service never made, naming someone else's order: its money goes back and
    the order it names is left as it was (its own session can still be paid)."""
    product, order_id, session_id = await _placed(app)
    client = stripe.StripeClient(
        "sk_test_ordergraph", base_addresses={"api": app.settings.stripe_api_base or ""}
    )
    foreign = await client.v1.checkout.sessions.create_async(
        params={
            "mode": "payment",
            "ui_mode": "embedded_page",
            "return_url": "http://elsewhere.test/done",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": 5000,
                        "product_data": {"name": "x"},
                    },
                }
            ],
            "metadata": {"order_id": order_id, "user_id": "mallory"},
        }
    )

    delivery = await app.emulator.complete_session(foreign.id)

    assert delivery.status_code == 200, delivery.body
    assert _refunds(app) == [(app.emulator.sessions[foreign.id]["payment_intent"], 5000)]
    assert await _state(order_id) == ("pending_payment", "pending")
    assert await stock_of(product) == 8
    assert [k for k, *_ in await _discrepancies()] == ["REFUSED_PAYMENT"]
    # The order's own session still pays it.
    assert (await app.emulator.complete_session(session_id)).status_code == 200
    assert await _state(order_id) == ("payment_confirmed", "paid")


async def test_cancelling_an_order_whose_refused_payment_was_never_heard_of(app: Harness) -> None:
    """Seen: cancelOrder answered ORDER_LOCKED for an order never recorded as paid."""
    product, order_id, session_id = await _placed(app)
    await app.emulator.complete_session(session_id, amount_total=100, deliver=False)

    body = await app.gql(CANCEL, {"id": order_id}, token=app.token("alice"))

    payload = body["data"]["cancelOrder"]
    assert payload["userErrors"] == [], payload
    assert payload["order"] == {"status": "PAYMENT_FAILED", "paymentStatus": "REFUNDED"}
    assert len(_refunds(app)) == 1
    assert await stock_of(product) == 10


# Rule 2: reconciliation covers every unsettled state


async def test_a_lost_async_failure_is_settled_by_the_sweeper(
    app: Harness, mailbox: Mailbox
) -> None:
    product, order_id, session_id = await _placed(app)
    await app.emulator.complete_session(session_id, payment_status="unpaid")
    assert await _state(order_id) == ("pending_payment", "processing")
    app.emulator.webhook_url = None  # the failure event is lost
    await app.emulator.async_payment_failed(session_id)
    await _overdue(order_id)

    assert await sweep_overdue_orders(app.asgi.state.services) == 1

    assert await _state(order_id) == ("payment_failed", "failed")
    assert await stock_of(product) == 10
    [mail] = await mailbox.wait_for(1)
    assert "payment" in mail["Subject"].lower()


async def test_a_lost_async_success_is_confirmed_by_the_sweeper(app: Harness) -> None:
    product, order_id, session_id = await _placed(app)
    await app.emulator.complete_session(session_id, payment_status="unpaid")
    app.emulator.webhook_url = None
    await app.emulator.async_payment_succeeded(session_id)
    await _overdue(order_id)

    assert await sweep_overdue_orders(app.asgi.state.services) == 1

    assert await _state(order_id) == ("payment_confirmed", "paid")
    assert await stock_of(product) == 8


async def test_a_payment_still_processing_keeps_its_stock(app: Harness) -> None:
    product, order_id, session_id = await _placed(app)
    await app.emulator.complete_session(session_id, payment_status="unpaid")
    await _overdue(order_id)

    assert await sweep_overdue_orders(app.asgi.state.services) == 0

    assert await _state(order_id) == ("pending_payment", "processing")
    assert await stock_of(product) == 8


async def test_a_session_stripe_does_not_know_cancels_the_order(app: Harness) -> None:
    product, order_id, session_id = await _placed(app)
    app.emulator.reset()  # Stripe forgot everything: resource_missing for the session
    app.emulator.webhook_url = f"{app.url}/webhooks/stripe"
    await _overdue(order_id)

    assert await sweep_overdue_orders(app.asgi.state.services) == 1

    assert await _state(order_id) == ("cancelled", "expired")
    assert await stock_of(product) == 10
    assert await _discrepancies() == [
        ("UNKNOWN_AT_STRIPE", session_id, "cancelled, stock released", True)
    ]


async def test_stripe_unreachable_leaves_the_order_for_a_later_sweep(app: Harness) -> None:
    product, order_id, _ = await _placed(app)
    await _overdue(order_id)
    app.emulator.inject_fault("error500", 1)

    assert await sweep_overdue_orders(app.asgi.state.services) == 0
    assert await _state(order_id) == ("pending_payment", "pending")
    assert await stock_of(product) == 8

    # Its claim lapses; the next sweep settles it.
    await Order.filter(id=order_id).update(next_check_at=None)
    assert await sweep_overdue_orders(app.asgi.state.services) == 1
    assert await stock_of(product) == 10


# Rule 7: a checkout cut short by a crash


async def _interrupted(app: Harness, *, reached_stripe: bool) -> tuple[Product, Order, Any]:
    """An order committed by checkout, whose process died before it stored the session."""
    product = await make_product("TEE", price=2500, stock=10)
    await add_to_cart(app, app.token("alice"), product, 3)
    order, items = await place_order("alice", app.settings, email="alice@example.com")
    request = session_request(order, items, app.settings)
    session = None
    if reached_stripe:
        session = await app.asgi.state.services.gateway.create_checkout_session(request)
    await Order.filter(id=order.id).update(created_at=datetime.now(UTC) - timedelta(minutes=3))
    assert await CartItem.filter(user_id="alice").count() == 0
    return product, order, session


async def test_an_interrupted_checkout_gives_the_cart_back(app: Harness) -> None:
    product, order, _ = await _interrupted(app, reached_stripe=True)
    assert await stock_of(product) == 7

    assert await sweep_overdue_orders(app.asgi.state.services) == 1

    assert await _state(str(order.id)) == ("cancelled", "failed")
    assert await stock_of(product) == 10
    cart = await CartItem.filter(user_id="alice").values_list("product_id", "quantity")
    assert [(str(p), q) for p, q in cart] == [(str(product.id), 3)]
    # One session at Stripe for the order, and it can no longer be paid.
    sessions = [
        s for s in app.emulator.sessions.values() if s["metadata"]["order_id"] == str(order.id)
    ]
    assert [s["status"] for s in sessions] == ["expired"]


async def test_an_interrupted_checkout_that_was_paid_is_confirmed(app: Harness) -> None:
    product, order, session = await _interrupted(app, reached_stripe=True)
    await app.emulator.complete_session(session.id, deliver=False)

    assert await sweep_overdue_orders(app.asgi.state.services) == 1

    assert await _state(str(order.id)) == ("payment_confirmed", "paid")
    assert (await Order.get(id=order.id)).stripe_checkout_session_id == session.id
    assert await stock_of(product) == 7
    assert len(app.emulator.sessions) == 1


async def test_an_interrupted_checkout_that_never_reached_stripe(app: Harness) -> None:
    product, order, _ = await _interrupted(app, reached_stripe=False)

    assert await sweep_overdue_orders(app.asgi.state.services) == 1

    assert await _state(str(order.id)) == ("cancelled", "failed")
    assert await stock_of(product) == 10
    assert [s["status"] for s in app.emulator.sessions.values()] == ["expired"]
    assert await OrderItem.filter(order_id=order.id).count() == 1


async def test_a_checkout_in_flight_is_left_alone(app: Harness) -> None:
    product = await make_product("TEE", price=2500, stock=10)
    await add_to_cart(app, app.token("alice"), product, 1)
    order, _ = await place_order("alice", app.settings)

    assert await sweep_overdue_orders(app.asgi.state.services) == 0
    assert await _state(str(order.id)) == ("pending_payment", "pending")
    assert app.emulator.sessions == {}


# Rule 10: sweeping scales out


async def test_concurrent_sweepers_ask_stripe_once_per_order(app: Harness) -> None:
    product = await make_product("TEE", price=100, stock=50)
    orders = []
    for n in range(5):
        payload = await checked_out_order(app, app.token(f"s{n}"), product, 1)
        orders.append(payload["orderId"])
        await _overdue(payload["orderId"])
    sessions = [(await Order.get(id=o)).stripe_checkout_session_id for o in orders]
    services = app.asgi.state.services

    # Stripe's `checkout.session.expired` would race each sweeper's own cancellation, and an
    # order the webhook cancelled first is not counted by the sweeper: the sweepers alone here.
    with app.stripe_webhooks_to(None):
        settled = await asyncio.gather(*(sweep_overdue_orders(services) for _ in range(4)))

    assert sum(settled) == 5
    for session_id in sessions:
        assert _calls(app, "GET", f"/v1/checkout/sessions/{session_id}") == 1
        assert _calls(app, "POST", f"/v1/checkout/sessions/{session_id}/expire") == 1
    assert await stock_of(product) == 50


# Rule 3: ordergraph reconcile


def _env(app: Harness) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": app.settings.database_url,
        "JWT_SECRET": app.settings.jwt_secret,
        "STRIPE_SECRET_KEY": app.settings.stripe_secret_key or "",
        "STRIPE_API_BASE": app.settings.stripe_api_base or "",
    }


DISCREPANCIES = "{ paymentDiscrepancies(unresolvedOnly: %s) { kind orderId action resolvedAt } }"


async def test_reconcile_confirms_what_stripe_was_paid_and_flags_the_rest(app: Harness) -> None:
    product, lost_id, lost_session = await _placed(app, quantity=1)
    await app.emulator.complete_session(lost_session, deliver=False)  # the webhook is lost
    other = await checked_out_order(app, app.token("bob"), product, 1)
    # An order the database says is paid, though its session at Stripe is not.
    await Order.filter(id=other["orderId"]).update(
        status="payment_confirmed", payment_status="paid", paid_at=datetime.now(UTC)
    )

    returncode, stdout, stderr = await run_ordergraph("reconcile", "--since", "1", env=_env(app))

    assert returncode == 1, stderr
    assert "reconciled 2 Stripe Checkout Sessions" in stdout
    assert f"PAID_NOT_RECORDED\t{lost_id}" in stdout
    assert f"NOT_PAID_AT_STRIPE\t{other['orderId']}" in stdout
    assert "1 finding(s) need staff" in stdout
    assert await _state(lost_id) == ("payment_confirmed", "paid")
    staff = app.token("sam", staff=True)
    open_ = await app.gql(DISCREPANCIES % "true", token=staff)
    assert open_["data"]["paymentDiscrepancies"] == [
        {
            "kind": "NOT_PAID_AT_STRIPE",
            "orderId": other["orderId"],
            "action": "left for staff",
            "resolvedAt": None,
        }
    ]
    every = (await app.gql(DISCREPANCIES % "false", token=staff))["data"]["paymentDiscrepancies"]
    assert sorted(d["kind"] for d in every) == ["NOT_PAID_AT_STRIPE", "PAID_NOT_RECORDED"]

    # Run again: the same findings are not recorded twice, nothing is confirmed twice.
    returncode, stdout, _ = await run_ordergraph("reconcile", env=_env(app))
    assert returncode == 1
    assert await PaymentDiscrepancy.all().count() == 2


async def test_reconcile_with_nothing_amiss_exits_0(app: Harness) -> None:
    _, _, session_id = await _placed(app)
    assert (await app.emulator.complete_session(session_id)).status_code == 200

    returncode, stdout, stderr = await run_ordergraph("reconcile", env=_env(app))

    assert returncode == 0, stderr
    assert "nothing needs staff" in stdout
    assert await PaymentDiscrepancy.all().count() == 0


async def test_reconcile_without_stripe_says_so(app: Harness) -> None:
    env = {**_env(app), "STRIPE_API_BASE": "http://127.0.0.1:9"}  # nothing listens there

    returncode, _, stderr = await run_ordergraph("reconcile", env=env)

    assert returncode == 1
    assert "Stripe could not be asked" in stderr
    assert "Traceback" not in stderr


async def test_reconcile_refunds_a_second_payment_for_a_paid_order(app: Harness) -> None:
    """Charged twice: the order's own session paid it; another session for the same order was
    paid too, and its webhook lost. Reconciliation gives that money back, once."""
    product, order_id, session_id = await _placed(app, quantity=1)
    assert (await app.emulator.complete_session(session_id)).status_code == 200
    client = stripe.StripeClient(
        "sk_test_ordergraph", base_addresses={"api": app.settings.stripe_api_base or ""}
    )
    second = await client.v1.checkout.sessions.create_async(
        params={
            "mode": "payment",
            "ui_mode": "embedded_page",
            "return_url": "http://shop.test/again",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": 2500,
                        "product_data": {"name": "TEE"},
                    },
                }
            ],
            "metadata": {"order_id": order_id, "user_id": "alice"},
        }
    )
    await app.emulator.complete_session(second.id, deliver=False)

    for _ in range(2):
        returncode, stdout, stderr = await run_ordergraph("reconcile", env=_env(app))
        assert returncode == 0, stdout + stderr
        assert f"REFUSED_PAYMENT\t{order_id}\t{second.id}" in stdout

    assert _refunds(app) == [(app.emulator.sessions[second.id]["payment_intent"], 2500)]
    # Stripe's charge.refunded of that second payment must not refund the order itself.
    await app.emulator.drain()
    assert _answers(app, "charge.refunded") == [(200, "ignored")]
    assert await _state(order_id) == ("payment_confirmed", "paid")
    assert (await Order.get(id=order_id)).amount_refunded == 0
    assert await stock_of(product) == 9
    assert [k for k, *_ in await _discrepancies()] == ["REFUSED_PAYMENT"]


async def test_the_sweeper_reconciles_on_its_slower_cadence(app: Harness) -> None:
    """A payment whose webhook was lost, on an order not yet overdue: a plain sweep leaves it,
    the sweeper's reconciliation (every RECONCILE_INTERVAL_SECONDS) confirms it."""
    _, order_id, session_id = await _placed(app)
    await app.emulator.complete_session(session_id, deliver=False)
    settings = dataclasses.replace(
        app.settings, sweep_interval_seconds=1, reconcile_interval_seconds=1
    )
    services = dataclasses.replace(app.asgi.state.services, settings=settings)
    assert await sweep_overdue_orders(services) == 0
    sweeper = Sweeper(services)
    running = asyncio.create_task(sweeper.run())
    try:

        async def confirmed() -> bool:
            return await _state(order_id) == ("payment_confirmed", "paid")

        assert await eventually(confirmed, timeout=10)
    finally:
        sweeper.stop()
        await running
    assert [k for k, *_ in await _discrepancies()] == ["PAID_NOT_RECORDED"]
