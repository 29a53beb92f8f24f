"""The ASGI application: where the routes, middleware and background tasks are put together.

GraphQL (`web.graphql_app`), the Stripe webhook (`webhooks`), probes (`web.probes`) and the
success page are routes; the lifespan opens the database and the event transport and runs the
mail sender, the outgoing webhook sender and the sweeper beside the requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from tortoise.contrib.starlette import RegisterTortoise

from ordergraph import events, metrics
from ordergraph.db import tortoise_config
from ordergraph.domain.payments import PaymentServices
from ordergraph.domain.sweeper import Sweeper
from ordergraph.mail import messages
from ordergraph.mail.sender import MailSender
from ordergraph.outgoing_webhooks.sender import WebhookSender
from ordergraph.settings import Settings
from ordergraph.stripe_gateway import StripeGateway
from ordergraph.web.exports import orders_csv
from ordergraph.web.graphql_app import GraphQLApp
from ordergraph.web.limits import BodySizeLimit
from ordergraph.web.probes import healthz, metrics_endpoint, readyz
from ordergraph.web.request_ids import RequestId
from ordergraph.web.staff_console import staff_console_page
from ordergraph.web.success_page import order_success_page
from ordergraph.webhooks import stripe_webhook

log = logging.getLogger(__name__)

GRAPHQL_PATH = "/graphql"


class Service(Starlette):
    """Starlette, except that a WebSocket at /graphql goes to the GraphQL app through
    `RequestId` alone.

    A socket's call stays on the stack for as long as the socket is open: through the whole
    middleware stack and router that is a dozen coroutine frames (~4 KB) per idle subscriber,
    for middleware that only passes WebSockets on (server errors, body limits and CORS are
    HTTP's; the GraphQL view checks the Origin itself). Everything else takes the usual way.
    """

    graphql_socket: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.graphql_socket is not None
            and scope["type"] == "websocket"
            and scope["path"] == GRAPHQL_PATH
            and not scope.get("root_path")
        ):
            scope["app"] = self
            scope.setdefault("router", self.router)
            await self.graphql_socket(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


# GraphQL requests are small (queries are capped at 2,000 tokens); Stripe events are < 256 KiB.
MAX_BODY_BYTES = 256 * 1024


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
            messages.configure(settings)
            senders = [MailSender(settings) for _ in range(settings.mail_senders)]
            sweeper = Sweeper(app.state.services)
            webhook_sender = WebhookSender(settings)
            background = [
                *(asyncio.create_task(s.run(), name="ordergraph-mail-sender") for s in senders),
                asyncio.create_task(sweeper.run(), name="ordergraph-sweeper"),
                asyncio.create_task(webhook_sender.run(), name="ordergraph-webhook-sender"),
            ]
            try:
                yield
            finally:
                try:
                    for sender in senders:
                        sender.stop()
                    sweeper.stop()
                    webhook_sender.stop()
                    await asyncio.gather(*background)
                    await gateway.close()
                finally:
                    metrics.process_exiting()

    graphql = GraphQLApp(settings)
    routes = [
        Route(GRAPHQL_PATH, graphql, methods=["GET", "POST"]),
        WebSocketRoute(GRAPHQL_PATH, graphql),
        Route("/webhooks/stripe", stripe_webhook, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/exports/orders.csv", orders_csv, methods=["GET"]),
    ]
    if settings.success_page:
        routes.append(Route("/order-success/{order_id}", order_success_page, methods=["GET"]))
    if settings.staff_console:
        routes.append(Route("/staff", staff_console_page, methods=["GET"]))
    app = Service(
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
    app.graphql_socket = RequestId(graphql)
    return app


def create_app_from_env() -> Starlette:
    """For `uvicorn --factory` and `ordergraph serve --workers N`."""
    return create_app(Settings.from_env())
