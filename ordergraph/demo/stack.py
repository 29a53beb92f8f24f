"""The demo stack: the whole service on one machine with nothing to set up.

Shared by `ordergraph serve --demo` (serves until stopped, for a person to explore) and
`ordergraph demo` (runs one purchase through it and exits): SQLite, in-memory events, the
Stripe emulator, an SMTP sink, a small catalogue.

`serve --demo` takes its ports before anything else: the service's own (`--port`) or it stops
with one line saying so; the emulator's and the mail sink's usual ports (12111, 1025), or free
ones when those are taken, so that several demos run side by side. Its database and token key
live in a state directory (`ordergraph.demo.state`), one per port unless `--state-dir` says
otherwise. The banner with the tokens is printed once every part listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import errno
import logging
import os
import secrets
import shlex
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import uvicorn
from aiosmtpd.smtp import SMTP
from starlette.types import ASGIApp
from tortoise import Tortoise

from ordergraph.app import create_app
from ordergraph.auth import issue_token
from ordergraph.db import apply_migrations, tortoise_config
from ordergraph.demo.state import DemoError, DemoState, default_state_dir
from ordergraph.settings import Settings, SettingsError
from ordergraph.stripe_emulator import StripeEmulator
from ordergraph.web.websocket_protocol import SERVER_OPTIONS

log = logging.getLogger("ordergraph.demo.stack")
logging.getLogger("mail.log").setLevel(logging.WARNING)

CATALOGUE = [
    ("TEE-BLACK-M", "Black T-shirt (M)", "Organic cotton, heavy weight.", 2500, 25),
    ("MUG-ENAMEL", "Enamel mug", "Chips like the real thing.", 1400, 10),
    ("CAP-NAVY", "Navy cap", "One size.", 1900, 5),
    ("SOCKS-3", "Socks, three pairs", "Wool blend.", 1200, 40),
    ("POSTER-A2", "Launch poster (A2)", "Limited print run.", 3000, 3),
]

DEFAULT_PORT = 8000
EMULATOR_PORT = 12111
SMTP_PORT = 1025
LOOPBACK = "127.0.0.1"


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
    on_mail: Callable[[EmailMessage], None],
    host: str = LOOPBACK,
    port: int = 0,
    *,
    sock: socket.socket | None = None,
) -> asyncio.Server:
    """Serves in this event loop on `sock`, or on host:port (0 takes a free one, see
    `bound_port`)."""
    sink = MailSink(on_mail)
    loop = asyncio.get_running_loop()
    if sock is not None:
        return await loop.create_server(lambda: SMTP(sink, hostname=host), sock=sock)
    return await loop.create_server(lambda: SMTP(sink, hostname=host), host, port)


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
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **SERVER_OPTIONS))


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


# ----------------------------------------------------------------- `ordergraph serve --demo`


@dataclass(frozen=True)
class DemoOptions:
    """What `ordergraph serve --demo` was asked for."""

    host: str = LOOPBACK
    port: int = DEFAULT_PORT
    state_dir: Path | None = None  # None: .ordergraph-demo/<port>
    reset: bool = False
    emulator_port: int | None = None  # None: EMULATOR_PORT, or a free port if that is taken
    smtp_port: int | None = None  # None: SMTP_PORT, or a free port if that is taken


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound and listening at once, so that no other process takes the port in between
    (Linux lets two SO_REUSEADDR sockets bind one port while neither listens)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _claim(host: str, port: int, part: str, option: str) -> socket.socket:
    try:
        return listening_socket(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise DemoError(
                f"port {port} on {host} ({part}) is already in use: stop what listens there, "
                f"or choose another port with {option}"
            ) from None
        reason = exc.strerror or str(exc)
        raise DemoError(f"cannot listen on {host}:{port} ({part}): {reason}") from None


def _claim_helper(port: int | None, usual: int, part: str, option: str) -> socket.socket:
    """A helper's port: the one asked for, else its usual one, else any free one."""
    if port is not None:
        return _claim(LOOPBACK, port, part, option)
    try:
        return listening_socket(LOOPBACK, usual)
    except OSError:
        return _claim(LOOPBACK, 0, part, option)


def _port_of(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


def _url_host(host: str) -> str:
    # A browser on this machine may call it by either name (and never by a wildcard address).
    local = LOOPBACK if host in ("0.0.0.0", "::", "") else host
    return f"[{local}]" if ":" in local else local


def _reach(sock: socket.socket) -> str:
    """The service's own URL for the emulator's webhooks: the address it bound, whatever
    name it was given (`localhost` may be ::1 or 127.0.0.1)."""
    address: str = sock.getsockname()[0]
    local = {"0.0.0.0": LOOPBACK, "::": "::1"}.get(address, address)
    return f"http://{_url_host(local)}:{_port_of(sock)}"


class _DemoServer(uvicorn.Server):
    """Leaves SIGINT and SIGTERM to `run_demo`, which stops every part at once."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _ordergraph_command() -> str:
    """How to run `ordergraph` from any directory: the script beside this interpreter."""
    script = Path(sys.executable).parent / "ordergraph"
    if script.exists():
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m ordergraph.cli"


def _print_mail(message: EmailMessage) -> None:
    print(
        f"\n--- mail to {message['To']}: {message['Subject']} ---\n{plain_text(message)}\n---",
        flush=True,
    )


def _banner(base: str, emulator_url: str, smtp_port: int, state: DemoState, secret: str) -> str:
    shopper = issue_token(secret, "demo-shopper", "shopper@example.com", ttl_seconds=86400)
    staff = issue_token(secret, "demo-staff", "staff@example.com", staff=True, ttl_seconds=86400)
    mint = (
        f"JWT_SECRET={shlex.quote(secret)} {_ordergraph_command()} token "
        "--user alice --email alice@example.com"
    )
    return f"""
ordergraph demo: the service, the Stripe emulator and the mail sink are listening
  GraphQL (GraphiQL in a browser): {base}/graphql
  Stripe emulator:                 {emulator_url}
  Mail sink (SMTP):                {LOOPBACK}:{smtp_port} (each mail is printed here)
  State (database, JWT secret):    {state.directory} (--reset wipes it)
  Shopper token: {shopper}
  Staff token:   {staff}
  Mint a token:  {mint}
                 (add --staff for a staff token; tokens stay valid across restarts)
  Pay for a session: curl -X POST {emulator_url}/_emulator/checkout/sessions/<cs_id>/complete
  Watch an order live: {base}/order-success/<orderId>#token=<shopper token>
  Staff console:       {base}/staff (sign in with the staff token above)
  Stop with Ctrl-C.
"""


def _demo_settings(
    state: DemoState, base: str, emulator_url: str, smtp_port: int
) -> tuple[Settings, dict[str, str]]:
    """The demo's own settings (what `demo.env` records), over the environment's others."""
    own = {
        "DATABASE_URL": state.database_url,
        "EVENTS_URL": "memory://",
        "JWT_SECRET": state.jwt_secret(),
        "STRIPE_SECRET_KEY": "sk_test_demo",
        "STRIPE_API_BASE": emulator_url,
        "STRIPE_WEBHOOK_SECRET": "whsec_demo_" + secrets.token_hex(16),
        "SMTP_HOST": LOOPBACK,
        "SMTP_PORT": str(smtp_port),
        "SMTP_STARTTLS": "false",
        "SMTP_USERNAME": "",
        "SMTP_PASSWORD": "",
        # Stripe sends the shopper back to the reference success page this server serves.
        "FRONTEND_URL": base,
    }
    port = base.rsplit(":", 1)[1]
    origins = {base, f"http://127.0.0.1:{port}", f"http://localhost:{port}"}
    explore = {
        "DEBUG": "true",
        "SUCCESS_PAGE": "true",
        "STAFF_CONSOLE": "true",
        "ALLOWED_ORIGINS": ",".join(sorted(origins)),
    }
    try:
        return Settings.from_env({**os.environ, **own, **explore}), own
    except SettingsError as exc:
        raise DemoError(str(exc)) from None


async def run_demo(options: DemoOptions) -> None:
    """`ordergraph serve --demo`: serve the demo stack until SIGINT or SIGTERM.

    Raises `DemoError` (one line for the person) when it cannot start.
    """
    # Logging is the CLI's (LOG_FORMAT); "started" lines give way to the banner.
    for name in ("uvicorn.error", "tortoise"):
        logging.getLogger(name).setLevel(logging.WARNING)
    async with contextlib.AsyncExitStack() as resources:
        # The service's port first: a demo that cannot have it must not touch the state of
        # the demo that has it (its --reset would wipe a running demo's database).
        service_socket = _claim(options.host, options.port, "the service", "--port")
        resources.callback(service_socket.close)
        port = _port_of(service_socket)
        state = DemoState(options.state_dir or default_state_dir(port))
        resources.callback(state.close)
        emulator_socket = _claim_helper(
            options.emulator_port, EMULATOR_PORT, "the Stripe emulator", "--emulator-port"
        )
        resources.callback(emulator_socket.close)
        smtp_socket = _claim_helper(options.smtp_port, SMTP_PORT, "the mail sink", "--smtp-port")
        resources.callback(smtp_socket.close)
        if options.reset:
            state.reset()
        base = f"http://{_url_host(options.host)}:{port}"
        emulator_url = f"http://{LOOPBACK}:{_port_of(emulator_socket)}"
        settings, own = _demo_settings(state, base, emulator_url, _port_of(smtp_socket))
        state.write_env(own)
        await apply_migrations(settings.database_url)
        await seed_catalogue(settings)
        sink = await start_mail_sink(_print_mail, sock=smtp_socket)
        resources.push_async_callback(sink.wait_closed)
        resources.callback(sink.close)
        emulator = StripeEmulator(
            webhook_url=f"{_reach(service_socket)}/webhooks/stripe",
            webhook_secret=settings.stripe_webhook_secret,
        )
        parts = [
            (_demo_server(app, settings), sock)
            for app, sock in (
                (emulator.app, emulator_socket),
                (create_app(settings), service_socket),
            )
        ]
        banner = _banner(base, emulator_url, _port_of(smtp_socket), state, settings.jwt_secret)
        await _serve(parts, lambda: print(banner, flush=True))


def _demo_server(app: ASGIApp, settings: Settings) -> uvicorn.Server:
    return _DemoServer(
        uvicorn.Config(app, log_config=None, access_log=settings.access_log, **SERVER_OPTIONS)
    )


async def _serve(
    parts: list[tuple[uvicorn.Server, socket.socket]], on_listening: Callable[[], None]
) -> None:
    """Serve every part; call `on_listening` once all listen; stop all on a signal or when
    one of them ends."""
    servers = [server for server, _ in parts]
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        for server in servers:
            server.should_exit = True
            server.force_exit = signals > 1  # a second Ctrl-C does not wait for connections

    loop = asyncio.get_running_loop()
    handled = []
    for number in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(number, on_signal)
            handled.append(number)
    tasks = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in parts]
    try:
        while not all(server.started for server in servers):
            if any(task.done() for task in tasks):
                break
            await asyncio.sleep(0.01)
        else:
            on_listening()
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        for number in handled:
            loop.remove_signal_handler(number)
    for task in tasks:
        task.result()  # a part that failed is an error of the whole
