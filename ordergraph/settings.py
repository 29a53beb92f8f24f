"""Every setting of the service, read from the environment in this one place.

The names and defaults are the service contract's (service.md). A setting that is required
for one feature only (Stripe keys) is checked where that feature is used, so that the service
can still start and answer everything else; `JWT_SECRET` is needed by every request and is
checked at start.
"""

from __future__ import annotations

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
    checkout_ttl_minutes: int = 30
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    mail_from: str = "orders@localhost"
    staff_email: str = "orders@localhost"
    mail_send_timeout_seconds: int = 20
    sweep_interval_seconds: int = 60
    checkout_rate_per_minute: int = 5
    expiry_grace_minutes: int = 5
    jwt_secret: str = field(default="", repr=False)
    debug: bool = False
    access_log: bool = False
    log_format: str = "text"
    success_page: bool = False
    metrics_token: str | None = field(default=None, repr=False)
    # prometheus_client's own variable (it reads it itself); checked here all the same.
    metrics_dir: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else None

        jwt_secret = get("JWT_SECRET")
        if jwt_secret is None:
            raise SettingsError(
                "JWT_SECRET is required: set it to the HS256 key that signs bearer tokens"
            )
        frontend_url = (get("FRONTEND_URL") or cls.frontend_url).rstrip("/")
        origins_raw = get("ALLOWED_ORIGINS")
        allowed_origins = (
            tuple(o.strip().rstrip("/") for o in origins_raw.split(",") if o.strip())
            if origins_raw
            else (_origin(frontend_url),)
        )
        events_url = get("EVENTS_URL") or cls.events_url
        if urlsplit(events_url).scheme not in EVENTS_SCHEMES:
            raise SettingsError(
                f"EVENTS_URL must start with one of {', '.join(EVENTS_SCHEMES)} (://), "
                f"not {events_url!r}"
            )
        log_format = log_format_from_env(env)
        metrics_dir = get("PROMETHEUS_MULTIPROC_DIR")
        if metrics_dir is not None and not os.path.isdir(metrics_dir):
            raise SettingsError(
                f"PROMETHEUS_MULTIPROC_DIR must be an existing directory, not {metrics_dir!r}"
            )
        currency = (get("SHOP_CURRENCY") or cls.shop_currency).upper()
        if len(currency) != 3 or not currency.isalpha():
            raise SettingsError(f"SHOP_CURRENCY must be an ISO 4217 code, not {currency!r}")
        return cls(
            database_url=get("DATABASE_URL") or cls.database_url,
            database_pool_size=_int(
                "DATABASE_POOL_SIZE", get("DATABASE_POOL_SIZE") or "20", low=1, high=1000
            ),
            events_url=events_url,
            frontend_url=frontend_url,
            allowed_origins=allowed_origins,
            stripe_secret_key=get("STRIPE_SECRET_KEY"),
            stripe_webhook_secret=get("STRIPE_WEBHOOK_SECRET"),
            stripe_api_base=get("STRIPE_API_BASE"),
            stripe_timeout_seconds=float(
                _int(
                    "STRIPE_TIMEOUT_SECONDS", get("STRIPE_TIMEOUT_SECONDS") or "10", low=1, high=120
                )
            ),
            stripe_max_retries=_int(
                "STRIPE_MAX_RETRIES", get("STRIPE_MAX_RETRIES") or "2", low=0, high=5
            ),
            shop_currency=currency,
            shipping_countries=tuple(
                c.strip().upper()
                for c in (get("SHIPPING_COUNTRIES") or "US").split(",")
                if c.strip()
            ),
            checkout_ttl_minutes=_int(
                "CHECKOUT_TTL_MINUTES", get("CHECKOUT_TTL_MINUTES") or "30", low=30, high=1440
            ),
            smtp_host=get("SMTP_HOST") or cls.smtp_host,
            smtp_port=_int("SMTP_PORT", get("SMTP_PORT") or "25", low=1, high=65535),
            smtp_username=get("SMTP_USERNAME"),
            smtp_password=get("SMTP_PASSWORD"),
            smtp_starttls=_bool("SMTP_STARTTLS", get("SMTP_STARTTLS") or "false"),
            mail_from=get("MAIL_FROM") or cls.mail_from,
            staff_email=get("STAFF_EMAIL") or get("MAIL_FROM") or cls.staff_email,
            mail_send_timeout_seconds=_int(
                "MAIL_SEND_TIMEOUT_SECONDS",
                get("MAIL_SEND_TIMEOUT_SECONDS") or "20",
                low=1,
                high=300,
            ),
            checkout_rate_per_minute=_int(
                "CHECKOUT_RATE_PER_MINUTE",
                get("CHECKOUT_RATE_PER_MINUTE") or "5",
                low=0,
                high=1_000_000,
            ),
            sweep_interval_seconds=_int(
                "SWEEP_INTERVAL_SECONDS", get("SWEEP_INTERVAL_SECONDS") or "60", low=0, high=86400
            ),
            expiry_grace_minutes=_int(
                "EXPIRY_GRACE_MINUTES", get("EXPIRY_GRACE_MINUTES") or "5", low=0, high=1440
            ),
            jwt_secret=jwt_secret,
            debug=_bool("DEBUG", get("DEBUG") or "false"),
            access_log=_bool("ACCESS_LOG", get("ACCESS_LOG") or "false"),
            log_format=log_format,
            success_page=_bool("SUCCESS_PAGE", get("SUCCESS_PAGE") or "false"),
            metrics_token=get("METRICS_TOKEN"),
            metrics_dir=metrics_dir,
        )
