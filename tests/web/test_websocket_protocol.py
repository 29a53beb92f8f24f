"""`LeanWebSocketProtocol`: an open socket keeps no handshake and no asyncio inbox or event,
and still carries messages both ways. The checks read uvicorn's protocol object as the server
holds it, so an upgrade of uvicorn or websockets that moves what the subclass replaces (a new
name for the inbox, the handshake kept elsewhere) fails here."""

from __future__ import annotations

import asyncio
import gc

from websockets.http11 import Request, Response

from ordergraph.models import PaymentStatus
from ordergraph.web import ws_protocols
from ordergraph.web.websocket_protocol import LeanWebSocketProtocol
from tests.conftest import Harness
from tests.utils.helpers import change_order_now, checked_out_order, make_product
from tests.utils.live import TRANSPORT_WS, RawSocket, unique


def _open_protocols() -> list[LeanWebSocketProtocol]:
    # By type: `isinstance` would look through a dead weak proxy among the objects, and raise.
    return [o for o in gc.get_objects() if type(o) is LeanWebSocketProtocol and not o.disconnected]


async def test_an_open_socket_keeps_no_handshake_and_still_carries_messages(
    app: Harness,
) -> None:
    product = await make_product(unique("TEE"), stock=10)
    order_id = (await checked_out_order(app, app.token("alice"), product))["orderId"]
    async with await RawSocket.open(app.url, TRANSPORT_WS) as raw:
        assert (await raw.init(app.token("alice")))["type"] == "connection_ack"
        await raw.subscribe(order_id)
        assert (await raw.next_order())["status"] == "PENDING_PAYMENT"

        [protocol] = _open_protocols()
        held = list(vars(protocol).values())
        assert not [v for v in held if isinstance(v, (asyncio.Queue, asyncio.Event))], held
        assert not [v for v in held if isinstance(v, (Request, Response))], held
        # websockets' parser still holds the request (a local of its generator): no headers.
        request = protocol.conn.parser.gi_frame.f_locals["request"]
        assert isinstance(request, Request) and not request.headers
        # The app's copy of the headers is the scope's, untouched.
        assert (b"sec-websocket-protocol", TRANSPORT_WS.encode()) in protocol.scope["headers"]

        await change_order_now(order_id, payment_status=PaymentStatus.PROCESSING)
        assert (await raw.next_order())["paymentStatus"] == "PROCESSING"


def test_subscriptions_of_one_short_text_share_it() -> None:
    first, second = "subscription { a }", "".join(["subscription ", "{ a }"])
    assert first == second and first is not second
    messages = [{"type": "subscribe", "payload": {"query": q}} for q in (first, second)]
    for message in messages:
        ws_protocols._share_text(message, "subscribe")
    assert messages[0]["payload"]["query"] is messages[1]["payload"]["query"]

    # A text longer than any real document is not kept: the cache runs before the parser.
    long = "subscription { a }" + " " * ws_protocols.SHARED_TEXT_CHARS
    kept = len(ws_protocols._TEXTS)
    ws_protocols._share_text({"type": "subscribe", "payload": {"query": long}}, "subscribe")
    assert len(ws_protocols._TEXTS) == kept
