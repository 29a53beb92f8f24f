"""The ASGI application: GraphQL, the Stripe webhook and health checks, and their lifespan."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.types.unset import UNSET, UnsetType
from tortoise import Tortoise
from tortoise.contrib.starlette import RegisterTortoise

from ordergraph import events, metrics
from ordergraph.auth import AuthError, identity_from_header
from ordergraph.db import tortoise_config
from ordergraph.domain.expiry import Sweeper
from ordergraph.domain.payments import PaymentServices
from ordergraph.mail.sender import MailSender
from ordergraph.resolvers.context import Context
from ordergraph.schema import build_schema
from ordergraph.settings import Settings
from ordergraph.stripe_gateway import StripeGateway
from ordergraph.web.limits import BodySizeLimit
from ordergraph.web.request_ids import RequestId
from ordergraph.web.success_page import order_success_page
from ordergraph.web.ws_protocols import LegacyWSHandler, TransportWSHandler
from ordergraph.webhooks import stripe_webhook

log = logging.getLogger(__name__)

# GraphQL requests are small (queries are capped at 2,000 tokens); Stripe events are < 256 KiB.
MAX_BODY_BYTES = 256 * 1024

KEEP_ALIVE_SECONDS = 15.0


class GraphQLApp(GraphQL[Context, None]):
    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler

    def decode_json(self, data: str | bytes) -> object:
        """Only a JSON object (or a batch) is a GraphQL request; anything else is a 400."""
        try:
            value = json.loads(data)
        except UnicodeDecodeError as exc:
            raise json.JSONDecodeError("body is not UTF-8", str(exc), 0) from None
        if not isinstance(value, dict | list):
            raise json.JSONDecodeError("body is not a JSON object", str(data)[:40], 0)
        return value

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
        one): a bad token refuses the connection; none leaves it anonymous."""
        params = context.connection_params or {}
        header = params.get("authorization") or params.get("Authorization")
        if header is None:
            return UNSET
        try:
            if not isinstance(header, str):
                raise AuthError("authorization must be 'Bearer <token>'")
            context.identity = identity_from_header(self.settings.jwt_secret, header)
        except AuthError as exc:
            raise ConnectionRejectionError({"message": str(exc)}) from None
        return UNSET

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        context = Context(
            request=request,
            response=response,
            settings=self.settings,
            services=request.app.state.services,
        )
        header = request.headers.get("authorization")
        if header:
            try:
                context.identity = identity_from_header(self.settings.jwt_secret, header)
            except AuthError as exc:
                context.auth_error = str(exc)
        return context


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


def create_app(settings: Settings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with (
            RegisterTortoise(
                app,
                config=tortoise_config(
                    settings.database_url, pool_size=settings.database_pool_size
                ),
            ),
            events.running(settings.events_url),
        ):
            gateway = StripeGateway(settings)
            app.state.services = PaymentServices(settings, gateway)
            sender = MailSender(settings)
            sweeper = Sweeper(app.state.services)
            background = [
                asyncio.create_task(sender.run(), name="ordergraph-mail-sender"),
                asyncio.create_task(sweeper.run(), name="ordergraph-sweeper"),
            ]
            try:
                yield
            finally:
                try:
                    sender.stop()
                    sweeper.stop()
                    await asyncio.gather(*background)
                    await gateway.close()
                finally:
                    metrics.process_exiting()

    graphql = GraphQLApp(settings)
    routes = [
        Route("/graphql", graphql, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql),
        Route("/webhooks/stripe", stripe_webhook, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
    ]
    if settings.success_page:
        routes.append(Route("/order-success/{order_id}", order_success_page, methods=["GET"]))
    app = Starlette(
        debug=False,
        routes=routes,
        middleware=[
            Middleware(RequestId),
            Middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES),
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.allowed_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type"],
                max_age=600,
            ),
        ],
        lifespan=lifespan,
    )
    app.state.settings = settings
    return app


def create_app_from_env() -> Starlette:
    """For `uvicorn --factory` and `ordergraph serve --workers N`."""
    return create_app(Settings.from_env())
