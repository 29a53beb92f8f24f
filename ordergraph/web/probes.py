"""What operators ask of a running process: is it up (`/healthz`), can it serve (`/readyz`:
database and event transport answer), and its numbers (`/metrics`)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from tortoise import Tortoise

from ordergraph import events, metrics
from ordergraph.settings import Settings


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def metrics_endpoint(request: Request) -> Response:
    """Order, checkout and mail volumes are the shop's business: without METRICS_TOKEN the
    endpoint is open only in DEBUG (the demo, development)."""
    settings: Settings = request.app.state.settings
    if settings.metrics_token is None and not settings.debug:
        return JSONResponse(
            {"error": "metrics are off: set METRICS_TOKEN and scrape with it as a bearer token"},
            status_code=403,
        )
    if settings.metrics_token is not None and not metrics.authorized(
        settings.metrics_token, request.headers.get("authorization")
    ):
        return JSONResponse(
            {"error": "metrics need the bearer token of METRICS_TOKEN"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


async def readyz(request: Request) -> Response:
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(Tortoise.get_connection("default").execute_query("SELECT 1"), 2)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    transport = events.current_transport()
    try:
        ok = await asyncio.wait_for(transport.ping(), 2)
        checks["events"] = "ok" if ok else "down"
    except Exception as exc:
        checks["events"] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", **checks, "transport": transport.name},
        status_code=200 if ready else 503,
    )
