"""The two GraphQL-over-WebSocket protocols, refusing malformed messages instead of crashing.

Strawberry's handlers index into each message as if it were well formed; a `null`, a list or a
`subscribe` without a payload raised inside them and dropped the socket with no close code.
These subclasses check the shape first: graphql-transport-ws closes with 4400 as its
specification asks; graphql-ws, which has no such code, answers an `error` and carries on.
"""

from __future__ import annotations

from typing import Any

from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ErrorMessage


def _problem(message: Any, operation_type: str) -> str | None:
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


class TransportWSHandler(BaseGraphQLTransportWSHandler[Any, Any]):
    async def handle_message(self, message: Any) -> None:
        problem = _problem(message, "subscribe")
        if problem is not None:
            await self.handle_invalid_message(problem)
            return
        await super().handle_message(message)


class LegacyWSHandler(BaseGraphQLWSHandler[Any, Any]):
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
        await super().handle_message(message)
