"""Bad input never reaches a 500: each case against the running service, over HTTP and both
WebSocket protocols, and the stored state compared before and after.

Seen before the fixes: a deeply nested JSON body was a 500 (RecursionError in `json.loads`) and
a deeply nested WebSocket message dropped the socket; a lone surrogate ("\\ud800") in a
variable reached the database and came back as "Internal error"; a document with several
operations and no `operationName` ran its first operation (a mutation included); and with
introspection off, validation errors still suggested names ("Did you mean 'refundOrder'?").
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from ordergraph.domain import shipping
from ordergraph.schema import build_schema
from ordergraph.web.graphql_rules import MULTIPLE_OPERATIONS
from ordergraph.web.json_input import MAX_DEPTH
from tests.conftest import Harness
from tests.utils.dbstate import snapshot
from tests.utils.helpers import add_to_cart, checked_out_order, make_product
from tests.utils.live import GRAPHQL_WS, PROTOCOLS, TRANSPORT_WS, RawSocket

LEAKS = ("Traceback", 'File "', "RecursionError", "UnicodeEncodeError", "asyncpg", "sqlite3")
CART = "{ cart { itemCount } }"
UPSERT = """mutation($sku: String!, $name: String!) {
  upsertProduct(input: {sku: $sku, name: $name, price: 100, stock: 1}) {
    product { sku } userErrors { code }
  }
}"""
ADD = "mutation($p: ID!) { addToCart(productId: $p, quantity: 1) { userErrors { code } } }"


def _body(document: str, variables: dict[str, Any] | None = None, **extra: Any) -> bytes:
    """The request as JSON with non-ASCII escaped (`\\ud800` stays an escape: a client library
    that encodes to UTF-8 first would refuse a lone surrogate itself)."""
    return json.dumps({"query": document, "variables": variables or {}, **extra}).encode()


async def _post(app: Harness, body: bytes, token: str | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    response = await app.http.post(f"{app.url}/graphql", content=body, headers=headers)
    assert response.status_code < 500, response.text
    assert not [leak for leak in LEAKS if leak in response.text], response.text
    return response


def _nested(levels: int) -> bytes:
    """`levels` objects, each the value of the one before."""
    return b'{"a": ' * levels + b"1" + b"}" * levels


# --- deeply nested JSON ---------------------------------------------------------------------

DEEP_BODIES = {
    "100,000 nested arrays as the body": b"[" * 100_000 + b"]" * 100_000,
    "30,000 nested objects in variables": (
        b'{"query": "{ cart { itemCount } }", "variables": {"v": ' + _nested(30_000) + b"}}"
    ),
    # Within Python's recursion limit, but one past the service's: the object that holds the
    # last "a" is the body's 33rd level.
    "one level past the limit": (
        b'{"query": "{ cart { itemCount } }", "variables": {"v": ' + _nested(MAX_DEPTH - 1) + b"}}"
    ),
}


@pytest.mark.parametrize("body", DEEP_BODIES.values(), ids=list(DEEP_BODIES))
async def test_a_deeply_nested_body_is_a_400_that_says_so(app: Harness, body: bytes) -> None:
    response = await _post(app, body, app.token("shopper"))
    assert response.status_code == 400, response.text
    assert f"nested more than {MAX_DEPTH} levels deep" in response.text
    # And the service is fine.
    assert (await app.gql(CART, token=app.token("shopper")))["data"] == {"cart": {"itemCount": 0}}


async def test_nesting_within_the_limit_is_served(app: Harness) -> None:
    body = b'{"query": "{ cart { itemCount } }", "variables": {"v": ' + _nested(MAX_DEPTH - 2)
    response = await _post(app, body + b"}}", app.token("shopper"))
    assert response.status_code == 200, response.text
    assert response.json() == {"data": {"cart": {"itemCount": 0}}}


async def test_a_deeply_nested_websocket_message_is_refused_by_either_protocol(
    app: Harness,
) -> None:
    order_id = (await checked_out_order(app, app.token("alice"), await make_product()))["orderId"]
    deep = "[" * 100_000 + "]" * 100_000
    async with await RawSocket.open(app.url, TRANSPORT_WS) as raw:
        assert (await raw.init(app.token("alice")))["type"] == "connection_ack"
        await raw.socket.send(deep)
        with pytest.raises(ConnectionClosed) as closed:
            await raw.recv()
    assert closed.value.rcvd is not None, "dropped without a close frame"
    assert closed.value.rcvd.code == 4400
    assert "nested more than" in closed.value.rcvd.reason

    # graphql-ws has no close code for it: an error, and the connection carries on.
    async with await RawSocket.open(app.url, GRAPHQL_WS) as raw:
        assert (await raw.init(app.token("alice")))["type"] == "connection_ack"
        await raw.socket.send(deep)
        error = await _not_ka(raw)
        assert error["type"] == "error" and "nested more than" in error["payload"]["message"]
        await raw.subscribe(order_id)
        assert (await raw.next_order())["id"] == order_id


# --- lone surrogates ------------------------------------------------------------------------

SURROGATE_BODIES: dict[str, tuple[str, bytes]] = {
    "in the query text": ("shopper", _body(CART + " # \ud800")),
    "in addToCart's productId": ("shopper", _body(ADD, {"p": "\ud800"})),
    "in upsertProduct's name": ("staff", _body(UPSERT, {"sku": "NEW-1", "name": "Tee \ud800"})),
    "in upsertProduct's sku": ("staff", _body(UPSERT, {"sku": "\udfff", "name": "Tee"})),
    "in the operation name": ("staff", _body(CART, operationName="\ud800")),
    # A surrogate written as UTF-8 bytes (not valid UTF-8, but Python's JSON decoder takes it).
    "as raw UTF-8 bytes": (
        "staff",
        _body(UPSERT, {"sku": "NEW-2", "name": "Tee SURROGATE"}).replace(
            b"SURROGATE", b"\xed\xa0\x80"
        ),
    ),
}


@pytest.mark.parametrize("case", SURROGATE_BODIES.values(), ids=list(SURROGATE_BODIES))
async def test_a_lone_surrogate_is_a_400_and_changes_nothing(
    app: Harness, case: tuple[str, bytes]
) -> None:
    role, body = case
    product = await make_product("TEE-1")
    token = app.token("clerk", staff=True) if role == "staff" else app.token("shopper")
    await add_to_cart(app, app.token("shopper"), product)
    before = await snapshot(app.emulator)

    response = await _post(app, body, token)

    assert response.status_code == 400, response.text
    assert "lone UTF-16 surrogate" in response.text
    assert await snapshot(app.emulator) == before


async def test_a_surrogate_escape_inside_the_document_is_a_syntax_error(app: Harness) -> None:
    """Inside a GraphQL string literal `\\ud800` is GraphQL's own escape: graphql-core refuses
    it as a syntax error, a GraphQL answer that changes nothing."""
    document = (
        'mutation { upsertProduct(input: {sku: "NEW-3", name: "\\ud800", price: 1, stock: 1})'
        " { userErrors { code } } }"
    )
    before = await snapshot(app.emulator)
    response = await _post(app, _body(document), app.token("clerk", staff=True))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["data"] is None
    assert body["errors"][0]["message"].startswith("Syntax Error: Invalid Unicode escape")
    assert await snapshot(app.emulator) == before


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_lone_surrogate_over_websocket_is_refused(app: Harness, protocol: str) -> None:
    kind = "subscribe" if protocol == TRANSPORT_WS else "start"
    message = {"type": kind, "id": "1", "payload": {"query": UPSERT}}
    message["payload"]["variables"] = {"sku": "NEW-4", "name": "\ud800"}  # type: ignore[index]
    before = await snapshot(app.emulator)
    async with await RawSocket.open(app.url, protocol) as raw:
        assert (await raw.init(app.token("clerk", staff=True)))["type"] == "connection_ack"
        await raw.socket.send(json.dumps(message))
        if protocol == TRANSPORT_WS:
            with pytest.raises(ConnectionClosed) as closed:
                await raw.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
            assert "surrogate" in closed.value.rcvd.reason
        else:
            error = await _not_ka(raw)
            assert error["type"] == "error" and "surrogate" in error["payload"]["message"]
    assert await snapshot(app.emulator) == before


# --- several operations and no operationName -------------------------------------------------

CREATE = (
    'mutation Create { upsertProduct(input: {sku: "NEW-5", name: "n", price: 1, stock: 1})'
    " { userErrors { code } } }"
)
SEVERAL = {
    "query first": f"query Read {CART} {CREATE}",
    "mutation first": f"{CREATE} query Read {CART}",
}


@pytest.mark.parametrize("document", SEVERAL.values(), ids=list(SEVERAL))
async def test_several_operations_without_a_name_are_an_error_and_none_runs(
    app: Harness, document: str
) -> None:
    staff = app.token("clerk", staff=True)
    before = await snapshot(app.emulator)
    response = await _post(app, _body(document), staff)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["data"] is None
    assert [e["message"] for e in body["errors"]] == [MULTIPLE_OPERATIONS]
    assert await snapshot(app.emulator) == before

    # Named, each operation runs.
    read = await _post(app, _body(document, operationName="Read"), staff)
    assert read.json() == {"data": {"cart": {"itemCount": 0}}}
    created = await _post(app, _body(document, operationName="Create"), staff)
    assert created.json() == {"data": {"upsertProduct": {"userErrors": []}}}
    assert [p[0] for p in (await snapshot())["products"]] == ["NEW-5"]


async def test_several_operations_without_a_name_over_websocket(app: Harness) -> None:
    before = await snapshot(app.emulator)
    async with await RawSocket.open(app.url, TRANSPORT_WS) as raw:
        assert (await raw.init(app.token("clerk", staff=True)))["type"] == "connection_ack"
        await raw.send(
            {"type": "subscribe", "id": "1", "payload": {"query": SEVERAL["mutation first"]}}
        )
        answer = await raw.recv()
    assert answer["type"] == "error", answer
    assert [e["message"] for e in answer["payload"]] == [MULTIPLE_OPERATIONS]
    assert await snapshot(app.emulator) == before


# --- no suggestions with introspection off ----------------------------------------------------

MISSPELT: dict[str, tuple[str, dict[str, Any]]] = {
    "unknown field": ("{ cart { itemCont } }", {}),
    "unknown mutation": ('mutation { refundOrdr(orderId: "x") { userErrors { code } } }', {}),
    "unknown argument": ("{ products(frist: 1) { edges { cursor } } }", {}),
    "misspelt enum value": ("{ orders(status: SHIPED) { edges { cursor } } }", {}),
    "misspelt enum value in variables": (
        "query($s: OrderStatus) { orders(status: $s) { edges { cursor } } }",
        {"s": "SHIPED"},
    ),
    "unknown type": ("query($s: OrderStatu) { orders(status: $s) { edges { cursor } } }", {}),
    "unknown input field": (
        'mutation { upsertProduct(input: {skuu: "A", name: "n", price: 1, stock: 1})'
        " { userErrors { code } } }",
        {},
    ),
}


@pytest.mark.parametrize("case", MISSPELT.values(), ids=list(MISSPELT))
async def test_with_introspection_off_errors_suggest_no_names(
    app: Harness, case: tuple[str, dict[str, Any]]
) -> None:
    document, variables = case
    assert app.settings.debug is False
    response = await _post(app, _body(document, variables), app.token("clerk", staff=True))
    assert response.status_code == 200, response.text
    messages = [e["message"] for e in response.json()["errors"]]
    assert messages, response.text
    assert not [m for m in messages if "Did you mean" in m], messages
    # Still clear: the message names what was wrong.
    misspelt = next(
        w
        for w in ("itemCont", "refundOrdr", "frist", "SHIPED", "OrderStatu", "skuu")
        if w in document or w in json.dumps(variables)
    )
    assert any(misspelt in m for m in messages), messages

    # The schema itself, without the service around it: the same; with debug, suggestions stay.
    quiet = await build_schema(debug=False).execute(document, variable_values=variables)
    assert quiet.errors and not [e for e in quiet.errors if "Did you mean" in e.message]
    chatty = await build_schema(debug=True).execute(document, variable_values=variables)
    assert chatty.errors and [e for e in chatty.errors if "Did you mean" in e.message]


async def test_an_error_not_raised_on_purpose_reaches_the_client_as_internal_error(
    app: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Masked, with its path, beside a suggestion-free validation error of the same kind of
    request; logged in full on our side."""

    async def broken(**_: Any) -> list[Any]:
        raise RuntimeError('relation "secret_rates" does not exist')

    monkeypatch.setattr(shipping, "list_shipping_rates", broken)
    response = await _post(app, _body("{ shippingRates { name } }"), app.token("alice"))
    assert response.json() == {
        "data": None,
        "errors": [
            {
                "message": "Internal error",
                "locations": [{"line": 1, "column": 3}],
                "path": ["shippingRates"],
            }
        ],
    }
    assert "secret_rates" in caplog.text
    misspelt = await _post(app, _body("{ shippingRate { name } }"), app.token("alice"))
    (error,) = misspelt.json()["errors"]
    assert "shippingRate" in error["message"] and "Did you mean" not in error["message"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_over_websocket_errors_suggest_no_names_either(app: Harness, protocol: str) -> None:
    kind = "subscribe" if protocol == TRANSPORT_WS else "start"
    document = 'subscription { orderStatusChange(orderId: "x") { id } }'
    async with await RawSocket.open(app.url, protocol) as raw:
        assert (await raw.init(app.token("alice")))["type"] == "connection_ack"
        await raw.send({"type": kind, "id": "1", "payload": {"query": document}})
        answer = await _not_ka(raw)
    assert answer["type"] == "error", answer
    assert "orderStatusChange" in json.dumps(answer)
    assert "Did you mean" not in json.dumps(answer)


async def _not_ka(raw: RawSocket) -> dict[str, Any]:
    while True:
        message = await raw.recv()
        if message["type"] != "ka":
            return message
