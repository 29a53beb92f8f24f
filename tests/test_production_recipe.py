"""The README's production recipe, exercised: `ordergraph serve --workers 2` on PostgreSQL with
Redis events, JSON logs and the access log, Stripe's webhook and SMTP configured as there.

One purchase goes through the two workers that share the port: the shopper's subscription
hears of the payment whichever worker took the webhook, one receipt is sent, every log line is
a JSON object, and `/metrics` gives the same sums whichever worker answers the scrape.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ordergraph.models import Order
from tests.conftest import BACKEND, METRICS_TOKEN, Harness, Mailbox, SmtpServer, service_env
from tests.utils.helpers import checked_out_order, make_product
from tests.utils.live import (
    TRANSPORT_WS,
    Follower,
    ServerProcess,
    eventually,
    redis_events_url,
    unique,
)

__all__ = ["redis_events_url"]  # a fixture, used by name

pytestmark = pytest.mark.skipif(
    BACKEND != "postgres", reason="the recipe runs on PostgreSQL (ORDERGRAPH_TEST_DB=postgres)"
)


@pytest.fixture(scope="module")
async def service(
    harness: Harness,
    database_url: str,
    stripe_server: tuple[object, str],
    smtp: SmtpServer,
    redis_events_url: str,
) -> AsyncIterator[ServerProcess]:
    env = service_env(
        database_url,
        stripe_server[1],
        smtp.port,
        EVENTS_URL=redis_events_url,
        LOG_FORMAT="json",
        ACCESS_LOG="true",
        SWEEP_INTERVAL_SECONDS="0",
    )
    server = ServerProcess(env, "recipe", "--workers", "2")
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


def log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    lines = server.log.read_text().splitlines()
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a log line that is not JSON: {line!r}")
    return parsed


async def worker_of(server: ServerProcess, request_id: str) -> int:
    """The worker process that took a request or a WebSocket, from its log lines."""

    async def logged() -> int | None:
        for line in log_lines(server):
            if line.get("request_id") == request_id:
                return int(line["process"])
        return None

    worker = await eventually(logged, timeout=5)
    assert worker is not None, f"no log line names {request_id}"
    return int(worker)


async def scrape(url: str, request_id: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with httpx.AsyncClient() as fresh:  # a new connection: any worker may accept it
        response = await fresh.get(
            f"{url}/metrics",
            headers={"X-Request-ID": request_id, "Authorization": f"Bearer {METRICS_TOKEN}"},
        )
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def test_two_workers_serve_one_purchase(
    app: Harness, service: ServerProcess, mailbox: Mailbox
) -> None:
    async def two_workers_started() -> set[int]:
        """On a busy machine the second worker may say so after the first one answers."""
        started = {
            line["process"]
            for line in log_lines(service)
            if line["message"].startswith("Started server process")
        }
        return started if len(started) == 2 else set()

    assert len(await eventually(two_workers_started, timeout=15)) == 2

    shopper = unique("recipe-shopper")
    token = app.token(shopper)
    tee = await make_product(unique("TEE"), stock=3)
    payload = await checked_out_order(dataclasses.replace(app, url=service.url), token, tee, 2)
    order_id = payload["orderId"]
    order = await Order.get(id=order_id)
    assert order.stripe_checkout_session_id

    # One subscriber on each worker: whichever takes the webhook, the other hears of it only
    # through Redis.
    followers: dict[int, Follower] = {}
    async with AsyncExitStack() as stack:
        for attempt in range(40):
            request_id = f"ws-{attempt}"
            follower = await stack.enter_async_context(
                Follower(service.url, token, order_id, TRANSPORT_WS, {"X-Request-ID": request_id})
            )
            assert (await follower.next())["status"] == "PENDING_PAYMENT"
            followers.setdefault(await worker_of(service, request_id), follower)
            if len(followers) == 2:
                break
        assert len(followers) == 2, "40 WebSockets all reached one worker"
        subscribed = await scrape(service.url, "scrape-while-subscribed")
        assert subscribed[("ordergraph_active_subscriptions", frozenset())] == attempt + 1

        app.emulator.webhook_url = f"{service.url}/webhooks/stripe"
        delivery = await app.emulator.complete_session(order.stripe_checkout_session_id)
        assert delivery.status_code == 200, delivery
        for follower in followers.values():
            await follower.until("PAYMENT_CONFIRMED")

    async def unsubscribed() -> bool:
        samples = await scrape(service.url, "scrape-after")
        return samples[("ordergraph_active_subscriptions", frozenset())] == 0

    assert await eventually(unsubscribed), "the closed subscriptions are still counted"
    messages = await mailbox.wait_for(1)
    assert [m["To"] for m in messages] == [f"{shopper}@example.com"]

    event_id = delivery.event["id"]
    applied = [line for line in log_lines(service) if line.get("stripe_event_id") == event_id]
    assert applied and all(line["order_id"] == order_id for line in applied), applied
    assert any(line["message"].endswith(": applied") for line in applied)

    # Scrapes on fresh connections land on both workers; each gives the same sums.
    created = ("ordergraph_checkouts_total", frozenset({("outcome", "created")}))
    confirmed = (
        "ordergraph_order_transitions_total",
        frozenset({("from_status", "PENDING_PAYMENT"), ("to_status", "PAYMENT_CONFIRMED")}),
    )
    answered_by: dict[int, tuple[float, float]] = {}
    for attempt in range(200):
        request_id = f"scrape-{attempt}"
        samples = await scrape(service.url, request_id)
        answered_by[await worker_of(service, request_id)] = (samples[created], samples[confirmed])
        if len(answered_by) == 2:
            break
    assert len(answered_by) == 2, f"200 fresh connections all reached one worker: {answered_by}"
    assert set(answered_by.values()) == {(1.0, 1.0)}, answered_by
