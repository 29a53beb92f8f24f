"""A token's rights end when it expires, on a WebSocket too (web/token_expiry.py).

A connection authenticates once, in `connection_init`; when its token's `exp` passes, the
server closes it with 4403, which ends its subscriptions, and an operation that starts after
`exp` is refused even if the timer has not run yet. Tokens here live 1-2 seconds (`exp` is a
whole second), so each test waits about that long.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from ordergraph import events
from ordergraph.auth import credentials_from_header, issue_token
from ordergraph.models import Order, OrderStatus, PaymentStatus
from ordergraph.web.token_expiry import EXPIRED_CLOSE_CODE, TokenClock
from tests.conftest import JWT_SECRET, Harness
from tests.utils.helpers import change_order_now, checked_out_order, make_product
from tests.utils.live import GRAPHQL_WS, PROTOCOLS, SUBSCRIBE, TRANSPORT_WS, RawSocket, unique

SHORT_LIFE = 2  # seconds, as `exp` counts them: the token lives 1-2 s
AWAITING = """mutation($id: ID!) {
  markOrderAwaitingShipment(orderId: $id) { userErrors { code message } }
}"""


def short_token(user: str, *, staff: bool = False) -> tuple[str, float]:
    """A token that expires in a second or two, and its expiry (a Unix time)."""
    token = issue_token(
        JWT_SECRET, user, f"{user}@example.com", staff=staff, ttl_seconds=SHORT_LIFE
    )
    return token, credentials_from_header(JWT_SECRET, f"Bearer {token}").expires_at


async def _order(app: Harness, owner: str, *, paid: bool = False) -> str:
    product = await make_product(unique("TEE"), stock=10)
    order_id: str = (await checked_out_order(app, app.token(owner), product))["orderId"]
    if paid:
        order = await Order.get(id=order_id)
        assert order.stripe_checkout_session_id
        delivery = await app.emulator.complete_session(order.stripe_checkout_session_id)
        assert delivery.status_code == 200
        assert (await Order.get(id=order_id)).status == OrderStatus.PAYMENT_CONFIRMED
    return order_id


async def _row(order_id: str) -> tuple[Any, ...]:
    order = await Order.get(id=order_id)
    return (order.status, order.payment_status, order.version, order.updated_at)


async def _closed_code(raw: RawSocket, timeout: float) -> tuple[int | None, list[dict[str, Any]]]:
    """Read until the server closes the socket: its close code and what came before."""
    received: list[dict[str, Any]] = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            received.append(await raw.recv(timeout))
    frame = closed.value.rcvd
    return (frame.code if frame is not None else None), received


def _operation(protocol: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    kind = "subscribe" if protocol == TRANSPORT_WS else "start"
    return {"type": kind, "id": "late", "payload": {"query": query, "variables": variables}}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_connection_is_closed_with_4403_when_its_token_expires(
    app: Harness, protocol: str
) -> None:
    order_id = await _order(app, "alice")
    token, expires_at = short_token("alice")
    async with (
        await RawSocket.open(app.url, protocol) as expiring,
        await RawSocket.open(app.url, protocol) as lasting,
        await RawSocket.open(app.url, protocol) as anonymous,
    ):
        assert (await expiring.init(token))["type"] == "connection_ack"
        await expiring.subscribe(order_id)
        assert (await expiring.next_order())["id"] == order_id
        assert (await lasting.init(app.token("alice")))["type"] == "connection_ack"
        await lasting.subscribe(order_id)
        await lasting.next_order()
        assert (await anonymous.init())["type"] == "connection_ack"

        code, later = await _closed_code(expiring, timeout=expires_at - time.time() + 5)
        closed_at = time.time()

        assert code == EXPIRED_CLOSE_CODE
        assert expires_at - 0.05 <= closed_at < expires_at + 1.5, (expires_at, closed_at)
        assert [m for m in later if m["type"] != "ka"] == []  # no message after the first
        # The server dropped the subscription; the one of the lasting token remains and
        # still hears of a change, and the anonymous connection is still served.
        assert await _subscribers_become(1)
        await change_order_now(order_id, payment_status=PaymentStatus.PROCESSING)
        assert (await lasting.next_order())["paymentStatus"] == "PROCESSING"
        await anonymous.subscribe(order_id)
        refused = await _not_ka(anonymous)
        assert "UNAUTHENTICATED" in str(refused), refused


async def test_a_staff_mutation_after_expiry_is_refused_and_changes_nothing(
    app: Harness,
) -> None:
    order_id = await _order(app, "alice", paid=True)
    before = await _row(order_id)
    token, expires_at = short_token("clerk", staff=True)
    async with await RawSocket.open(app.url, TRANSPORT_WS) as raw:
        assert (await raw.init(token))["type"] == "connection_ack"
        code, _ = await _closed_code(raw, timeout=expires_at - time.time() + 5)
        assert code == EXPIRED_CLOSE_CODE
        with pytest.raises(ConnectionClosed):
            await raw.send(_operation(TRANSPORT_WS, AWAITING, {"id": order_id}))
            await raw.recv()
    # Over HTTP the same token is refused too.
    body = await app.gql(AWAITING, {"id": order_id}, token=token)
    assert body["data"] is None and body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert await _row(order_id) == before


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_an_operation_started_after_expiry_is_refused_before_the_timer_runs(
    app: Harness, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check made when each operation starts, alone: the clock's timer is not armed."""

    def start_without_timer(clock: TokenClock, expires_at: float | None) -> None:
        clock.expires_at = expires_at

    monkeypatch.setattr(TokenClock, "start", start_without_timer)
    order_id = await _order(app, "alice", paid=True)
    before = await _row(order_id)
    token, expires_at = short_token("clerk", staff=True)
    # graphql-ws runs subscriptions only; graphql-transport-ws runs the staff mutation.
    late = (
        _operation(protocol, AWAITING, {"id": order_id})
        if protocol == TRANSPORT_WS
        else _operation(protocol, SUBSCRIBE, {"id": order_id})
    )
    async with await RawSocket.open(app.url, protocol) as raw:
        assert (await raw.init(token))["type"] == "connection_ack"
        await asyncio.sleep(expires_at - time.time() + 0.1)
        if protocol == TRANSPORT_WS:
            await raw.send({"type": "ping"})
            assert (await raw.recv())["type"] == "pong"  # still open: no timer closed it
        await raw.send(late)
        code, answered = await _closed_code(raw, timeout=5)
    assert code == EXPIRED_CLOSE_CODE
    assert [m for m in answered if m["type"] != "ka"] == []
    assert await _row(order_id) == before

    # The same operation with a valid token is carried out: it was refused for the expiry.
    async with await RawSocket.open(app.url, TRANSPORT_WS) as raw:
        assert (await raw.init(app.token("clerk", staff=True)))["type"] == "connection_ack"
        await raw.send(_operation(TRANSPORT_WS, AWAITING, {"id": order_id}))
        answer = await raw.recv()
        assert answer["payload"]["data"]["markOrderAwaitingShipment"]["userErrors"] == []
    assert (await Order.get(id=order_id)).status == OrderStatus.AWAITING_SHIPMENT


async def test_a_legacy_connection_renewed_with_a_fresh_token_outlives_the_first(
    app: Harness,
) -> None:
    """graphql-ws allows a second `connection_init`: its token's expiry replaces the first."""
    order_id = await _order(app, "alice")
    token, expires_at = short_token("alice")
    async with await RawSocket.open(app.url, GRAPHQL_WS) as raw:
        assert (await raw.init(token))["type"] == "connection_ack"
        await raw.send(
            {
                "type": "connection_init",
                "payload": {"authorization": f"Bearer {app.token('alice')}"},
            }
        )
        assert (await _not_ka(raw))["type"] == "connection_ack"
        await asyncio.sleep(expires_at - time.time() + 0.2)
        await raw.subscribe(order_id)
        assert (await raw.next_order())["id"] == order_id


async def _not_ka(raw: RawSocket) -> dict[str, Any]:
    while True:
        message = await raw.recv()
        if message["type"] != "ka":
            return message


async def _subscribers_become(count: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while len(events.current_transport().fanout) != count:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True
