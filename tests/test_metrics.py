"""`/metrics`: the counters an operator watches move with what the service does.

Each test reads the numbers before and after, since the counters live as long as the process
(the whole test session) and other tests move them too.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ordergraph.models import Order
from tests.conftest import Harness, Mailbox
from tests.helpers import CHECKOUT, checked_out_order, make_product
from tests.live import TRANSPORT_WS, Follower, eventually

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(app: Harness, **headers: str) -> Samples:
    response = await app.http.get(f"{app.url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_a_paid_order_moves_every_counter(app: Harness, mailbox: Mailbox) -> None:
    before = await scrape(app)
    tee = await make_product("TEE", stock=5)
    token = app.token("meg")
    payload = await checked_out_order(app, token, tee, 2)
    order_id = payload["orderId"]
    empty = await app.gql(CHECKOUT, token=token)
    assert empty["data"]["checkout"]["userErrors"][0]["code"] == "CART_EMPTY"

    async with Follower(app.url, token, order_id, TRANSPORT_WS) as follower:
        await follower.next()
        during = await scrape(app)
        assert moved(before, during, "ordergraph_active_subscriptions") == 1

        order = await Order.get(id=order_id)
        assert order.stripe_checkout_session_id
        delivery = await app.emulator.complete_session(order.stripe_checkout_session_id)
        assert delivery.status_code == 200
        await follower.until("PAYMENT_CONFIRMED")
        again = await app.emulator.deliver(delivery.event)
        assert again.status_code == 200
        await mailbox.wait_for(1)

    async def settled() -> Samples | None:
        after = await scrape(app)
        subscribed = moved(before, after, "ordergraph_active_subscriptions")
        sent = moved(before, after, "ordergraph_emails_total", outcome="sent")
        return after if subscribed == 0 and sent == 1 else None

    after = await eventually(settled)
    assert after is not None, "the subscription or the receipt never settled"

    def delta(name: str, **labels: str) -> float:
        return moved(before, after, name, **labels)

    assert delta("ordergraph_checkouts_total", outcome="created") == 1
    assert delta("ordergraph_checkouts_total", outcome="cart_empty") == 1
    assert (
        delta(
            "ordergraph_order_transitions_total",
            from_status="PENDING_PAYMENT",
            to_status="PAYMENT_CONFIRMED",
        )
        == 1
    )
    assert (
        delta("ordergraph_payment_transitions_total", from_status="PENDING", to_status="PAID") == 1
    )
    completed = "checkout.session.completed"
    assert delta("ordergraph_webhook_events_total", type=completed, outcome="applied") == 1
    assert delta("ordergraph_webhook_events_total", type=completed, outcome="duplicate") == 1
    assert delta("ordergraph_webhook_processing_seconds_count", type=completed) == 2
    assert delta("ordergraph_webhook_processing_seconds_sum", type=completed) > 0
    stripe_create: dict[str, Any] = {"operation": "checkout_session_create", "outcome": "ok"}
    assert delta("ordergraph_stripe_request_seconds_count", **stripe_create) == 1


async def test_refusals_and_failures_are_counted_by_outcome(app: Harness) -> None:
    before = await scrape(app)
    bad = await app.http.post(
        f"{app.url}/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "t=1,v1=00"}
    )
    assert bad.status_code == 400
    app.emulator.inject_fault("error500", count=1)
    tee = await make_product("TEE", stock=5)
    token = app.token("jo")
    await app.gql(
        "mutation($p: ID!) { addToCart(productId: $p, quantity: 1) { userErrors { code } } }",
        {"p": str(tee.id)},
        token=token,
    )
    failed = await app.gql(CHECKOUT, token=token)
    assert failed["data"]["checkout"]["userErrors"][0]["code"] == "PAYMENT_PROVIDER_ERROR"
    after = await scrape(app)
    assert (
        moved(
            before,
            after,
            "ordergraph_webhook_events_total",
            type="unverified",
            outcome="bad_request",
        )
        == 1
    )
    assert moved(before, after, "ordergraph_checkouts_total", outcome="payment_provider_error") == 1
    errors = [
        key
        for key in after
        if key[0] == "ordergraph_stripe_request_seconds_count"
        and ("outcome", "ok") not in key[1]
        and ("operation", "checkout_session_create") in key[1]
    ]
    assert errors and sum(moved(before, after, k[0], **dict(k[1])) for k in errors) == 1


async def test_metrics_token_guards_the_endpoint(app: Harness) -> None:
    """With METRICS_TOKEN set, a scrape needs it; without the setting the endpoint is open."""
    settings = app.asgi.state.settings
    app.asgi.state.settings = replace(settings, metrics_token="scrape-secret")
    try:
        refused = await app.http.get(f"{app.url}/metrics")
        assert refused.status_code == 401
        wrong = await app.http.get(f"{app.url}/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        samples = await scrape(app, Authorization="Bearer scrape-secret")
        assert ("ordergraph_active_subscriptions", frozenset()) in samples
    finally:
        app.asgi.state.settings = settings
