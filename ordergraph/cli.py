"""The `ordergraph` command: serve, migrate, mint tokens, print the schema, run the emulator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

from ordergraph.logs import configure_logging, logging_config
from ordergraph.settings import Settings, SettingsError, log_format_from_env


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"ordergraph: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _migrate(database_url: str) -> None:
    from ordergraph.db import apply_migrations

    asyncio.run(apply_migrations(database_url))


def cmd_serve(args: argparse.Namespace) -> None:
    if args.demo:
        from ordergraph.demo.stack import run_demo

        asyncio.run(run_demo(args.host, args.port))
        return
    settings = _settings()
    if args.workers > 1 and settings.events_url.startswith("memory:"):
        logging.getLogger("ordergraph.cli").warning(
            "with EVENTS_URL=memory:// a subscriber hears only of changes made by its own "
            "worker; set EVENTS_URL to postgres://... or redis://..."
        )
    _migrate(settings.database_url)
    from ordergraph.metrics import MULTIPROC_DIR_VARIABLE, start_multiprocess_dir

    made_dir = None
    if settings.metrics_dir is not None:
        start_multiprocess_dir(settings.metrics_dir)
    elif args.workers > 1:
        # Each worker keeps its metrics in files here; /metrics on any worker adds them up.
        made_dir = tempfile.mkdtemp(prefix="ordergraph-metrics-")
        os.environ[MULTIPROC_DIR_VARIABLE] = made_dir
    try:
        _run_uvicorn(args, settings)
    finally:
        if made_dir is not None:
            shutil.rmtree(made_dir, ignore_errors=True)


def _run_uvicorn(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    uvicorn.run(
        "ordergraph.app:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="info",
        log_config=logging_config(settings.log_format),
        access_log=settings.access_log,
        proxy_headers=True,
        # Compression costs ~40 KB per idle subscriber for messages of a few hundred bytes.
        ws_per_message_deflate=False,
    )


def cmd_demo(args: argparse.Namespace) -> None:
    from ordergraph.demo.purchase import run_purchase_demo

    # The timeline is the output; the service's own INFO lines would bury it.
    logging.getLogger().setLevel(logging.WARNING)
    try:
        status = asyncio.run(run_purchase_demo())
    except SystemExit:  # uvicorn's answer to an app that fails to start: its errors are above
        print(
            "\ndemo FAILED at step 0 (start the stack): the service did not start", file=sys.stderr
        )
        status = 1
    raise SystemExit(status)


def cmd_migrate(args: argparse.Namespace) -> None:
    database_url = os.environ.get("DATABASE_URL") or Settings.database_url
    _migrate(database_url)
    print(f"migrations applied to {database_url.split('@')[-1]}")


def cmd_token(args: argparse.Namespace) -> None:
    from ordergraph.auth import issue_token

    settings = _settings()
    print(
        issue_token(
            settings.jwt_secret, args.user, args.email, staff=args.staff, ttl_seconds=args.ttl
        )
    )


async def _expire_pending(settings: Settings) -> int:
    from tortoise import Tortoise

    from ordergraph import events
    from ordergraph.db import tortoise_config
    from ordergraph.domain.expiry import sweep_overdue_orders
    from ordergraph.domain.payments import PaymentServices
    from ordergraph.stripe_gateway import StripeGateway

    await Tortoise.init(config=tortoise_config(settings.database_url))
    gateway = StripeGateway(settings)
    try:
        # Installed, so that subscribers held by the serving processes hear of each change.
        async with events.running(settings.events_url):
            return await sweep_overdue_orders(PaymentServices(settings, gateway))
    finally:
        await gateway.close()
        await Tortoise.close_connections()


def cmd_expire_pending(args: argparse.Namespace) -> None:
    settings = _settings()
    settled = asyncio.run(_expire_pending(settings))
    print(f"settled {settled} overdue orders")


def cmd_schema(args: argparse.Namespace) -> None:
    from ordergraph.schema import schema_sdl

    print(schema_sdl())


def cmd_stripe_emulator(args: argparse.Namespace) -> None:
    from ordergraph.stripe_emulator import serve_emulator

    asyncio.run(
        serve_emulator(
            args.host,
            args.port,
            webhook_url=args.webhook_url,
            webhook_secret=args.webhook_secret or os.environ.get("STRIPE_WEBHOOK_SECRET"),
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ordergraph", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    serve = verbs.add_parser("serve", help="apply migrations, then serve HTTP and WebSocket")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--demo",
        action="store_true",
        help="embedded demo: SQLite, the Stripe emulator, a mail sink and a small catalogue",
    )
    serve.set_defaults(func=cmd_serve)

    demo = verbs.add_parser(
        "demo",
        help="run one whole purchase against a throwaway local stack and print its timeline",
    )
    demo.set_defaults(func=cmd_demo)

    migrate = verbs.add_parser("migrate", help="apply pending database migrations and exit")
    migrate.set_defaults(func=cmd_migrate)

    token = verbs.add_parser("token", help="print a bearer token signed with JWT_SECRET")
    token.add_argument("--user", required=True)
    token.add_argument("--email", required=True)
    token.add_argument("--staff", action="store_true")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(func=cmd_token)

    expire = verbs.add_parser(
        "expire-pending",
        help="cancel unpaid orders past their expiry (after asking Stripe), releasing their stock",
    )
    expire.set_defaults(func=cmd_expire_pending)

    schema = verbs.add_parser("schema", help="print the GraphQL schema (SDL)")
    schema.set_defaults(func=cmd_schema)

    emulator = verbs.add_parser("stripe-emulator", help="run the local Stripe emulator")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=12111)
    emulator.add_argument(
        "--webhook-url",
        default="http://127.0.0.1:8000/webhooks/stripe",
        help="where to deliver signed events",
    )
    emulator.add_argument("--webhook-secret", default=None, help="default: STRIPE_WEBHOOK_SECRET")
    emulator.set_defaults(func=cmd_stripe_emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    try:
        configure_logging(log_format_from_env())
    except SettingsError as exc:
        print(f"ordergraph: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
