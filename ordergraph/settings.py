"""Every setting of the service, read from the environment in this one place.

The names and defaults are the service contract's (service.md). A setting that is required
for one feature only (Stripe keys) is checked where that feature is used, so that the service
can still start and answer everything else; `JWT_SECRET` is needed by every request and is
checked at start.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

EVENTS_SCHEMES = ("memory", "postgres", "postgresql", "redis", "rediss")


class SettingsError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise SettingsError(f"{name} must be true or false, not {value!r}")


def _int(name: str, value: str, *, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {value!r}") from None
    if not low <= number <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, not {number}")
    return number


def _networks(name: str, value: str) -> tuple[str, ...]:
    """Comma-separated addresses or CIDR networks, each checked (and written canonically)."""
    networks = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        try:
            networks.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise SettingsError(
                f"{name} must list IP addresses or networks (CIDR), not {part!r}"
            ) from None
    return tuple(networks)


class _Env:
    """Reads one variable at a time, as Starlette's `Config` does: an unset or empty variable
    is the default (taken from the `Settings` field, so each default is written once), a set
    one is checked and its error names the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def get(self, name: str) -> str | None:
        value = self.env.get(name)
        return value if value not in (None, "") else None

    def string(self, name: str, default: str) -> str:
        return self.get(name) or default

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        value = self.get(name)
        return default if value is None else _int(name, value, low=low, high=high)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name)
        return default if value is None else _bool(name, value)


def log_format_from_env(env: Mapping[str, str] | None = None) -> str:
    """LOG_FORMAT alone, for commands that log before (or without) the other settings."""
    value = ((os.environ if env is None else env).get("LOG_FORMAT") or "text").strip().lower()
    if value not in ("text", "json"):
        raise SettingsError(f"LOG_FORMAT must be text or json, not {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite://ordergraph.sqlite3"
    database_pool_size: int = 20
    events_url: str = "memory://"
    frontend_url: str = "http://localhost:5173"
    allowed_origins: tuple[str, ...] = ("http://localhost:5173",)
    stripe_secret_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None
    stripe_timeout_seconds: float = 10.0
    stripe_max_retries: int = 2
    shop_currency: str = "USD"
    shipping_countries: tuple[str, ...] = ("US",)
    automatic_tax: bool = False
    checkout_ttl_minutes: int = 30
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    mail_from: str = "orders@localhost"
    staff_email: str = "orders@localhost"
    mail_send_timeout_seconds: int = 20
    # Senders per process, each with an SMTP session of its own: one sends a mail at a time,
    # about 650 a second on loopback, bound by the SMTP exchange's round trips, not its CPU.
    mail_senders: int = 2
    sweep_interval_seconds: int = 60
    # How often the sweeper also compares Stripe's recent Checkout Sessions with the orders
    # (`ordergraph reconcile`), and how far back it looks.
    reconcile_interval_seconds: int = 900
    reconcile_window_hours: int = 48
    checkout_rate_per_minute: int = 5
    cart_max_lines: int = 100
    max_units_per_line: int = 1000
    max_unpaid_units_per_shopper: int = 2000
    expiry_grace_minutes: int = 5
    # Guest checkout: `startGuestSession` hands out guest tokens this long-lived, at most
    # `guest_sessions_per_hour` per client address (0 disables the limit).
    guest_checkout: bool = True
    guest_session_hours: int = 24
    guest_sessions_per_hour: int = 20
    # The statutory withdrawal period after delivery (EU: 14 days); 0 turns withdrawals off.
    withdrawal_days: int = 14
    # Outgoing webhooks (service.md, "Outgoing webhooks"): https only and no private,
    # loopback or link-local address unless `webhook_allow_private_targets`; each attempt has
    # `webhook_timeout_seconds`; failures are retried after `webhook_retry_base_ms`, doubling
    # (at most an hour apart), for `webhook_retry_hours`, then the delivery is DEAD. Each
    # process sends at most `webhook_concurrency` deliveries at once (0: it sends none).
    webhook_allow_private_targets: bool = False
    webhook_timeout_seconds: int = 10
    webhook_retry_base_ms: int = 30_000
    webhook_retry_hours: int = 72
    webhook_concurrency: int = 16
    # Reverse proxies whose X-Forwarded-For is believed (addresses or CIDR networks); see
    # web/client_address.py.
    trusted_proxies: tuple[str, ...] = ()
    jwt_secret: str = field(default="", repr=False)
    debug: bool = False
    access_log: bool = False
    log_format: str = "text"
    success_page: bool = False
    staff_console: bool = False
    metrics_token: str | None = field(default=None, repr=False)
    # prometheus_client's own variable (it reads it itself); checked here all the same.
    metrics_dir: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        read = _Env(os.environ if env is None else env)
        jwt_secret = read.get("JWT_SECRET")
        if jwt_secret is None:
            raise SettingsError(
                "JWT_SECRET is required: set it to the HS256 key that signs bearer tokens"
            )
        frontend_url = read.string("FRONTEND_URL", cls.frontend_url).rstrip("/")
        origins_raw = read.get("ALLOWED_ORIGINS")
        allowed_origins = (
            tuple(o.strip().rstrip("/") for o in origins_raw.split(",") if o.strip())
            if origins_raw
            else (_origin(frontend_url),)
        )
        events_url = read.string("EVENTS_URL", cls.events_url)
        if urlsplit(events_url).scheme not in EVENTS_SCHEMES:
            raise SettingsError(
                f"EVENTS_URL must start with one of {', '.join(EVENTS_SCHEMES)} (://), "
                f"not {events_url!r}"
            )
        metrics_dir = read.get("PROMETHEUS_MULTIPROC_DIR")
        if metrics_dir is not None and not os.path.isdir(metrics_dir):
            raise SettingsError(
                f"PROMETHEUS_MULTIPROC_DIR must be an existing directory, not {metrics_dir!r}"
            )
        currency = read.string("SHOP_CURRENCY", cls.shop_currency).upper()
        if len(currency) != 3 or not currency.isalpha():
            raise SettingsError(f"SHOP_CURRENCY must be an ISO 4217 code, not {currency!r}")
        countries = read.string("SHIPPING_COUNTRIES", ",".join(cls.shipping_countries))
        mail_from = read.string("MAIL_FROM", cls.mail_from)
        return cls(
            database_url=read.string("DATABASE_URL", cls.database_url),
            database_pool_size=read.integer(
                "DATABASE_POOL_SIZE", cls.database_pool_size, low=1, high=1000
            ),
            events_url=events_url,
            frontend_url=frontend_url,
            allowed_origins=allowed_origins,
            stripe_secret_key=read.get("STRIPE_SECRET_KEY"),
            stripe_webhook_secret=read.get("STRIPE_WEBHOOK_SECRET"),
            stripe_api_base=read.get("STRIPE_API_BASE"),
            stripe_timeout_seconds=float(
                read.integer(
                    "STRIPE_TIMEOUT_SECONDS", int(cls.stripe_timeout_seconds), low=1, high=120
                )
            ),
            stripe_max_retries=read.integer(
                "STRIPE_MAX_RETRIES", cls.stripe_max_retries, low=0, high=5
            ),
            shop_currency=currency,
            shipping_countries=tuple(c.strip().upper() for c in countries.split(",") if c.strip()),
            automatic_tax=read.boolean("AUTOMATIC_TAX", cls.automatic_tax),
            checkout_ttl_minutes=read.integer(
                "CHECKOUT_TTL_MINUTES", cls.checkout_ttl_minutes, low=30, high=1440
            ),
            smtp_host=read.string("SMTP_HOST", cls.smtp_host),
            smtp_port=read.integer("SMTP_PORT", cls.smtp_port, low=1, high=65535),
            smtp_username=read.get("SMTP_USERNAME"),
            smtp_password=read.get("SMTP_PASSWORD"),
            smtp_starttls=read.boolean("SMTP_STARTTLS", cls.smtp_starttls),
            mail_from=mail_from,
            staff_email=read.string("STAFF_EMAIL", mail_from),
            mail_send_timeout_seconds=read.integer(
                "MAIL_SEND_TIMEOUT_SECONDS", cls.mail_send_timeout_seconds, low=1, high=300
            ),
            mail_senders=read.integer("MAIL_SENDERS", cls.mail_senders, low=1, high=16),
            checkout_rate_per_minute=read.integer(
                "CHECKOUT_RATE_PER_MINUTE", cls.checkout_rate_per_minute, low=0, high=1_000_000
            ),
            cart_max_lines=read.integer("CART_MAX_LINES", cls.cart_max_lines, low=1, high=100),
            max_units_per_line=read.integer(
                "MAX_UNITS_PER_LINE", cls.max_units_per_line, low=1, high=1_000_000
            ),
            max_unpaid_units_per_shopper=read.integer(
                "MAX_UNPAID_UNITS_PER_SHOPPER",
                cls.max_unpaid_units_per_shopper,
                low=1,
                high=100_000_000,
            ),
            sweep_interval_seconds=read.integer(
                "SWEEP_INTERVAL_SECONDS", cls.sweep_interval_seconds, low=0, high=86400
            ),
            reconcile_interval_seconds=read.integer(
                "RECONCILE_INTERVAL_SECONDS", cls.reconcile_interval_seconds, low=0, high=86400
            ),
            reconcile_window_hours=read.integer(
                "RECONCILE_WINDOW_HOURS", cls.reconcile_window_hours, low=1, high=24 * 30
            ),
            expiry_grace_minutes=read.integer(
                "EXPIRY_GRACE_MINUTES", cls.expiry_grace_minutes, low=0, high=1440
            ),
            guest_checkout=read.boolean("GUEST_CHECKOUT", cls.guest_checkout),
            guest_session_hours=read.integer(
                "GUEST_SESSION_HOURS", cls.guest_session_hours, low=1, high=24 * 365
            ),
            guest_sessions_per_hour=read.integer(
                "GUEST_SESSIONS_PER_HOUR", cls.guest_sessions_per_hour, low=0, high=1_000_000
            ),
            withdrawal_days=read.integer("WITHDRAWAL_DAYS", cls.withdrawal_days, low=0, high=3650),
            webhook_allow_private_targets=read.boolean(
                "WEBHOOK_ALLOW_PRIVATE_TARGETS", cls.webhook_allow_private_targets
            ),
            webhook_timeout_seconds=read.integer(
                "WEBHOOK_TIMEOUT_SECONDS", cls.webhook_timeout_seconds, low=1, high=60
            ),
            webhook_retry_base_ms=read.integer(
                "WEBHOOK_RETRY_BASE_MS", cls.webhook_retry_base_ms, low=1, high=3_600_000
            ),
            webhook_retry_hours=read.integer(
                "WEBHOOK_RETRY_HOURS", cls.webhook_retry_hours, low=1, high=24 * 30
            ),
            webhook_concurrency=read.integer(
                "WEBHOOK_CONCURRENCY", cls.webhook_concurrency, low=0, high=256
            ),
            trusted_proxies=_networks("TRUSTED_PROXIES", read.get("TRUSTED_PROXIES") or ""),
            jwt_secret=jwt_secret,
            debug=read.boolean("DEBUG", cls.debug),
            access_log=read.boolean("ACCESS_LOG", cls.access_log),
            log_format=log_format_from_env(read.env),
            success_page=read.boolean("SUCCESS_PAGE", cls.success_page),
            staff_console=read.boolean("STAFF_CONSOLE", cls.staff_console),
            metrics_token=read.get("METRICS_TOKEN"),
            metrics_dir=metrics_dir,
        )
