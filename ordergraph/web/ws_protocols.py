"""The two GraphQL-over-WebSocket protocols, refusing malformed messages instead of crashing,
and ending a connection when its token expires.

Strawberry's handlers index into each message as if it were well formed; a `null`, a list or a
`subscribe` without a payload raised inside them and dropped the socket with no close code.
These subclasses check the shape first: graphql-transport-ws closes with 4400 as its
specification asks; graphql-ws, which has no such code, answers an `error` and carries on.
Messages are read by `CheckedWebSocketAdapter` with the service's JSON rules (json_input): one
nested too deeply, holding a lone surrogate or not JSON at all is such a malformed message.

A connection whose token expires is closed with 4403 at its `exp` (token_expiry.TokenClock),
and an operation that starts after it is refused the same way, on both protocols.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from starlette.websockets import WebSocketDisconnect, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.http.exceptions import NonTextMessageReceived
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ErrorMessage

from ordergraph.bounded_cache import BoundedCache
from ordergraph.web import json_input
from ordergraph.web.token_expiry import SocketContext, TokenClock

# A close frame's reason is at most 123 bytes.
MAX_CLOSE_REASON = 120


class CheckedWebSocketAdapter(ASGIWebSocketAdapter):
    """Strawberry's adapter, but every text message is decoded by `json_input.decode`, and one
    it refuses reaches the handler as `json_input.Unreadable` (whichever the protocol: Strawberry
    would let graphql-ws ignore it silently, and a RecursionError escape both)."""

    async def iter_json(
        self, *, ignore_parsing_errors: bool = False
    ) -> AsyncGenerator[object, None]:
        try:
            while self.ws.application_state != WebSocketState.DISCONNECTED:
                # No local keeps a message: this generator waits for the next one for as long
                # as the socket idles, and the last (a subscription's text) would wait with it.
                yield _read(await self.ws.receive_text())
        except KeyError as exc:  # a binary frame
            raise NonTextMessageReceived from exc
        except WebSocketDisconnect:
            pass


def _read(text: str) -> object:
    try:
        return json_input.decode(text)
    except json_input.UnacceptableJSON as exc:
        return json_input.Unreadable(exc.reason)


def _problem(message: Any, operation_type: str) -> str | None:
    if isinstance(message, json_input.Unreadable):
        return f"Invalid message: {message.reason}"[:MAX_CLOSE_REASON]
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return "Failed to parse message"
    if message["type"] != operation_type:
        return None
    payload = message.get("payload")
    if not isinstance(message.get("id"), str):
        return "An operation needs a string id"
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        return "An operation needs a payload with a query"
    if not isinstance(payload.get("variables") or {}, dict):
        return "variables must be an object"
    return None


# One copy of each operation's text however many sockets run it: an operation keeps its text
# for as long as it is subscribed, and every success page sends the same one (~600 bytes).
# Texts up to SHARED_TEXT_CHARS only, so that the cache holds at most 256 of those: it runs
# before the text is parsed or its tokens counted, and a socket's message may be megabytes.
_TEXTS = BoundedCache[str, str](256)
SHARED_TEXT_CHARS = 8192


def _share_text(message: Any, operation_type: str) -> None:
    """After `_problem` passed `message`: its query text becomes the shared copy."""
    if message["type"] == operation_type:
        payload = message["payload"]
        text = payload["query"]
        if len(text) <= SHARED_TEXT_CHARS:
            payload["query"] = _TEXTS.get(text, lambda: text)


def _token_expires_at(context: object) -> float | None:
    return context.token_expires_at if isinstance(context, SocketContext) else None


class TransportWSHandler(BaseGraphQLTransportWSHandler[Any, Any]):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = TokenClock(self.websocket)

    async def handle_message(self, message: Any) -> None:
        problem = _problem(message, "subscribe")
        if problem is not None:
            await self.handle_invalid_message(problem)
            return
        if message["type"] == "subscribe" and self.clock.expired():
            await self.clock.close()  # the timer has not run yet: refused all the same
            return
        _share_text(message, "subscribe")
        await super().handle_message(message)

    async def handle_connection_init(self, message: Any) -> None:
        await super().handle_connection_init(message)
        # Strawberry cancels its init timeout here but keeps the task, and with it the
        # CancelledError, its traceback and frames, for the life of the connection.
        self.connection_init_timeout_task = None
        if self.connection_acknowledged:
            self.clock.start(_token_expires_at(self.context))

    async def send_message(self, message: Any) -> None:
        if not self.clock.closed:  # closed for an expired token: not one message more
            await super().send_message(message)

    async def shutdown(self) -> None:
        await self.clock.stop()
        await super().shutdown()


class LegacyWSHandler(BaseGraphQLWSHandler[Any, Any]):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = TokenClock(self.websocket)

    async def handle_message(self, message: Any) -> None:
        problem = _problem(message, "start")
        if problem is not None:
            operation_id = message.get("id") if isinstance(message, dict) else None
            error: ErrorMessage = {
                "type": "error",
                "id": operation_id if isinstance(operation_id, str) else "",
                "payload": {"message": problem},
            }
            await self.send_message(error)
            return
        if message["type"] == "start" and self.clock.expired():
            await self.clock.close()
            return
        _share_text(message, "start")
        await super().handle_message(message)

    async def handle_connection_init(self, message: Any) -> None:
        """graphql-ws allows a second `connection_init`: a fresh token re-arms the clock."""
        await super().handle_connection_init(message)
        if self.connection_acknowledged:
            self.clock.start(_token_expires_at(self.context))

    async def send_message(self, message: Any) -> None:
        if not self.clock.closed:
            await super().send_message(message)

    async def cleanup(self) -> None:
        await self.clock.stop()
        await super().cleanup()
