"""Where outgoing webhooks may go, with private targets off as in production: what registration
refuses, and what a sender refuses at delivery time when a name resolves to this machine, a
private network or a cloud's metadata service.

Every name here is resolved by the test's own resolver, never by DNS, and nothing connects
outside loopback (the suite's guard fails a test that tries). A listener on loopback stands where
a refused connection would have gone, and counts the connections it gets.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from ordergraph.db import transaction
from ordergraph.domain.errors import BusinessError, ErrorCode
from ordergraph.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from ordergraph.outgoing_webhooks import endpoints
from ordergraph.outgoing_webhooks.deliveries import claim_due
from ordergraph.outgoing_webhooks.http import HookClient
from ordergraph.outgoing_webhooks.sender import WebhookSender
from ordergraph.outgoing_webhooks.targets import Resolver, TargetRefused
from ordergraph.settings import Settings
from tests.conftest import Harness
from tests.utils.helpers import checked_out_order, make_product
from tests.utils.receivers import deliveries_written

NAME = "hooks.example.test"
PUBLIC = "93.184.216.34"  # a public address: allowed alone, never connected to here


def strict(app: Harness, **changes: Any) -> Settings:
    """The test service's settings with private targets off, as in production."""
    return dataclasses.replace(app.settings, webhook_allow_private_targets=False, **changes)


def refused_count() -> float:
    value = REGISTRY.get_sample_value("ordergraph_webhook_deliveries_total", {"outcome": "refused"})
    return value or 0.0


class Listener:
    """A TCP listener on loopback that counts the connections it accepts."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0

    def accepted(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()


@asynccontextmanager
async def listening() -> AsyncIterator[Listener]:
    listener = Listener()
    server = await asyncio.start_server(listener.accepted, "127.0.0.1", 0)
    listener.port = server.sockets[0].getsockname()[1]
    try:
        yield listener
    finally:
        server.close()
        await server.wait_closed()


def resolving(answer: list[str], asked: list[tuple[str, int]]) -> Resolver:
    """A resolver that knows NAME only, and notes what it was asked."""

    async def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return list(answer) if host == NAME else []

    return resolve


# --- Registration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"http://{NAME}/x",
        "https://127.0.0.1/",
        "https://127.8.9.10:8443/hooks",
        "https://[::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://169.254.169.254/latest",
        "https://10.0.0.5/",
        "https://192.168.1.20/",
        "https://0.0.0.0/",
        "https://localhost/",
        "https://LOCALHOST./",
        "https://shop.localhost/",
        f"https://user:secret@{NAME}/",
        f"https://{NAME}/#part",
        "ftp://files.example.test/",
        "https:///nohost",
    ],
)
async def test_registration_refuses_what_is_not_a_public_https_target(
    harness: Harness, url: str
) -> None:
    # (`harness`, not `app`: nothing to empty first, and nothing may be added.)
    before = await WebhookEndpoint.all().count()
    with pytest.raises(BusinessError) as caught:
        await endpoints.create_endpoint(url, ["*"], actor="staff:sam", settings=strict(harness))
    assert caught.value.code == ErrorCode.INVALID_INPUT
    assert caught.value.problems[0].field == ("url",)
    assert await WebhookEndpoint.all().count() == before
    assert not await WebhookEndpoint.filter(url=url.strip()).exists()


async def test_registration_accepts_a_public_name_without_resolving_it(app: Harness) -> None:
    # Nothing resolves NAME here: the suite's guard would fail this test on a DNS lookup.
    endpoint, secret = await endpoints.create_endpoint(
        f"  https://{NAME}/x  ", ["order.created"], actor="staff:sam", settings=strict(app)
    )
    stored = await WebhookEndpoint.get(id=endpoint.id)
    assert (stored.url, stored.events, stored.active) == (
        f"https://{NAME}/x",
        ["order.created"],
        True,
    )
    assert secret.startswith("whsec_") and stored.secret == secret


async def test_registration_accepts_loopback_only_with_private_targets_on(app: Harness) -> None:
    assert app.settings.webhook_allow_private_targets  # the test services' setting
    endpoint, _ = await endpoints.create_endpoint(
        "http://127.0.0.1:9/hooks", ["*"], actor="staff:sam", settings=app.settings
    )
    assert await WebhookEndpoint.filter(id=endpoint.id).count() == 1


# --- The connection's guard ---------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        ["127.0.0.1"],
        ["::1"],
        ["::ffff:127.0.0.1"],
        ["169.254.169.254"],
        ["10.0.0.5"],
        ["fd00::1"],
        [PUBLIC, "127.0.0.1"],  # one bad address refuses the whole answer, before any connect
        ["0.0.0.0"],
        [],
    ],
)
async def test_the_guard_refuses_a_name_resolving_to_a_private_address(
    answer: list[str],
) -> None:
    asked: list[tuple[str, int]] = []
    client = HookClient(resolving(answer, asked), allow_private=False)
    async with listening() as listener:
        with pytest.raises(TargetRefused):
            await client.post(f"https://{NAME}:{listener.port}/x", [], b"{}")
    assert asked == [(NAME, listener.port)]
    assert listener.connections == 0


async def test_the_guard_refuses_an_address_literal_without_resolving() -> None:
    asked: list[tuple[str, int]] = []
    client = HookClient(resolving(["127.0.0.1"], asked), allow_private=False)
    async with listening() as listener:
        with pytest.raises(TargetRefused):
            await client.post(f"http://127.0.0.1:{listener.port}/x", [], b"{}")
    assert asked == []
    assert listener.connections == 0


async def test_the_guard_connects_to_the_checked_address_when_private_targets_are_on() -> None:
    """The control of the tests above: the listener does see a connection that is made."""
    asked: list[tuple[str, int]] = []
    client = HookClient(resolving(["127.0.0.1"], asked), allow_private=True)
    async with listening() as listener:
        with pytest.raises(ConnectionError):  # the listener closes without an answer
            await client.post(f"http://{NAME}:{listener.port}/x", [], b"{}")
        await client.aclose()
        for _ in range(100):
            if listener.connections:
                break
            await asyncio.sleep(0.01)
    assert asked == [(NAME, listener.port)]
    assert listener.connections == 1


# --- Refused at delivery time -------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [["127.0.0.1"], ["169.254.169.254"], [PUBLIC, "127.0.0.1"]],
    ids=["loopback", "metadata-service", "mixed"],
)
async def test_a_name_resolving_to_a_private_address_is_refused_at_delivery(
    app: Harness, answer: list[str]
) -> None:
    """The URL passed registration (a public-looking name); at delivery the name resolves to an
    address the service will not call: the attempt fails as `refused:` and nothing connects.

    The service's own sender (private targets on, the system's resolver) must never take this
    delivery: it would look NAME up in DNS. So the endpoint is paused while the order is placed
    (its delivery waits), and it is resumed in the very transaction in which the test's sender
    claims the delivery: no other sender can see it due before it is claimed. The test's sender
    retries after an hour (its retry base), so no one takes it again during the test.
    """
    settings = strict(app, webhook_retry_base_ms=3_600_000)
    asked: list[tuple[str, int]] = []
    sender = WebhookSender(settings, resolver=resolving(answer, asked))
    mug = await make_product("MUG", stock=5)
    async with listening() as listener:
        endpoint, _ = await endpoints.create_endpoint(
            f"https://{NAME}:{listener.port}/x", ["order.created"], actor="staff", settings=settings
        )
        await endpoints.set_endpoint_active(str(endpoint.id), False)
        try:
            await checked_out_order(app, app.token("alice"), mug)
            await deliveries_written()
            waiting = await WebhookDelivery.get(endpoint_id=endpoint.id)
            assert (waiting.status, waiting.attempts) == (DeliveryStatus.PENDING, 0)
            before = refused_count()

            async with transaction():
                await WebhookEndpoint.filter(id=endpoint.id).update(active=True)
                batch = await claim_due(sender.lease, limit=2, per_endpoint=2, in_flight={})
            assert [claimed.delivery.id for claimed in batch] == [waiting.id]
            (claimed,) = batch
            await sender.send(claimed)

            delivery = await WebhookDelivery.get(id=waiting.id)
            assert refused_count() == before + 1
            assert asked == [(NAME, listener.port)]
            assert listener.connections == 0
            assert delivery.status == DeliveryStatus.PENDING
            assert delivery.attempts == 1
            assert delivery.last_error is not None
            assert delivery.last_error.startswith("refused:"), delivery.last_error
            assert NAME in delivery.last_error and answer[-1] in delivery.last_error
            assert delivery.response_status is None and delivery.delivered_at is None
            assert (delivery.claim, delivery.claimed_until) == (None, None)
            # Retried as any failure: the next attempt is scheduled (after the base wait).
            assert delivery.next_attempt_at > datetime.now(UTC) + timedelta(minutes=50)
        finally:
            await sender.close()
            await endpoints.delete_endpoint(str(endpoint.id))
