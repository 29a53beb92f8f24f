"""`GET /exports/orders.csv`: the orders as CSV for staff, streamed (domain/order_export.py
writes it; `ordergraph export-orders` writes the same bytes).

The bearer token is read as GraphQL reads it (`auth.credentials_from_header`): none or a bad
one is a 401, a valid token that is not staff's a 403. Query parameters: `from` and `to` (ISO
dates or date-times, UTC unless they say otherwise; a date as `to` includes its whole day)
and `status` (an order status name, any case); anything else, or a bad value, is a 400 that
says why. Nothing is read from the database before the request is accepted.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import anyio
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.types import Send

from ordergraph.auth import AuthError, credentials_from_header, ensure_user
from ordergraph.domain.order_export import ExportInputError, csv_chunks, export_query

PARAMETERS = ("from", "to", "status")


class ClosingStream(StreamingResponse):
    """A stream that closes its generator however the response ends. When the client leaves,
    Starlette cancels the task that streams (uvicorn's ASGI spec 2.3), or `send` raises (2.4);
    either way the generator would keep its database cursor and pool connection until the
    garbage collector found it."""

    def __init__(
        self, chunks: AsyncGenerator[str, None], *, media_type: str, headers: dict[str, str]
    ) -> None:
        super().__init__(chunks, media_type=media_type, headers=headers)
        self.chunks = chunks

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):  # the task group is cancelled by then
                await self.chunks.aclose()


def _refuse(status: int, reason: str) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="ordergraph"'} if status == 401 else None
    return PlainTextResponse(reason + "\n", status_code=status, headers=headers)


async def orders_csv(request: Request) -> Response:
    settings = request.app.state.settings
    try:
        header = request.headers.get("authorization")
        identity = credentials_from_header(settings.jwt_secret, header).identity
    except AuthError as exc:
        return _refuse(401, str(exc))
    if not identity.is_staff:
        return _refuse(403, "staff only")
    params = request.query_params
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        return _refuse(400, f"unknown parameter {unknown[0]!r}: give from, to or status")
    repeated = [name for name in PARAMETERS if len(params.getlist(name)) > 1]
    if repeated:
        return _refuse(400, f"{repeated[0]} is given more than once")
    try:
        query = export_query(params.get("from"), params.get("to"), params.get("status"))
    except ExportInputError as exc:
        return _refuse(400, str(exc))
    await ensure_user(identity)
    return ClosingStream(
        csv_chunks(query),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": 'attachment; filename="orders.csv"',
            "Cache-Control": "no-store",
        },
    )
