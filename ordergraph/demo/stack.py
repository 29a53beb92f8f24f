"""The demo stack: the whole service on one machine with nothing to set up.

Shared by `ordergraph serve --demo` (serves until stopped, for a person to explore) and
`ordergraph demo` (runs one purchase through it and exits): SQLite, in-memory events, the
Stripe emulator, an SMTP sink, a small catalogue.
"""

from __future__ import annotations

import asyncio
import email.policy
import logging
import os
import secrets
import socket
from collections.abc import Callable
from email import message_from_bytes
from email.message import EmailMessage
from typing import Any

import uvicorn
from aiosmtpd.smtp import SMTP
from starlette.types import ASGIApp
from tortoise import Tortoise

from ordergraph.app import create_app
from ordergraph.auth import issue_token
from ordergraph.db import apply_migrations, tortoise_config
from ordergraph.settings import Settings
from ordergraph.stripe_emulator import StripeEmulator

log = logging.getLogger("ordergraph.demo.stack")
logging.getLogger("mail.log").setLevel(logging.WARNING)

CATALOGUE = [
    ("TEE-BLACK-M", "Black T-shirt (M)", "Organic cotton, heavy weight.", 2500, 25),
    ("MUG-ENAMEL", "Enamel mug", "Chips like the real thing.", 1400, 10),
    ("CAP-NAVY", "Navy cap", "One size.", 1900, 5),
    ("SOCKS-3", "Socks, three pairs", "Wool blend.", 1200, 40),
    ("POSTER-A2", "Launch poster (A2)", "Limited print run.", 3000, 3),
]

EMULATOR_PORT = 12111
SMTP_PORT = 1025


def read_mail(content: bytes) -> EmailMessage:
    message = message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def plain_text(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    return body.get_content() if body is not None else ""


class MailSink:
    """An SMTP server that accepts every mail and hands it to `on_mail`."""

    def __init__(self, on_mail: Callable[[EmailMessage], None]) -> None:
        self.on_mail = on_mail

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.on_mail(read_mail(envelope.content))
        return "250 OK"


async def start_mail_sink(
    on_mail: Callable[[EmailMessage], None], host: str = "127.0.0.1", port: int = 0
) -> asyncio.Server:
    """Serves in this event loop; port 0 takes a free one (see `bound_port`)."""
    sink = MailSink(on_mail)
    return await asyncio.get_running_loop().create_server(
        lambda: SMTP(sink, hostname=host), host, port
    )


def bound_port(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


def loopback_socket(port: int = 0) -> socket.socket:
    """A listening socket to hand to uvicorn; port 0 takes a free one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def uvicorn_server(app: ASGIApp) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", ws_per_message_deflate=False)
    )


async def seed_catalogue(settings: Settings) -> None:
    from ordergraph.models import Product

    await Tortoise.init(config=tortoise_config(settings.database_url))
    try:
        for sku, name, description, price, stock in CATALOGUE:
            await Product.get_or_create(
                sku=sku,
                defaults={"name": name, "description": description, "price": price, "stock": stock},
            )
    finally:
        await Tortoise.close_connections()


def _print_mail(message: EmailMessage) -> None:
    print(
        f"\n--- mail to {message['To']}: {message['Subject']} ---\n{plain_text(message)}\n---",
        flush=True,
    )


def _demo_environment(host: str, port: int) -> None:
    # A browser on this machine may call it by either name (and never by a wildcard address).
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    origins = {f"http://{name}:{port}" for name in (local, "127.0.0.1", "localhost")}
    defaults = {
        "JWT_SECRET": "demo-only-" + secrets.token_hex(16),
        "STRIPE_SECRET_KEY": "sk_test_demo",
        "STRIPE_WEBHOOK_SECRET": "whsec_demo_" + secrets.token_hex(8),
        "STRIPE_API_BASE": f"http://127.0.0.1:{EMULATOR_PORT}",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(SMTP_PORT),
        "DEBUG": "true",
        # Stripe sends the shopper back to the reference success page this server serves.
        "FRONTEND_URL": f"http://{local}:{port}",
        "ALLOWED_ORIGINS": ",".join(sorted(origins)),
        "SUCCESS_PAGE": "true",
    }
    for name, value in defaults.items():
        os.environ.setdefault(name, value)


async def run_demo(host: str, port: int) -> None:
    """`ordergraph serve --demo`: serve the demo stack until stopped."""
    _demo_environment(host, port)
    settings = Settings.from_env()
    await apply_migrations(settings.database_url)
    await seed_catalogue(settings)
    smtp = (
        await start_mail_sink(_print_mail, port=SMTP_PORT)
        if settings.smtp_port == SMTP_PORT
        else None
    )
    emulator = StripeEmulator(
        webhook_url=f"http://{host}:{port}/webhooks/stripe",
        webhook_secret=settings.stripe_webhook_secret,
    )
    servers = [
        uvicorn.Server(
            uvicorn.Config(create_app(settings), host=host, port=port, ws_per_message_deflate=False)
        ),
        uvicorn.Server(
            uvicorn.Config(emulator.app, host="127.0.0.1", port=EMULATOR_PORT, log_level="warning")
        ),
    ]
    shopper = issue_token(
        settings.jwt_secret, "demo-shopper", "shopper@example.com", ttl_seconds=86400
    )
    staff = issue_token(
        settings.jwt_secret, "demo-staff", "staff@example.com", staff=True, ttl_seconds=86400
    )
    print(
        f"""
ordergraph demo
  GraphQL (GraphiQL in a browser): http://{host}:{port}/graphql
  Stripe emulator:                 http://127.0.0.1:{EMULATOR_PORT}
  Shopper token: {shopper}
  Staff token:   {staff}
  Pay for a session: curl -X POST http://127.0.0.1:{EMULATOR_PORT}/_emulator/checkout/sessions/<cs_id>/complete
  Watch an order live: http://{host}:{port}/order-success/<orderId>#token=<shopper token>
""",
        flush=True,
    )
    try:
        await asyncio.gather(*(server.serve() for server in servers))
    finally:
        if smtp is not None:
            smtp.close()
