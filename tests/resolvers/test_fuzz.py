"""Schema-driven fuzzing: operations generated from the served SDL by hypothesis-graphql, sent
over real HTTP to the running service with a staff token and a shopper token in turn.

Whatever is sent, the answer is never a 5xx, never shows a stack trace, SQL or a driver's
name, and never an unexpected ("Internal error") failure; every error raised while executing
carries an `extensions.code`. Afterwards the stored data still satisfies the shop's
constraints and the service still answers an ordinary query.

Generated IDs, Ints and Strings are mixed with real ids, small numbers and inputs known to be
awkward (NUL characters, cursors of odd values), so that operations reach the business code
rather than stopping at "not found". Hypothesis runs in a worker thread and hands each
operation to the test's event loop, where the service and the HTTP client live.

Beside the generated runs: each awkward input as a case of its own, requests that are not
GraphQL (bad bodies, wrong types, limits), random request bodies, and malformed WebSocket
messages.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import graphql
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, from_schema, mutations, nodes, queries
from websockets.exceptions import ConnectionClosed

from ordergraph.models import Order, OutboxEmail, OutboxStatus, WebhookDelivery, WebhookEndpoint
from ordergraph.outgoing_webhooks import endpoints
from ordergraph.schema import schema_sdl
from tests.conftest import Harness, outbox_settled
from tests.utils.dbstate import constraint_violations
from tests.utils.helpers import checked_out_order, make_product
from tests.utils.live import TRANSPORT_WS, RawSocket
from tests.utils.receivers import receiving

SDL = schema_sdl()
LEAKS = ("Traceback", 'File "', "asyncpg", "sqlite3", "IntegrityError", "SELECT ", "INSERT ")

# hypothesis-graphql itself draws with `random` inside its strategies.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")

# Operations per test; together at least MIN_OPERATIONS.
QUERY_EXAMPLES = 450
MUTATION_EXAMPLES = 650
INVALID_EXAMPLES = 150
MIN_OPERATIONS = 1000
assert QUERY_EXAMPLES + MUTATION_EXAMPLES + INVALID_EXAMPLES >= MIN_OPERATIONS

# Ids of the rows the fuzz world holds, read by the ID strategy when it draws (set before
# Hypothesis runs, unchanged while it does).
ID_POOL: list[str] = []
# Strings that mean something to the service (a webhook receiver's URL, event types), drawn
# beside the awkward ones so that registering an endpoint can succeed.
STRING_POOL: list[str] = []
# A paused webhook endpoint's URL: nothing listens there, and nothing is sent while it is paused.
NOWHERE = "http://127.0.0.1:9/fuzz"


def _cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


AWKWARD_STRINGS = [
    "",
    " ",
    "\x00",
    "TEE\x00",
    "1Z999",
    "UPS",
    "x" * 300,
    "'; DROP TABLE products; --",
    "%_\\",
    "\u202e\ufeff",
    "²",
    "99999999999999999999",
    "-1",
    _cursor("\x00"),
    _cursor("TEE"),
    _cursor("2020-01-01|00000000-0000-4000-8000-000000000000"),
    _cursor("2020-01-01T00:00:00+00:00|00000000-0000-4000-8000-000000000000"),
    _cursor("9999-12-31T23:59:59+14:00|00000000-0000-4000-8000-000000000000"),
    _cursor("2020-01-01T00:00:00+00:00|\x00"),
    _cursor("|"),
    "not a cursor",
    "====",
]

_pooled_id = st.integers(0, 1_000).map(lambda i: ID_POOL[i % len(ID_POOL)] if ID_POOL else "0")
ID_VALUES = st.one_of(
    _pooled_id,
    _pooled_id,
    st.uuids().map(str),
    st.sampled_from(AWKWARD_STRINGS),
    st.text(max_size=40),
    st.integers(-(2**31), 2**31 - 1).map(str),
).map(nodes.String)
INT_VALUES = st.one_of(
    st.integers(-2, 12), st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1000, 1001])
).map(nodes.Int)
_pooled_string = st.integers(0, 1_000).map(
    lambda i: STRING_POOL[i % len(STRING_POOL)] if STRING_POOL else ""
)
STRING_VALUES = st.one_of(
    st.sampled_from(AWKWARD_STRINGS), st.text(max_size=80), st.text(max_size=5), _pooled_string
).map(nodes.String)
CUSTOM = {"ID": ID_VALUES, "Int": INT_VALUES, "String": STRING_VALUES}


def executed_errors_without_code(body: Any) -> list[dict[str, Any]]:
    """Errors raised while executing a field (they have a `path`) that carry no code."""
    errors = (body.get("errors") or []) if isinstance(body, dict) else []
    return [e for e in errors if e.get("path") and not (e.get("extensions") or {}).get("code")]


def clean_answer_problems(status: int, text: str) -> list[str]:
    """What is wrong with an answer to any request, however bad the request was."""
    problems = []
    if status >= 500:
        problems.append(f"HTTP {status}")
    problems += [f"answer contains {leak!r}" for leak in LEAKS if leak in text]
    if status == 200:
        try:
            body = json.loads(text)
        except ValueError:
            return [*problems, "a 200 answer that is not JSON"]
        errors = body.get("errors") or []
        if any(e.get("message") == "Internal error" for e in errors):
            problems.append("Internal error (an exception the service did not expect)")
        elif executed_errors_without_code(body):
            problems.append("an execution error without extensions.code")
    return problems


def outcomes(body: dict[str, Any]) -> list[str]:
    """How each root field of an answer ended (`field:ok`, `field:<userError code>`,
    `field:null`, `field:answered` when no userErrors were asked for) and the codes of
    GraphQL errors (`invalid` for a refused document): to show the runs reach the business
    code, not only the validator."""
    seen = [(e.get("extensions") or {}).get("code") or "invalid" for e in body.get("errors") or []]
    for name, value in (body.get("data") or {}).items():
        if value is None:
            seen.append(f"{name}:null")
        elif not isinstance(value, dict) or "userErrors" not in value:
            seen.append(f"{name}:answered")
        else:
            codes = [e.get("code") or "error" for e in value["userErrors"]]
            seen += [f"{name}:{code}" for code in codes] or [f"{name}:ok"]
    return seen


@dataclass
class Sender:
    """Sends operations from Hypothesis's thread through the test's loop, and counts them."""

    app: Harness
    loop: asyncio.AbstractEventLoop
    tokens: dict[str, str]
    sent: int = 0
    by_role: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def _post(self, document: str, token: str) -> tuple[int, str]:
        response = await self.app.http.post(
            f"{self.app.url}/graphql",
            json={"query": document},
            headers={"Authorization": f"Bearer {token}"},
        )
        return response.status_code, response.text

    def send(self, document: str, role: str) -> None:
        with self.lock:
            self.sent += 1
            self.by_role[role] += 1
        future = asyncio.run_coroutine_threadsafe(
            self._post(document, self.tokens[role]), self.loop
        )
        status, text = future.result(timeout=60)
        self.statuses[status] += 1
        problems = clean_answer_problems(status, text)
        if status == 200 and not problems:
            self.outcomes.update(outcomes(json.loads(text)))
        assert not problems, (
            f"{problems}\n--- sent as {role}:\n{document}\n--- answered:\n{text[:3000]}"
        )


async def _world(app: Harness, receiver_url: str) -> None:
    """Products, orders in several states, a dead mail, a withdrawal, webhook endpoints (one
    sending to a receiver, one paused) with their deliveries: something for every id to hit."""
    hooks = [
        (await endpoints.create_endpoint(url, ["*"], actor="staff:fuzz", settings=app.settings))[0]
        for url in (receiver_url, NOWHERE)
    ]
    await WebhookEndpoint.filter(id=hooks[1].id).update(active=False)
    products = [
        await make_product(sku, price=price, stock=stock)
        for sku, price, stock in (("TEE", 2500, 40), ("MUG", 1000, 40), ("CAP", 0, 3))
    ]
    shopper, other = app.token("fuzz-shopper"), app.token("fuzz-other")
    orders = [
        (await checked_out_order(app, shopper, products[0], 2))["orderId"],
        (await checked_out_order(app, shopper, products[1], 1))["orderId"],
        (await checked_out_order(app, other, products[0], 1))["orderId"],
    ]
    paid = await Order.get(id=orders[1])
    assert paid.stripe_checkout_session_id
    delivery = await app.emulator.complete_session(paid.stripe_checkout_session_id)
    assert delivery.status_code == 200, delivery.body
    dead = await OutboxEmail.create(
        dedupe_key="fuzz-dead",
        order_id=orders[0],
        recipient="fuzz@bounce.test",
        subject="Your order",
        text_body="Thank you",
        html_body="<p>Thank you</p>",
        status=OutboxStatus.DEAD,
        attempts=5,
        next_attempt_at=datetime.now(UTC),
    )
    # A withdrawal requested on the paid order, for the return mutations to hit.
    body = await app.gql(
        "mutation($o: ID!) { requestWithdrawal(orderId: $o) { orderReturn { id } } }",
        {"o": orders[1]},
        token=shopper,
    )
    return_id = body["data"]["requestWithdrawal"]["orderReturn"]["id"]
    deliveries = await WebhookDelivery.all().order_by("id").values_list("id", flat=True)
    assert len(deliveries) >= 2 * len(orders)
    ID_POOL[:] = (
        [str(p.id) for p in products]
        + orders
        + [str(dead.id), return_id]
        + [str(h.id) for h in hooks]
        + [str(d) for d in deliveries]
    )
    STRING_POOL[:] = [receiver_url, NOWHERE, "*", "order.paid", "return.requested"]


async def _fuzz(app: Harness, strategy: st.SearchStrategy[str], examples: int) -> Sender:
    async with receiving() as receiver:
        return await _fuzz_with(app, strategy, examples, receiver.url)


async def _fuzz_with(
    app: Harness, strategy: st.SearchStrategy[str], examples: int, receiver_url: str
) -> Sender:
    await _world(app, receiver_url)
    tokens = {"staff": app.token("fuzz-staff", staff=True), "shopper": app.token("fuzz-shopper")}
    sender = Sender(app, asyncio.get_running_loop(), tokens)

    # No shrinking: the service keeps state between operations, so a smaller replay is not
    # the same experiment; the failing operation is reported as it was sent.
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )
    # Staff and shopper in turn, chosen from the document itself so that a failing example
    # replays with the caller it failed with.
    @given(document=strategy)
    def run(document: str) -> None:
        sender.send(document, "staff" if zlib.crc32(document.encode()) % 2 else "shopper")

    try:
        await asyncio.to_thread(run)
    finally:
        await app.emulator.drain()
        await outbox_settled(timeout=60)
    print(
        f"sent {sender.sent} operations ({dict(sender.by_role)}); "
        f"HTTP statuses {dict(sender.statuses)}"
    )
    print(f"outcomes: {sorted(sender.outcomes.items())}")
    print(f"mail written: {await OutboxEmail.all().count()}")
    assert sender.sent >= examples
    assert min(sender.by_role.values()) >= sender.sent // 5, sender.by_role  # both callers
    assert await constraint_violations() == []
    body = await app.gql("{ products(first: 5) { edges { node { sku stock } } } }")
    assert "errors" not in body and body["data"]["products"]["edges"], body
    return sender


async def test_fuzz_queries(app: Harness) -> None:
    await _fuzz(app, queries(SDL, custom_scalars=CUSTOM), QUERY_EXAMPLES)


async def test_fuzz_mutations(app: Harness) -> None:
    await _fuzz(app, mutations(SDL, custom_scalars=CUSTOM), MUTATION_EXAMPLES)


async def test_fuzz_operations_that_break_the_schema(app: Harness) -> None:
    """Wrong argument types, missing required arguments, unknown enum values: refused as
    invalid (a 200 with errors, or a 400), never a failure of the service."""
    sender = await _fuzz(
        app, from_schema(SDL, custom_scalars=CUSTOM, mode=Mode.NEGATIVE), INVALID_EXAMPLES
    )
    assert sender.statuses[200] + sender.statuses[400] == sender.sent


def test_the_generated_operations_are_valid_against_the_schema() -> None:
    """The positive strategies generate what the schema accepts, so the runs above reach the
    resolvers instead of stopping at validation."""
    schema = graphql.build_schema(SDL)
    documents: list[str] = []

    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
    @given(document=from_schema(SDL, custom_scalars=CUSTOM))
    def collect(document: str) -> None:
        documents.append(document)

    collect()
    for document in documents:
        assert graphql.validate(schema, graphql.parse(document)) == [], document


# Inputs that generated runs reach only by luck, each sent as its own case.
REPLAY = (
    "mutation($d: ID!) { replayWebhookDelivery(id: $d) { delivery { id } userErrors { code } } }"
)
EDGES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "products after a cursor of NUL": (
        "shopper",
        "query($a: String) { products(after: $a) { edges { node { sku } } } }",
        {"a": _cursor("\x00")},
    ),
    "myOrders after a cursor with a naive timestamp": (
        "shopper",
        "query($a: String) { myOrders(after: $a) { edges { node { id } } } }",
        {"a": _cursor("2020-01-01T00:00:00|00000000-0000-4000-8000-000000000000")},
    ),
    "orders after a cursor at the end of time": (
        "staff",
        "query($a: String) { orders(after: $a) { edges { node { id } } } }",
        {"a": _cursor("9999-12-31T23:59:59.999999-23:59|00000000-0000-4000-8000-000000000000")},
    ),
    "upsertProduct with NUL in the SKU": (
        "staff",
        """mutation($s: String!) { upsertProduct(input: {sku: $s, name: "N", price: 1, stock: 1})
             { product { sku } userErrors { code field } } }""",
        {"s": "TEE\x00"},
    ),
    "upsertProduct with NUL in the name": (
        "staff",
        """mutation($n: String!) { upsertProduct(input: {sku: "NUL-1", name: $n, price: 1,
             stock: 1}) { product { sku } userErrors { code field } } }""",
        {"n": "a\x00b"},
    ),
    "markOrderShipped with NUL in the tracking number": (
        "staff",
        """mutation($o: ID!, $t: String!) { markOrderShipped(orderId: $o, trackingNumber: $t)
             { order { status } userErrors { code field } } }""",
        {"o": "<paid order>", "t": "1Z\x00999"},
    ),
    "retryEmail with a superscript digit": (
        "staff",
        "mutation($m: ID!) { retryEmail(id: $m) { email { id } userErrors { code } } }",
        {"m": "²"},
    ),
    "retryEmail with an id past 64 bits": (
        "staff",
        "mutation($m: ID!) { retryEmail(id: $m) { email { id } userErrors { code } } }",
        {"m": "99999999999999999999"},
    ),
    "setPromotionCodeActive with a superscript digit as id": (
        "staff",
        """mutation { setPromotionCodeActive(id: "\u00b2", active: false)
             { promotionCode { id } userErrors { code } } }""",
        {},
    ),
    "retryEmail with a superscript digit as id": (
        "staff",
        "mutation($m: ID!) { retryEmail(id: $m) { email { id } userErrors { code } } }",
        {"m": "\u00b2"},
    ),
    "retryDeadEmails twice in one operation": (
        "staff",
        """mutation { a: retryDeadEmails { retried userErrors { code } }
             b: retryDeadEmails { retried userErrors { code } } }""",
        {},
    ),
    "retryDeadEmails by a shopper": (
        "shopper",
        "mutation { retryDeadEmails { retried userErrors { code } } }",
        {},
    ),
    "createWebhookEndpoint with NUL in the URL": (
        "staff",
        """mutation($u: String!) { createWebhookEndpoint(url: $u, events: ["*"])
             { endpoint { id } secret userErrors { code field } } }""",
        {"u": "http://127.0.0.1:9/\x00"},
    ),
    "createWebhookEndpoint with NUL in an event type": (
        "staff",
        """mutation($e: String!) { createWebhookEndpoint(url: "http://127.0.0.1:9/", events: [$e])
             { endpoint { id } secret userErrors { code field } } }""",
        {"e": "order.paid\x00"},
    ),
    "createWebhookEndpoint with a thousand event types": (
        "staff",
        """mutation($e: [String!]!) { createWebhookEndpoint(url: "http://127.0.0.1:9/", events: $e)
             { endpoint { id } secret userErrors { code field } } }""",
        {"e": [f"order.{n}" for n in range(1000)]},
    ),
    "replayWebhookDelivery with a superscript digit as id": (
        "staff",
        REPLAY,
        {"d": "\u00b2"},
    ),
    "replayWebhookDelivery with Arabic-Indic digits as id": (
        "staff",
        REPLAY,
        {"d": "\u0663\u0664"},
    ),
    "replayWebhookDelivery with an id past 64 bits": (
        "staff",
        REPLAY,
        {"d": "99999999999999999999"},
    ),
    "setWebhookEndpointActive with NUL in the id": (
        "staff",
        """mutation($w: ID!) { setWebhookEndpointActive(id: $w, active: true)
             { endpoint { id } userErrors { code } } }""",
        {"w": "\x00"},
    ),
    "deleteWebhookEndpoint with a braced UUID": (
        "staff",
        """mutation($w: ID!) { deleteWebhookEndpoint(id: $w)
             { endpoint { id } userErrors { code } } }""",
        {"w": "{00000000-0000-4000-8000-000000000000}"},
    ),
    "webhookDeliveries with NUL as status": (
        "staff",
        "query($s: String) { webhookDeliveries(status: $s) { id } }",
        {"s": "\x00"},
    ),
    "webhookDeliveries with NUL in the endpoint id": (
        "staff",
        "query($e: ID) { webhookDeliveries(endpointId: $e) { id } }",
        {"e": "\x00"},
    ),
    "addToCart with the largest Int": (
        "shopper",
        """mutation($p: ID!) { addToCart(productId: $p, quantity: 2147483647)
             { cart { itemCount } userErrors { code field } } }""",
        {"p": "<product>"},
    ),
    "order with NUL in the id": (
        "shopper",
        "query($o: ID!) { order(id: $o) { id } }",
        {"o": "\x00"},
    ),
}


@pytest.mark.parametrize("edge", EDGES.values(), ids=list(EDGES))
async def test_awkward_inputs_get_a_clear_answer(
    app: Harness, edge: tuple[str, str, dict[str, Any]]
) -> None:
    role, document, variables = edge
    product = await make_product("TEE", price=2500, stock=10)
    order_id = (await checked_out_order(app, app.token("fuzz-shopper"), product))["orderId"]
    session_id = (await Order.get(id=order_id)).stripe_checkout_session_id
    assert session_id
    assert (await app.emulator.complete_session(session_id)).status_code == 200
    awaiting = (
        "mutation($o: ID!) { markOrderAwaitingShipment(orderId: $o) { userErrors { code } } }"
    )
    staff = app.token("fuzz-staff", staff=True)
    assert (await app.gql(awaiting, {"o": order_id}, token=staff))["data"] == {
        "markOrderAwaitingShipment": {"userErrors": []}
    }
    placeholders = {"<paid order>": order_id, "<product>": str(product.id)}
    filled = {
        key: placeholders.get(value, value) if isinstance(value, str) else value
        for key, value in variables.items()
    }
    token = staff if role == "staff" else app.token("fuzz-shopper")

    response = await app.http.post(
        f"{app.url}/graphql",
        json={"query": document, "variables": filled},
        headers={"Authorization": f"Bearer {token}"},
    )

    assert clean_answer_problems(response.status_code, response.text) == [], response.text
    assert await constraint_violations() == []


# Requests that are not GraphQL at all, or not as this service takes it.
CART_QUERY = "{ cart { itemCount } }"
MALFORMED: dict[str, tuple[int, dict[str, Any]]] = {
    "body not JSON": (400, {"content": b"{ cart {"}),
    "body not UTF-8": (400, {"content": b'{"query": "{ cart { itemCount } }\xff"}'}),
    "body a JSON array": (400, {"json": [{"query": CART_QUERY}]}),
    "body JSON null": (400, {"content": b"null"}),
    "body a JSON number": (400, {"content": b"1"}),
    "body a JSON string": (400, {"content": b'"{ cart { itemCount } }"'}),
    "body JSON true": (400, {"content": b"true"}),
    "query not a string": (400, {"json": {"query": 1}}),
    "variables not an object": (400, {"json": {"query": CART_QUERY, "variables": []}}),
    "extensions not an object": (400, {"json": {"query": CART_QUERY, "extensions": []}}),
    "no query": (400, {"json": {}}),
    "unknown operation name": (
        400,
        {"json": {"query": "query A " + CART_QUERY, "operationName": "Z"}},
    ),
    "text/plain": (
        400,
        {"content": CART_QUERY.encode(), "headers": {"Content-Type": "text/plain"}},
    ),
    "over 256 KiB": (413, {"json": {"query": CART_QUERY, "variables": {"x": "y" * 300_000}}}),
    "variable of the wrong type": (
        200,
        {"json": {"query": "query($p: ID!) { product(id: $p) { id } }", "variables": {"p": [1]}}},
    ),
    "Int variable past 32 bits": (
        200,
        {
            "json": {
                "query": "query($f: Int) { products(first: $f) { edges { cursor } } }",
                "variables": {"f": 2**40},
            }
        },
    ),
    "introspection": (200, {"json": {"query": "{ __schema { types { name } } }"}}),
    "too many aliases": (
        200,
        {"json": {"query": "{ %s }" % " ".join(f"a{i}: cart {{ itemCount }}" for i in range(31))}},
    ),
    "too many tokens": (200, {"json": {"query": "{ cart { %s } }" % ("itemCount " * 2001)}}),
    "too deep": (200, {"json": {"query": "{ cart " + "{ lines " * 13 + "}" * 14}}),
    "fragment cycle": (
        200,
        {
            "json": {
                "query": "{ cart { ...A } } fragment A on Cart { ...B } fragment B on Cart { ...A }"
            }
        },
    ),
    "subscription over HTTP": (
        200,
        {"json": {"query": 'subscription { orderStatusChanged(orderId: "x") { id } }'}},
    ),
}


@pytest.mark.parametrize("case", MALFORMED.values(), ids=list(MALFORMED))
async def test_malformed_requests_are_refused_cleanly(
    app: Harness, case: tuple[int, dict[str, Any]]
) -> None:
    status, request = case[0], dict(case[1])
    headers = {"Authorization": f"Bearer {app.token('fuzz-shopper')}", **request.pop("headers", {})}
    if "content" in request:
        headers.setdefault("Content-Type", "application/json")
    response = await app.http.post(f"{app.url}/graphql", headers=headers, **request)
    assert response.status_code == status, response.text
    assert clean_answer_problems(response.status_code, response.text) == [], response.text
    if status == 200:
        body = response.json()
        assert body["errors"] and body["data"] is None, body


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["query", "variables", "operationName", "x"]), children)
    ),
    max_leaves=12,
)
RAW_BODIES = st.one_of(
    st.binary(max_size=200),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries(
        {"query": st.sampled_from([CART_QUERY, "{", "mutation { checkout { orderId } }"])},
        optional={"variables": JSON_VALUES, "operationName": JSON_VALUES},
    ).map(lambda value: json.dumps(value).encode()),
)
RAW_EXAMPLES = 150


async def test_fuzz_raw_request_bodies(app: Harness) -> None:
    """Bytes and JSON of any shape as the body of `POST /graphql`: a 4xx or a GraphQL answer,
    never a 5xx."""
    loop = asyncio.get_running_loop()
    token = app.token("fuzz-shopper")
    sent: list[int] = []

    async def post(body: bytes) -> tuple[int, str]:
        response = await app.http.post(
            f"{app.url}/graphql",
            content=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        return response.status_code, response.text

    @settings(
        max_examples=RAW_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    )
    @given(body=RAW_BODIES)
    def run(body: bytes) -> None:
        status, text = asyncio.run_coroutine_threadsafe(post(body), loop).result(timeout=60)
        sent.append(status)
        problems = clean_answer_problems(status, text)
        assert not problems, f"{problems}\n--- sent:\n{body!r}\n--- answered:\n{text[:2000]}"

    await asyncio.to_thread(run)
    assert len(sent) >= RAW_EXAMPLES


# WebSocket messages that are not graphql-transport-ws messages: the protocol says the server
# closes the socket with 4400 ("Invalid message"), not that it drops it with a server error.
BAD_WS_MESSAGES = {
    "not JSON": "not json",
    "JSON null": "null",
    "JSON array": "[]",
    "JSON number": "1",
    "subscribe without payload": json.dumps({"type": "subscribe", "id": "1", "payload": None}),
    "unknown type": json.dumps({"type": "start", "id": "1", "payload": {}}),
}


@pytest.mark.parametrize("message", BAD_WS_MESSAGES.values(), ids=list(BAD_WS_MESSAGES))
async def test_malformed_websocket_messages_close_with_4400(app: Harness, message: str) -> None:
    async with await RawSocket.open(app.url, TRANSPORT_WS) as raw:
        assert (await raw.init(app.token("fuzz-shopper")))["type"] == "connection_ack"
        await raw.socket.send(message)
        with pytest.raises(ConnectionClosed) as closed:
            await raw.recv()
    assert closed.value.rcvd is not None, "the server dropped the connection without a close"
    assert closed.value.rcvd.code == 4400, closed.value.rcvd
    body = await app.gql(CART_QUERY, token=app.token("fuzz-shopper"))
    assert body == {"data": {"cart": {"itemCount": 0}}}
