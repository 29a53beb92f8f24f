"""`ordergraph serve --demo`: the whole service on one machine with nothing to set up.

SQLite, the Stripe emulator, an SMTP sink that prints each mail, GraphiQL, a small catalogue
and two ready tokens. Settings already in the environment win over the demo's.
"""

from __future__ import annotations

import asyncio
import email.policy
import logging
import os
import secrets
from email import message_from_bytes
from email.message import EmailMessage
from typing import Any

import uvicorn
from tortoise import Tortoise

from ordergraph.app import create_app
from ordergraph.auth import issue_token
from ordergraph.db import apply_migrations, tortoise_config
from ordergraph.settings import Settings
from ordergraph.stripe_emulator import StripeEmulator

log = logging.getLogger("ordergraph.demo")
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


class PrintingMailbox:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        body = message.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""
        print(f"\n--- mail to {message['To']}: {message['Subject']} ---\n{text}\n---", flush=True)
        return "250 OK"


def _demo_environment(port: int) -> None:
    defaults = {
        "JWT_SECRET": "demo-only-" + secrets.token_hex(16),
        "STRIPE_SECRET_KEY": "sk_test_demo",
        "STRIPE_WEBHOOK_SECRET": "whsec_demo_" + secrets.token_hex(8),
        "STRIPE_API_BASE": f"http://127.0.0.1:{EMULATOR_PORT}",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(SMTP_PORT),
        "DEBUG": "true",
    }
    for name, value in defaults.items():
        os.environ.setdefault(name, value)


async def _seed(settings: Settings) -> None:
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


def _start_smtp_sink() -> Any:
    try:
        from aiosmtpd.controller import Controller
    except ImportError:
        log.warning("aiosmtpd is not installed: mail will wait in the outbox")
        return None
    controller = Controller(PrintingMailbox(), hostname="127.0.0.1", port=SMTP_PORT)
    controller.start()
    return controller


async def run_demo(host: str, port: int) -> None:
    _demo_environment(port)
    settings = Settings.from_env()
    await apply_migrations(settings.database_url)
    await _seed(settings)
    smtp = _start_smtp_sink() if settings.smtp_port == SMTP_PORT else None

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
""",
        flush=True,
    )
    try:
        await asyncio.gather(*(server.serve() for server in servers))
    finally:
        if smtp is not None:
            smtp.stop()
