"""uvicorn's WebSocket protocol, holding less while a socket idles; and the server options that
every uvicorn serving the service uses (the command, the demo, the tests).

A success page or a staff console keeps its socket open for minutes and mostly receives
nothing, so what each connection keeps alive is the service's memory per subscriber
(docs/benchmarks.md, "Subscriptions"). uvicorn's sans-I/O protocol keeps, for the life of the
socket, the handshake's request and response (their headers: about 4 KB) and an
`asyncio.Queue` inbox (three deques and an `asyncio.Event`: about 3 KB) that holds at most a
message or two, and an `asyncio.Event` for "writable". This subclass drops the handshake once
the response is sent (the request's headers too, which websockets' parser goes on holding),
and keeps its inbox in a `LightQueue` and its flag in a `LightEvent`: together about 8 KB
less per socket.

It leans on uvicorn's attributes (`queue`, `writable`, `request`, `response`);
`tests/web/test_websocket_protocol.py` pins them, so an upgrade that moves them fails there.
"""

from __future__ import annotations

from typing import Any

from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from ordergraph.light_event import LightEvent
from ordergraph.light_queue import LightQueue


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn reads its inbox with `get`, `put_nowait` and `empty` only.
        self.queue = LightQueue[ASGIReceiveEvent]()  # type: ignore[assignment]
        # ... and its writable flag with `set`, `clear` and `wait`.
        self.writable = LightEvent()  # type: ignore[assignment]
        self.writable.set()

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # Sent: uvicorn reads neither again (the ASGI scope has what the app needs).
            request = self.__dict__.pop("request", None)
            self.__dict__.pop("response", None)
            if request is not None:
                # websockets' parser keeps the request for the life of the socket (a local of
                # its suspended generator) and never reads its headers again.
                request.headers.clear()


# Compression costs ~40 KB per idle subscriber for messages of a few hundred bytes.
SERVER_OPTIONS: dict[str, Any] = {
    "ws": LeanWebSocketProtocol,
    "ws_per_message_deflate": False,
}
