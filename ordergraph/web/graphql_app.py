"""Strawberry's ASGI view, as the service serves it: JSON bodies checked (json_input), both
WebSocket protocols hardened, and the caller's bearer token read once per request or
connection; a connection ends when its token expires (token_expiry)."""

from __future__ import annotations

import json
from typing import Any

from cross_web import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.types.unset import UNSET, UnsetType

from ordergraph.auth import AuthError, credentials_from_header
from ordergraph.resolvers.context import Context
from ordergraph.schema import build_schema
from ordergraph.settings import Settings
from ordergraph.web import json_input
from ordergraph.web.token_expiry import SocketContext
from ordergraph.web.ws_protocols import (
    CheckedWebSocketAdapter,
    LegacyWSHandler,
    TransportWSHandler,
)

KEEP_ALIVE_SECONDS = 15.0


class GraphQLApp(GraphQL[Context, None]):
    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler
    websocket_adapter_class = CheckedWebSocketAdapter

    def decode_json(self, data: str | bytes) -> object:
        """Only a JSON object (or a batch) is a GraphQL request; anything else is a 400."""
        value = json_input.decode(data)
        if not isinstance(value, dict | list):
            raise json_input.UnacceptableJSON("the body is not a JSON object")
        return value

    def parse_json(self, data: str | bytes) -> Any:
        """A 400 that says what is wrong with the body (Strawberry's says only that it is)."""
        try:
            return self.decode_json(data)
        except json.JSONDecodeError as exc:
            reason = exc.reason if isinstance(exc, json_input.UnacceptableJSON) else exc.msg
            raise HTTPException(400, f"Unable to parse request body as JSON: {reason}") from None

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            build_schema(debug=settings.debug),
            graphql_ide="graphiql" if settings.debug else None,
            allow_queries_via_get=False,
            allowed_origins=settings.allowed_origins,
            # graphql-ws `ka` messages; both protocols also get uvicorn's WebSocket pings.
            keep_alive=True,
            keep_alive_interval=KEEP_ALIVE_SECONDS,
        )
        self.settings = settings

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """A WebSocket's token comes in `connection_init` (browsers cannot set headers on
        one), or else in the handshake's `Authorization` header: a bad token refuses the
        connection; none leaves it anonymous."""
        params = context.connection_params or {}
        # Read once, here: not kept (with the token) for the life of the connection.
        context.connection_params = None
        header = params.get("authorization") or params.get("Authorization")
        if header is None:
            if context.auth_error is not None:  # the handshake's header was bad
                raise ConnectionRejectionError({"message": context.auth_error})
            return UNSET
        try:
            if not isinstance(header, str):
                raise AuthError("authorization must be 'Bearer <token>'")
            credentials = credentials_from_header(self.settings.jwt_secret, header)
        except AuthError as exc:
            raise ConnectionRejectionError({"message": str(exc)}) from None
        context.identity, context.auth_error = credentials.identity, None
        if isinstance(context, SocketContext):
            context.token_expires_at = credentials.expires_at
        return UNSET

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        make = SocketContext if isinstance(request, WebSocket) else Context
        context = make(
            request=request,
            response=response,
            settings=self.settings,
            services=request.app.state.services,
        )
        header = request.headers.get("authorization")
        if header:
            try:
                credentials = credentials_from_header(self.settings.jwt_secret, header)
            except AuthError as exc:
                context.auth_error = str(exc)
            else:
                context.identity = credentials.identity
                if isinstance(context, SocketContext):
                    context.token_expires_at = credentials.expires_at
        return context
