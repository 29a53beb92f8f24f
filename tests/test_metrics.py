"""`/metrics`: the counters an operator watches move with what the service does.

Each test reads the numbers before and after, since the counters live as long as the process
(the whole test session) and other tests move them too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ordergraph.models import Order
from tests.conftest import METRICS_TOKEN, Harness, Mailbox
from tests.utils.helpers import CHECKOUT, checked_out_order, make_product
from tests.utils.live import TRANSPORT_WS, Follower, eventually

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(app: Harness) -> Samples:
    response = await app.http.get(
        f"{app.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
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


async def quiet(app: Harness) -> Samples:
    """The numbers once no subscription of an earlier test is still being closed."""

    async def no_subscriptions() -> Samples | None:
        samples = await scrape(app)
        return samples if value(samples, "ordergraph_active_subscriptions") == 0 else None

    samples = await eventually(no_subscriptions)
    assert samples is not None, "subscriptions of earlier tests never closed"
    return samples


async def test_a_paid_order_moves_every_counter(app: Harness, mailbox: Mailbox) -> None:
    before = await quiet(app)
    tee = await make_product("TEE", stock=5)
    token = app.token("meg")
    payload = await checked_out_order(app, token, tee, 2)
    order_id = payload["orderId"]
    empty = await app.gql(CHECKOUT, token=token)
    assert empty["data"]["checkout"]["userErrors"][0]["code"] == "CART_EMPTY"

    async with Follower(app.url, token, order_id, TRANSPORT_WS) as follower:
        await follower.next()
        during = await scrape(app)
        assert value(during, "ordergraph_active_subscriptions") == 1

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


@pytest.mark.parametrize(
    ("token", "debug", "sent", "status"),
    [
        ("scrape-secret", False, None, 401),
        ("scrape-secret", False, "Bearer nope", 401),
        ("scrape-secret", False, "Bearer café", 401),
        ("scrape-secret", False, "Basic scrape-secret", 401),
        ("scrape-secret", False, "Bearer scrape-secret", 200),
        (None, False, None, 403),
        (None, False, "Bearer anything", 403),
        (None, True, None, 200),
    ],
)
async def test_who_may_scrape(
    app: Harness, token: str | None, debug: bool, sent: str | None, status: int
) -> None:
    """With METRICS_TOKEN a scrape needs it; without, only DEBUG (the demo) serves metrics."""
    settings = app.asgi.state.settings
    app.asgi.state.settings = replace(settings, metrics_token=token, debug=debug)
    try:
        headers = {"Authorization": sent.encode()} if sent is not None else {}
        response = await app.http.get(f"{app.url}/metrics", headers=headers)
    finally:
        app.asgi.state.settings = settings
    assert response.status_code == status, response.text
    if status == 200:
        assert "ordergraph_active_subscriptions " in response.text
    else:
        assert "ordergraph_" not in response.text and "METRICS_TOKEN" in response.text


def test_a_killed_worker_keeps_its_counts_but_not_its_subscriptions(tmp_path: Path) -> None:
    """uvicorn's supervisor replaces a worker that died without a shutdown: what it counted
    still happened, but the subscriptions it held are gone with it."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from ordergraph import metrics; import time\n"
            "metrics.ACTIVE_SUBSCRIPTIONS.inc(3); metrics.CHECKOUTS.labels('created').inc()\n"
            "print('counted', flush=True); time.sleep(120)",
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )

    def scraped() -> str:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "from ordergraph import metrics\nprint(metrics.exposition()[0].decode())",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        assert worker.stdout is not None and worker.stdout.readline() == "counted\n"
        alive = scraped()
        assert "ordergraph_active_subscriptions 3.0" in alive
        assert 'ordergraph_checkouts_total{outcome="created"} 1.0' in alive
    finally:
        worker.kill()
        worker.wait()
    dead = scraped()
    assert "ordergraph_active_subscriptions 0.0" in dead
    assert 'ordergraph_checkouts_total{outcome="created"} 1.0' in dead
