"""A token's rights end when it expires, on a WebSocket too.

An HTTP request checks its token's `exp` each time. A WebSocket authenticates once, so the
connection keeps its token's expiry (`SocketContext.token_expires_at`) and a `TokenClock`
closes it with 4403 ("Forbidden", graphql-transport-ws's code for auth) at that moment: its live
subscriptions end, and an operation sent later meets a closed socket. The protocol handlers
(ws_protocols) also ask the clock when each operation starts, in case a message arrives before
the timer has run. Anonymous connections have no expiry.

The timer is a loop callback, not a task: it costs nothing while it waits, and cancelling it
when the socket closes leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from strawberry.http.async_base_view import AsyncWebSocketAdapter

from ordergraph.resolvers.context import Context

EXPIRED_CLOSE_CODE = 4403
EXPIRED_CLOSE_REASON = "Forbidden: token expired"


@dataclass
class SocketContext(Context):
    """A WebSocket's context: also when its token (if any) expires, as a Unix time."""

    token_expires_at: float | None = None


class TokenClock:
    """Closes one connection with 4403 when its token expires."""

    __slots__ = ("_closing", "_timer", "closed", "expires_at", "websocket")

    def __init__(self, websocket: AsyncWebSocketAdapter) -> None:
        self.websocket = websocket
        self.expires_at: float | None = None
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None

    def start(self, expires_at: float | None) -> None:
        """(Re)arm the clock for a token expiring at `expires_at`; None: no token, no clock."""
        self._cancel_timer()
        self.expires_at = expires_at
        if expires_at is None or self.closed:
            return
        delay = max(0.0, expires_at - time.time())
        self._timer = asyncio.get_running_loop().call_later(delay, self._ring)

    def expired(self) -> bool:
        return self.expires_at is not None and time.time() >= self.expires_at

    async def close(self) -> None:
        """Close the connection for its expired token (once); nothing is sent after this."""
        if self.closed:
            return
        self.closed = True
        self._cancel_timer()
        with contextlib.suppress(Exception):  # the client may be gone already
            await self.websocket.close(EXPIRED_CLOSE_CODE, EXPIRED_CLOSE_REASON)

    async def stop(self) -> None:
        """The connection is ending: disarm, and let a close in progress finish."""
        self._cancel_timer()
        closing, self._closing = self._closing, None
        if closing is not None:
            await closing  # close() lets no exception out

    def _ring(self) -> None:
        self._timer = None
        if not self.closed and self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.close())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
