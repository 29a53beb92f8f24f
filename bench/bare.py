"""The ceiling of the `order` query: a bare Starlette endpoint doing the same reads with asyncpg.

    DATABASE_URL=... JWT_SECRET=... uvicorn bench.bare:create_app --factory --workers N

`POST /order` with `{"id": ...}` and the owner's bearer token: the token is verified as the
service verifies it, then the same three reads the service's resolvers make (the order,
restricted to its owner; its lines; its history), answered as JSON in the GraphQL response's
shape. Served by uvicorn with the same settings as `ordergraph serve`.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ordergraph.auth import AuthError, identity_from_header

POOL_SIZE = int(os.environ.get("BARE_POOL_SIZE", "10"))

ORDER = (
    "SELECT id, status, payment_status, is_locked, created_at, updated_at, paid_at, expires_at,"
    " total, currency, shipping_address FROM orders WHERE id = $1 AND user_id = $2"
)
LINES = (
    "SELECT product_id, product_name, quantity, unit_price FROM order_items"
    " WHERE order_id = $1 ORDER BY id"
)
HISTORY = "SELECT status, reason, at FROM order_status_changes WHERE order_id = $1 ORDER BY id"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _address(raw: Any) -> dict[str, Any] | None:
    if not raw:
        return None
    import json

    value = json.loads(raw) if isinstance(raw, str) else raw
    return {k: value.get(k) for k in ("name", "line1", "city", "postal_code", "country")}


def create_app() -> Starlette:
    secret = os.environ["JWT_SECRET"]
    dsn = os.environ["DATABASE_URL"]
    state: dict[str, asyncpg.Pool] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["pool"] = await asyncpg.create_pool(dsn, min_size=2, max_size=POOL_SIZE)
        try:
            yield
        finally:
            await state["pool"].close()

    async def order(request: Request) -> Response:
        try:
            identity = identity_from_header(secret, request.headers.get("authorization"))
        except AuthError as exc:
            return JSONResponse({"errors": [{"message": str(exc)}]}, status_code=401)
        body = await request.json()
        try:
            order_id = uuid.UUID(str(body.get("id")))
        except ValueError:
            return JSONResponse({"data": {"order": None}})
        pool = state["pool"]
        async with pool.acquire() as conn:
            row = await conn.fetchrow(ORDER, order_id, identity.user_id)
            if row is None:
                return JSONResponse({"data": {"order": None}})
            lines = await conn.fetch(LINES, order_id)
            history = await conn.fetch(HISTORY, order_id)
        currency = row["currency"]
        return JSONResponse(
            {
                "data": {
                    "order": {
                        "id": str(row["id"]),
                        "status": row["status"].upper(),
                        "paymentStatus": row["payment_status"].upper(),
                        "isLocked": row["is_locked"],
                        "createdAt": _iso(row["created_at"]),
                        "updatedAt": _iso(row["updated_at"]),
                        "paidAt": _iso(row["paid_at"]),
                        "expiresAt": _iso(row["expires_at"]),
                        "total": {"amount": row["total"], "currency": currency},
                        "shippingAddress": _address(row["shipping_address"]),
                        "lines": [
                            {
                                "productId": str(line["product_id"]),
                                "productName": line["product_name"],
                                "quantity": line["quantity"],
                                "unitPrice": {"amount": line["unit_price"], "currency": currency},
                                "lineTotal": {
                                    "amount": line["unit_price"] * line["quantity"],
                                    "currency": currency,
                                },
                            }
                            for line in lines
                        ],
                        "history": [
                            {
                                "status": h["status"].upper(),
                                "reason": h["reason"],
                                "at": _iso(h["at"]),
                            }
                            for h in history
                        ],
                    }
                }
            }
        )

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[Route("/order", order, methods=["POST"]), Route("/healthz", healthz)],
        lifespan=lifespan,
    )


def main() -> None:
    """`python -m bench.bare PORT WORKERS`: uvicorn as `ordergraph serve` configures it."""
    import uvicorn

    port, workers = int(sys.argv[1]), int(sys.argv[2])
    uvicorn.run(
        "bench.bare:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        workers=workers,
        log_level="info",
        proxy_headers=True,
        ws_per_message_deflate=False,
    )


if __name__ == "__main__":
    main()
