"""What every GraphQL resolver is handed: who is asking, and the services it may use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import strawberry
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from ordergraph.auth import Identity
from ordergraph.domain.payments import PaymentServices
from ordergraph.resolvers.loaders import Loaders
from ordergraph.settings import Settings


@dataclass
class Context:
    request: Request | WebSocket
    response: Response | WebSocket | None
    settings: Settings
    services: PaymentServices
    identity: Identity | None = None
    auth_error: str | None = None
    connection_params: dict[str, Any] | None = None
    # Made on first use: a WebSocket's context lives as long as the connection, and an idle
    # subscriber needs none (subscriptions.follow sets each snapshot's, then lets it go).
    _loaders: Loaders | None = field(default=None, init=False, repr=False)

    @property
    def loaders(self) -> Loaders:
        if self._loaders is None:
            self._loaders = Loaders()
        return self._loaders

    @loaders.setter
    def loaders(self, loaders: Loaders | None) -> None:
        """None: a fresh set on next use."""
        self._loaders = loaders


# What a resolver's `info` argument is, typed: `info.context` is a `Context`.
Info = strawberry.Info[Context, None]
