"""Every HTTP request and WebSocket gets an id that its log lines and its response carry."""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ordergraph import logs

HEADER = "X-Request-ID"

# A caller's own id (a proxy's, a client's) is kept, so that its logs and ours line up; it
# ends up in log lines, so anything but a short plain token is replaced.
_ACCEPTED = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class RequestId:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(HEADER)
        request_id = given if given and _ACCEPTED.fullmatch(given) else uuid.uuid4().hex
        token = logs.request_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append(HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id if scope["type"] == "http" else send)
        finally:
            logs.request_id.reset(token)
