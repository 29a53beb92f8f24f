"""Outgoing webhooks as staff manage them through GraphQL: registering an endpoint (its secret
shown once), the URLs and event types refused, pausing, deleting, listing deliveries, replay,
and the endpoint limit under concurrency. Who may do it: tests/resolvers/test_authorization.py;
what is sent: tests/outgoing_webhooks/."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ordergraph.domain.errors import BusinessError, ErrorCode
from ordergraph.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint, WebhookEvent
from ordergraph.outgoing_webhooks import endpoints
from tests.conftest import Harness
from tests.utils.dbstate import snapshot
from tests.utils.helpers import add_to_cart, checkout, make_product
from tests.utils.receivers import receiving

ENDPOINT = "endpoint { id url events active createdAt }"
CREATE = (
    """mutation($u: String!, $e: [String!]!) { createWebhookEndpoint(url: $u, events: $e) {
  %s secret userErrors { code message field } } }"""
    % ENDPOINT
)
SET_ACTIVE = (
    """mutation($id: ID!, $a: Boolean!) { setWebhookEndpointActive(id: $id, active: $a) {
  %s secret userErrors { code message field } } }"""
    % ENDPOINT
)
DELETE = (
    """mutation($id: ID!) { deleteWebhookEndpoint(id: $id) {
  %s secret userErrors { code message field } } }"""
    % ENDPOINT
)
DELIVERY = (
    "id endpointId eventId eventType status attempts responseStatus lastError nextAttemptAt "
    "createdAt"
)
REPLAY = (
    """mutation($id: ID!) { replayWebhookDelivery(id: $id) {
  delivery { %s } userErrors { code message field } } }"""
    % DELIVERY
)
ENDPOINTS = "{ webhookEndpoints { id url events active createdAt } }"
DELIVERIES = (
    """query($e: ID, $s: String, $f: Int) {
  webhookDeliveries(endpointId: $e, status: $s, first: $f) { %s } }"""
    % DELIVERY
)
# Nothing listens there, and no test sends anything to it.
NOWHERE = "http://127.0.0.1:9/hooks"


def _staff(app: Harness) -> str:
    return app.token("sam", staff=True)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _mutate(app: Harness, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    body = await app.gql(query, variables, token=_staff(app))
    assert "errors" not in body, body
    [answer] = body["data"].values()
    result: dict[str, Any] = answer
    return result


async def _created(app: Harness, url: str, events: list[str]) -> tuple[str, str]:
    """A new endpoint's id and secret, registered through the API."""
    answer = await _mutate(app, CREATE, {"u": url, "e": events})
    assert answer["userErrors"] == [], answer
    return answer["endpoint"]["id"], answer["secret"]


async def _deliveries(app: Harness, **variables: Any) -> list[dict[str, Any]]:
    body = await app.gql(DELIVERIES, variables, token=_staff(app))
    assert "errors" not in body, body
    rows: list[dict[str, Any]] = body["data"]["webhookDeliveries"]
    return rows


async def _placed(app: Harness, shopper: str) -> str:
    """An order (whose order.created event the service writes at checkout)."""
    product = await make_product(f"SKU-{shopper}", price=1000, stock=5)
    await add_to_cart(app, app.token(shopper), product)
    placed = await checkout(app, app.token(shopper))
    assert placed["userErrors"] == [], placed
    return str(placed["orderId"])


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "the awaited state did not come"
        await asyncio.sleep(0.05)


async def _status_of(delivery_id: str, status: DeliveryStatus) -> None:
    async def reached() -> bool:
        row = await WebhookDelivery.get(id=int(delivery_id))
        return row.status == status and row.claim is None

    await _until(reached)


# Registering


async def test_the_secret_is_shown_once_at_creation_and_never_again(app: Harness) -> None:
    answer = await _mutate(app, CREATE, {"u": NOWHERE, "e": ["order.paid", " order.created"]})

    assert answer["userErrors"] == [], answer
    secret = answer["secret"]
    assert secret.startswith("whsec_") and len(secret) > 30
    endpoint = answer["endpoint"]
    assert (endpoint["url"], endpoint["events"], endpoint["active"]) == (
        NOWHERE,
        ["order.created", "order.paid"],
        True,
    )
    row = await WebhookEndpoint.get(id=endpoint["id"])
    assert (row.secret, row.created_by) == (secret, "staff:sam")

    listed = await app.http.post(
        f"{app.url}/graphql", json={"query": ENDPOINTS}, headers=_bearer(_staff(app))
    )
    assert listed.json() == {"data": {"webhookEndpoints": [endpoint]}}
    assert secret not in listed.text
    # No field of an endpoint reads it, and no other mutation answers it.
    asked = await app.gql("{ webhookEndpoints { id secret } }", token=_staff(app))
    assert asked["data"] is None and "secret" in asked["errors"][0]["message"], asked
    paused = await _mutate(app, SET_ACTIVE, {"id": endpoint["id"], "a": False})
    assert paused["secret"] is None and paused["endpoint"]["active"] is False
    deleted = await _mutate(app, DELETE, {"id": endpoint["id"]})
    assert deleted["secret"] is None and deleted["endpoint"]["id"] == endpoint["id"]

    # Each endpoint has a secret of its own.
    _, other = await _created(app, NOWHERE, ["*"])
    assert other != secret and other.startswith("whsec_")


REFUSED: dict[str, tuple[str, list[str], str]] = {
    "credentials in the URL": ("http://user:pw@127.0.0.1:9/hooks", ["*"], "url"),
    "a password only": ("https://:pw@hooks.example.com/hooks", ["*"], "url"),
    "ftp": ("ftp://127.0.0.1/hooks", ["*"], "url"),
    "no scheme": ("hooks.example.com/hooks", ["*"], "url"),
    "no host": ("https:///hooks", ["*"], "url"),
    "a fragment": ("https://hooks.example.com/hooks#x", ["*"], "url"),
    "overlong URL": ("https://hooks.example.com/" + "a" * 2048, ["*"], "url"),
    "NUL in the URL": ("http://127.0.0.1:9/ho\x00oks", ["*"], "url"),
    "an unknown event type": (NOWHERE, ["order.paid", "order.teleported"], "events"),
    "no event types": (NOWHERE, [], "events"),
    "only blanks as event types": (NOWHERE, [" "], "events"),
}


@pytest.mark.parametrize("case", REFUSED.values(), ids=list(REFUSED))
async def test_bad_endpoints_are_refused_and_nothing_is_stored(
    app: Harness, case: tuple[str, list[str], str]
) -> None:
    url, events, field = case
    before = await snapshot(app.emulator)

    answer = await _mutate(app, CREATE, {"u": url, "e": events})

    assert answer["endpoint"] is None and answer["secret"] is None, answer
    assert [(e["code"], e["field"]) for e in answer["userErrors"]] == [("INVALID_INPUT", [field])]
    assert await WebhookEndpoint.all().count() == 0
    assert await snapshot(app.emulator) == before


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/hooks",
        "https://127.0.0.1/hooks",
        "https://10.0.0.8/hooks",
        "https://169.254.169.254/latest",
        "https://[::1]/hooks",
        "https://localhost/hooks",
        "https://shop.localhost/hooks",
    ],
)
async def test_without_private_targets_only_public_https_urls_are_taken(
    app: Harness, url: str
) -> None:
    """What production does (WEBHOOK_ALLOW_PRIVATE_TARGETS is off there; the test service has it
    on, for its receivers on loopback)."""
    production = dataclasses.replace(app.settings, webhook_allow_private_targets=False)
    with pytest.raises(BusinessError) as refused:
        await endpoints.create_endpoint(url, ["*"], actor="staff:sam", settings=production)
    assert (refused.value.code, refused.value.problems[0].field) == (
        ErrorCode.INVALID_INPUT,
        ("url",),
    )
    assert await WebhookEndpoint.all().count() == 0
    public = "https://hooks.example.com/hooks"
    endpoint, _ = await endpoints.create_endpoint(
        public, ["*"], actor="staff:sam", settings=production
    )
    assert [e.url for e in await WebhookEndpoint.all()] == [endpoint.url]


# Pausing, deleting


async def test_a_paused_endpoint_keeps_its_deliveries_until_it_is_resumed(app: Harness) -> None:
    async with receiving() as receiver:
        endpoint_id, secret = await _created(app, receiver.url, ["order.created"])
        paused = await _mutate(app, SET_ACTIVE, {"id": endpoint_id, "a": False})
        assert paused["userErrors"] == [] and paused["endpoint"]["active"] is False
        assert (await WebhookEndpoint.get(id=endpoint_id)).active is False

        order_id = await _placed(app, "alice")
        await asyncio.sleep(0.5)  # the sender passes over it
        assert receiver.received == []
        [waiting] = await _deliveries(app, e=endpoint_id)
        assert (waiting["status"], waiting["attempts"], waiting["eventType"]) == (
            "PENDING",
            0,
            "order.created",
        )
        assert waiting["nextAttemptAt"] is not None

        resumed = await _mutate(app, SET_ACTIVE, {"id": endpoint_id, "a": True})
        assert resumed["userErrors"] == [] and resumed["endpoint"]["active"] is True
        [got] = await receiver.wait_for(lambda got: len(got) == 1)
        await _status_of(waiting["id"], DeliveryStatus.DELIVERED)
    assert got.verifies(secret) and got.event["data"]["order"]["id"] == order_id
    [delivered] = await _deliveries(app, e=endpoint_id)
    assert {k: delivered[k] for k in ("id", "status", "attempts", "responseStatus")} == {
        "id": waiting["id"],
        "status": "DELIVERED",
        "attempts": 1,
        "responseStatus": 200,
    }
    assert delivered["nextAttemptAt"] is None and delivered["lastError"] is None


async def test_deleting_an_endpoint_deletes_its_deliveries(app: Harness) -> None:
    async with receiving() as receiver:
        gone, _ = await _created(app, receiver.url, ["*"])
        kept, _ = await _created(app, receiver.url, ["*"])
        await _placed(app, "alice")
        await receiver.wait_for(lambda got: len(got) == 2)
    assert await WebhookDelivery.filter(endpoint_id=gone).count() == 1

    answer = await _mutate(app, DELETE, {"id": gone})

    assert answer["userErrors"] == [] and answer["endpoint"]["id"] == gone, answer
    assert [str(e.id) for e in await WebhookEndpoint.all()] == [kept]
    assert await WebhookDelivery.filter(endpoint_id=gone).count() == 0
    assert [d["endpointId"] for d in await _deliveries(app)] == [kept]
    assert await WebhookEvent.all().count() == 1  # the kept endpoint's delivery needs it
    for query, variables in (
        (DELETE, {"id": gone}),
        (SET_ACTIVE, {"id": gone, "a": True}),
        (DELETE, {"id": "not-an-id"}),
        (SET_ACTIVE, {"id": "\x00", "a": False}),
    ):
        again = await _mutate(app, query, variables)
        assert [e["code"] for e in again["userErrors"]] == ["NOT_FOUND"], again
        assert again["endpoint"] is None
    assert await _deliveries(app, e=gone) == []


# Deliveries


async def test_deliveries_are_listed_newest_first_by_endpoint_and_status(app: Harness) -> None:
    async with receiving() as receiver:
        live, _ = await _created(app, receiver.url, ["order.created"])
        paused, _ = await _created(app, NOWHERE, ["order.created"])
        await _mutate(app, SET_ACTIVE, {"id": paused, "a": False})
        for shopper in ("alice", "bob", "carol"):
            await _placed(app, shopper)
        await receiver.wait_for(lambda got: len(got) == 3)
        for row in await WebhookDelivery.filter(endpoint_id=live):
            await _status_of(str(row.id), DeliveryStatus.DELIVERED)
    # One of the paused endpoint's deliveries gave up.
    oldest_waiting = await WebhookDelivery.filter(endpoint_id=paused).order_by("id").first()
    assert oldest_waiting is not None
    await WebhookDelivery.filter(id=oldest_waiting.id).update(status=DeliveryStatus.DEAD)

    everything = await _deliveries(app)
    ids = [int(d["id"]) for d in everything]
    assert len(ids) == 6 and ids == sorted(ids, reverse=True)
    assert {d["eventType"] for d in everything} == {"order.created"}

    of_live = await _deliveries(app, e=live)
    assert [d["endpointId"] for d in of_live] == [live] * 3
    assert [d["id"] for d in of_live] == [d["id"] for d in everything if d["endpointId"] == live]
    assert [d["status"] for d in of_live] == ["DELIVERED"] * 3
    assert all(d["nextAttemptAt"] is None for d in of_live)

    waiting = await _deliveries(app, e=paused, s="PENDING")
    assert [int(d["id"]) for d in waiting] == [
        d.id
        for d in await WebhookDelivery.filter(
            endpoint_id=paused, status=DeliveryStatus.PENDING
        ).order_by("-id")
    ]
    assert len(waiting) == 2 and all(d["nextAttemptAt"] is not None for d in waiting)
    [dead] = await _deliveries(app, s="DEAD")
    assert (dead["id"], dead["endpointId"], dead["nextAttemptAt"]) == (
        str(oldest_waiting.id),
        paused,
        None,
    )
    assert [d["status"] for d in await _deliveries(app, s="DELIVERED")] == ["DELIVERED"] * 3
    assert await _deliveries(app, e=live, s="DEAD") == []
    assert await _deliveries(app, f=2) == everything[:2]
    assert await _deliveries(app, f=0) == []
    # An id that names no endpoint: nothing, as for an endpoint without deliveries.
    assert await _deliveries(app, e="not-a-uuid") == []
    assert await _deliveries(app, e="00000000-0000-4000-8000-000000000000") == []
    # Their events are the ones the service wrote.
    events = {str(e.id): e.type for e in await WebhookEvent.all()}
    assert {d["eventId"] for d in everything} == set(events)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"s": "SENT"}, "status is PENDING, DELIVERED or DEAD"),
        ({"s": ""}, "status is PENDING, DELIVERED or DEAD"),
        ({"s": "\x00"}, "status is PENDING, DELIVERED or DEAD"),
        ({"f": 101}, "first must be between 0 and 100"),
        ({"f": -1}, "first must be between 0 and 100"),
    ],
)
async def test_bad_delivery_list_arguments_are_a_clear_error(
    app: Harness, variables: dict[str, Any], message: str
) -> None:
    body = await app.gql(DELIVERIES, variables, token=_staff(app))
    assert body["data"] is None, body
    [error] = body["errors"]
    assert (error["message"], error["extensions"]["code"], error["path"]) == (
        message,
        "INVALID_INPUT",
        ["webhookDeliveries"],
    )


async def test_replay_sends_a_delivery_again(app: Harness) -> None:
    async with receiving() as receiver:
        endpoint_id, secret = await _created(app, receiver.url, ["order.created"])
        await _placed(app, "alice")
        [first] = await receiver.wait_for(lambda got: len(got) == 1)
        [delivery] = await _deliveries(app)
        await _status_of(delivery["id"], DeliveryStatus.DELIVERED)
        await _mutate(app, SET_ACTIVE, {"id": endpoint_id, "a": False})

        # Paused, the replayed delivery waits: what the answer says is what is stored.
        answer = await _mutate(app, REPLAY, {"id": delivery["id"]})
        assert answer["userErrors"] == [], answer
        replayed = answer["delivery"]
        assert {k: replayed[k] for k in ("id", "endpointId", "eventId", "status", "attempts")} == {
            "id": delivery["id"],
            "endpointId": endpoint_id,
            "eventId": delivery["eventId"],
            "status": "PENDING",
            "attempts": 1,
        }
        assert replayed["nextAttemptAt"] is not None
        assert await _deliveries(app) == [replayed]

        await _mutate(app, SET_ACTIVE, {"id": endpoint_id, "a": True})
        _, again = await receiver.wait_for(lambda got: len(got) == 2)
        await _status_of(delivery["id"], DeliveryStatus.DELIVERED)
    assert again.body == first.body and again.verifies(secret)
    assert (first.delivery, again.delivery) == ((delivery["id"], 1), (delivery["id"], 2))


@pytest.mark.parametrize("delivery_id", ["424242", "0", "abc", "", "\u00b2", "9" * 19, "-1"])
async def test_replaying_an_unknown_delivery_is_not_found(app: Harness, delivery_id: str) -> None:
    before = await snapshot(app.emulator)
    answer = await _mutate(app, REPLAY, {"id": delivery_id})
    assert answer["delivery"] is None
    assert [(e["code"], e["field"]) for e in answer["userErrors"]] == [("NOT_FOUND", ["id"])]
    assert await snapshot(app.emulator) == before


# The limit


async def test_the_endpoint_limit_holds_under_concurrent_registrations(app: Harness) -> None:
    assert endpoints.MAX_ENDPOINTS == 100
    for n in range(95):
        await endpoints.create_endpoint(
            f"{NOWHERE}/{n}", ["order.paid"], actor="staff:sam", settings=app.settings
        )

    answers = await asyncio.gather(
        *(_mutate(app, CREATE, {"u": f"{NOWHERE}/racer-{n}", "e": ["*"]}) for n in range(100))
    )

    outcomes = Counter(
        "ok" if a["endpoint"] else ",".join(e["code"] for e in a["userErrors"]) for a in answers
    )
    assert outcomes == {"ok": 5, "LIMIT_EXCEEDED": 95}, outcomes
    won = [a for a in answers if a["endpoint"]]
    assert all(a["secret"].startswith("whsec_") for a in won)
    assert all(a["secret"] is None for a in answers if not a["endpoint"])
    rows = await WebhookEndpoint.all()
    assert len(rows) == 100
    assert sorted(r.slot for r in rows) == list(range(1, 101))
    assert {str(r.id) for r in rows} >= {a["endpoint"]["id"] for a in won}

    # Full: refused, until one is deleted.
    full = await _mutate(app, CREATE, {"u": NOWHERE, "e": ["*"]})
    assert [e["code"] for e in full["userErrors"]] == ["LIMIT_EXCEEDED"]
    assert (await _mutate(app, DELETE, {"id": won[0]["endpoint"]["id"]}))["userErrors"] == []
    await _created(app, NOWHERE, ["*"])
    assert await WebhookEndpoint.all().count() == 100
