"""The `ordergraph` command: serve, migrate, mint tokens, print the schema, run the emulator."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ordergraph.cli_options import HelpFormatter, number, port_number
from ordergraph.logs import configure_logging, logging_config
from ordergraph.settings import Settings, SettingsError, log_format_from_env

if TYPE_CHECKING:
    from ordergraph.domain.payments import PaymentServices

T = TypeVar("T")


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
        _serve_demo(args)
        return
    settings = _settings()
    if args.workers > 1 and settings.events_url.startswith("memory:"):
        logging.getLogger("ordergraph.cli").warning(
            "with EVENTS_URL=memory:// a subscriber hears only of changes made by its own "
            "worker; set EVENTS_URL to postgres://... or redis://..."
        )
    _refuse_a_taken_port(args.host, args.port)
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


def _refuse_a_taken_port(host: str, port: int) -> None:
    """One line, before migrating, rather than uvicorn's error among its start-up lines."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = "is already in use: stop what listens there, or choose another with --port"
        else:
            reason = f"cannot be listened on: {exc.strerror or exc}"
        print(f"ordergraph: port {port} on {host} {reason}", file=sys.stderr)
        raise SystemExit(1) from None


def _serve_demo(args: argparse.Namespace) -> None:
    from ordergraph.demo.stack import DemoOptions, run_demo
    from ordergraph.demo.state import DemoError

    options = DemoOptions(
        host=args.host,
        port=args.port,
        state_dir=args.state_dir,
        reset=args.reset,
        emulator_port=args.emulator_port,
        smtp_port=args.smtp_port,
    )
    try:
        asyncio.run(run_demo(options))
    except DemoError as exc:
        print(f"ordergraph: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:  # before the demo took over the signals: nothing to clean up
        raise SystemExit(130) from None


def _run_uvicorn(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from ordergraph.web.websocket_protocol import SERVER_OPTIONS

    uvicorn.run(
        "ordergraph.cli:worker_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="info",
        log_config=logging_config(settings.log_format),
        access_log=settings.access_log,
        # X-Forwarded-For is believed from TRUSTED_PROXIES when set, else from uvicorn's default
        # (FORWARDED_ALLOW_IPS, or 127.0.0.1); see web/client_address.py.
        proxy_headers=True,
        forwarded_allow_ips=",".join(settings.trusted_proxies) or None,
        **SERVER_OPTIONS,
    )


# The collector's thresholds in a server (CPython's: 700, 10, 10, which promote a request's
# short-lived objects to the oldest generation; each time they grow it by a quarter a full
# collection walks every live object: 0.2 to 1.9 s with 10,000 subscribers). Young collections
# of 50,000 objects let them die young (docs/benchmarks.md, "the collector's thresholds").
GC_THRESHOLDS = (50_000, 20, 100)


def worker_app() -> object:
    """uvicorn's factory, in each worker (docs/benchmarks.md, "Finding and exporting orders")."""
    from ordergraph.app import create_app_from_env

    app = create_app_from_env()
    gc.freeze()  # the modules' and schema's objects out of full collections: 30-60 ms pauses
    gc.set_threshold(*GC_THRESHOLDS)
    return app


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

    secret = _settings().jwt_secret
    print(issue_token(secret, args.user, args.email, staff=args.staff, ttl_seconds=args.ttl))


async def _with_services(settings: Settings, work: Callable[[PaymentServices], Awaitable[T]]) -> T:
    """Run `work` as the server's sweeper would: with the database, Stripe and the event
    transport installed, so that subscribers held by the serving processes hear of each
    change this command makes."""
    from tortoise import Tortoise

    from ordergraph import events
    from ordergraph.db import tortoise_config
    from ordergraph.domain.payments import PaymentServices
    from ordergraph.mail import messages
    from ordergraph.stripe_gateway import StripeGateway

    await Tortoise.init(config=tortoise_config(settings.database_url))
    gateway = StripeGateway(settings)
    try:
        async with events.running(settings.events_url):
            messages.configure(settings)
            return await work(PaymentServices(settings, gateway))
    finally:
        await gateway.close()
        await Tortoise.close_connections()


def cmd_expire_pending(args: argparse.Namespace) -> None:
    from ordergraph.domain.expiry import sweep_overdue_orders

    settled = asyncio.run(_with_services(_settings(), sweep_overdue_orders))
    print(f"settled {settled} overdue orders")


def cmd_reconcile(args: argparse.Namespace) -> None:
    from ordergraph.domain.reconcile import reconcile
    from ordergraph.stripe_gateway import PaymentProviderError

    since = datetime.now(UTC) - timedelta(hours=args.since)
    try:
        report = asyncio.run(
            _with_services(_settings(), lambda services: reconcile(services, since=since))
        )
    except PaymentProviderError as exc:
        raise SystemExit(f"ordergraph reconcile: Stripe could not be asked: {exc}") from None
    print(
        f"reconciled {report.sessions} Stripe Checkout Sessions and {report.orders} paid "
        f"orders of the last {args.since} h; settled {report.swept} overdue orders"
    )
    for finding in report.findings:
        print(
            f"{finding.kind}\t{finding.order_id or '-'}\t{finding.session_id or '-'}\t"
            f"{finding.action}\t{finding.detail}"
        )
    if report.needs_staff:
        print(f"{len(report.needs_staff)} finding(s) need staff (see paymentDiscrepancies)")
        raise SystemExit(1)
    print("nothing needs staff")


def cmd_export_orders(args: argparse.Namespace) -> None:
    from ordergraph.domain.order_export import ExportInputError, export_query, write_csv

    try:
        query = export_query(args.start, args.end, args.status)
    except ExportInputError as exc:
        args.parser.error(str(exc))
    url = os.environ.get("DATABASE_URL") or Settings.database_url
    asyncio.run(write_csv(url, query, sys.stdout.buffer))


def cmd_send_webhooks(args: argparse.Namespace) -> None:
    from ordergraph.outgoing_webhooks.sender import send_until_stopped

    asyncio.run(send_until_stopped(_settings(), concurrency=args.concurrency))


def cmd_schema(args: argparse.Namespace) -> None:
    from ordergraph.schema import schema_sdl

    print(schema_sdl())


def cmd_stripe_emulator(args: argparse.Namespace) -> None:
    from ordergraph.stripe_emulator import serve_emulator

    _refuse_a_taken_port(args.host, args.port)
    asyncio.run(
        serve_emulator(
            args.host,
            args.port,
            webhook_url=args.webhook_url,
            webhook_secret=args.webhook_secret or os.environ.get("STRIPE_WEBHOOK_SECRET"),
        )
    )


DEMO_ONLY = ("state_dir", "reset", "emulator_port", "smtp_port")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ordergraph", description=__doc__, formatter_class=HelpFormatter
    )
    verbs = parser.add_subparsers(dest="verb", title="verbs", metavar="VERB")

    def verb(name: str, summary: str) -> argparse.ArgumentParser:
        return verbs.add_parser(
            name, help=summary, description=summary, formatter_class=HelpFormatter
        )

    serve = verb("serve", "apply migrations, then serve HTTP and WebSocket")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument(
        "--port", type=port_number, default=8000, metavar="PORT", help="port of the service"
    )
    serve.add_argument(
        "--workers",
        type=number(1),
        default=1,
        metavar="N",
        help="server processes sharing the port (not with --demo)",
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        help="embedded demo: SQLite, the Stripe emulator, a mail sink and a small catalogue "
        "(its database, Stripe, mail and JWT settings are its own, not the environment's)",
    )
    demo_options = serve.add_argument_group("with --demo")
    demo_options.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the demo keeps its database and JWT secret across restarts "
        "(default: .ordergraph-demo/<port> in the current directory)",
    )
    demo_options.add_argument(
        "--reset",
        action="store_true",
        help="wipe the demo's state (orders, products, JWT secret) before starting",
    )
    demo_options.add_argument(
        "--emulator-port",
        type=port_number,
        default=None,
        metavar="PORT",
        help="port of the Stripe emulator (default: 12111, or a free port when 12111 is "
        "taken; 0: a free port)",
    )
    demo_options.add_argument(
        "--smtp-port",
        type=port_number,
        default=None,
        metavar="PORT",
        help="port of the mail sink (default: 1025, or a free port when 1025 is taken; "
        "0: a free port)",
    )
    serve.set_defaults(func=cmd_serve, parser=serve)

    verb(
        "demo",
        "run two whole purchases (a shopper's; a guest's with shipping, a promotion code and "
        "tax) against a throwaway local stack and print their timeline",
    ).set_defaults(func=cmd_demo)

    migrate = verb("migrate", "apply pending database migrations (DATABASE_URL) and exit")
    migrate.set_defaults(func=cmd_migrate)

    token = verb("token", "print a bearer token signed with JWT_SECRET")
    token.add_argument("--user", required=True, metavar="ID", help="the user's id (sub)")
    token.add_argument("--email", required=True, metavar="ADDR", help="the user's email")
    token.add_argument("--staff", action="store_true", help="grant staff rights")
    token.add_argument(
        "--ttl", type=number(1), default=3600, metavar="SECONDS", help="lifetime in seconds"
    )
    token.set_defaults(func=cmd_token)

    verb(
        "expire-pending",
        "cancel unpaid orders past their expiry (after asking Stripe), releasing their stock",
    ).set_defaults(func=cmd_expire_pending)

    reconcile = verb(
        "reconcile",
        "compare Stripe's Checkout Sessions of the period with the orders, settle what a rule "
        "covers, record every PaymentDiscrepancy; exit status 1 when some need staff",
    )
    reconcile.add_argument(
        "--since",
        type=number(1, 24 * 90),
        default=48,
        metavar="HOURS",
        help="how far back to look",
    )
    reconcile.set_defaults(func=cmd_reconcile)

    export = verb("export-orders", "write the orders as CSV to standard output")
    export.add_argument("--from", dest="start", metavar="DATE", help="ISO date (default: any)")
    export.add_argument("--to", dest="end", metavar="DATE", help="ISO date (default: any)")
    export.add_argument("--status", help="an order status, e.g. SHIPPED (default: any)")
    export.set_defaults(func=cmd_export_orders, parser=export)

    hooks = verb("send-webhooks", "send outgoing webhooks only, until stopped (SIGTERM)")
    hooks.add_argument(
        "--concurrency",
        type=number(1, 256),
        default=16,
        metavar="N",
        help="deliveries sent at once (set WEBHOOK_CONCURRENCY=0 on the servers)",
    )
    hooks.set_defaults(func=cmd_send_webhooks)

    verb("schema", "print the GraphQL schema (SDL)").set_defaults(func=cmd_schema)

    emulator = verb("stripe-emulator", "run the local Stripe emulator")
    emulator.add_argument("--host", default="127.0.0.1", help="address to listen on")
    emulator.add_argument(
        "--port",
        type=port_number,
        default=12111,
        metavar="PORT",
        help="port to listen on; the service's STRIPE_API_BASE is http://HOST:PORT",
    )
    emulator.add_argument(
        "--webhook-url",
        default="http://127.0.0.1:8000/webhooks/stripe",
        metavar="URL",
        help="where to deliver signed events",
    )
    emulator.add_argument(
        "--webhook-secret",
        default=None,
        metavar="SECRET",
        help="the secret events are signed with (the service's STRIPE_WEBHOOK_SECRET); "
        "default: STRIPE_WEBHOOK_SECRET, else a generated whsec_... (printed at start)",
    )
    emulator.set_defaults(func=cmd_stripe_emulator)
    return parser


def _check(args: argparse.Namespace) -> None:
    """What argparse alone cannot say: options that only make sense together."""
    if args.verb != "serve":
        return
    parser: argparse.ArgumentParser = args.parser
    if not args.demo:
        given = [name for name in DEMO_ONLY if getattr(args, name) not in (None, False)]
        if given:
            flag = "--" + given[0].replace("_", "-")
            parser.error(f"{flag} applies to the demo only: add --demo")
    elif args.workers != 1:
        parser.error("--workers: the demo runs in one process")


def main(argv: Sequence[str] | None = None) -> None:
    try:
        configure_logging(log_format_from_env())
    except SettingsError as exc:
        print(f"ordergraph: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help(sys.stderr)
        raise SystemExit(2)
    _check(args)
    args.func(args)


if __name__ == "__main__":
    main()
