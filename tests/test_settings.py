"""Settings come from the environment in one place and name what is missing or wrong."""

from __future__ import annotations

import pytest

from ordergraph.settings import Settings, SettingsError


def test_defaults_are_the_contracts() -> None:
    settings = Settings.from_env({"JWT_SECRET": "s"})
    assert settings.database_url == "sqlite://ordergraph.sqlite3"
    assert settings.events_url == "memory://"
    assert settings.frontend_url == "http://localhost:5173"
    assert settings.allowed_origins == ("http://localhost:5173",)
    assert settings.shop_currency == "USD"
    assert settings.checkout_ttl_minutes == 30
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_starttls) == (
        "localhost",
        25,
        False,
    )
    assert settings.mail_from == "orders@localhost"
    assert (settings.shipping_countries, settings.automatic_tax) == (("US",), False)
    assert Settings.from_env({"JWT_SECRET": "s", "AUTOMATIC_TAX": "true"}).automatic_tax is True
    assert settings.stripe_secret_key is None and settings.debug is False
    assert (settings.log_format, settings.success_page, settings.metrics_token) == (
        "text",
        False,
        None,
    )


def test_allowed_origins_default_to_the_frontend_origin() -> None:
    settings = Settings.from_env({"JWT_SECRET": "s", "FRONTEND_URL": "https://shop.example/app/"})
    assert settings.frontend_url == "https://shop.example/app"
    assert settings.allowed_origins == ("https://shop.example",)
    listed = Settings.from_env(
        {"JWT_SECRET": "s", "ALLOWED_ORIGINS": "https://a.example, https://b.example"}
    )
    assert listed.allowed_origins == ("https://a.example", "https://b.example")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "JWT_SECRET"),
        ({"JWT_SECRET": "s", "CHECKOUT_TTL_MINUTES": "5"}, "CHECKOUT_TTL_MINUTES"),
        ({"JWT_SECRET": "s", "SMTP_PORT": "smtp"}, "SMTP_PORT"),
        ({"JWT_SECRET": "s", "SMTP_STARTTLS": "maybe"}, "SMTP_STARTTLS"),
        ({"JWT_SECRET": "s", "SHOP_CURRENCY": "dollars"}, "SHOP_CURRENCY"),
        ({"JWT_SECRET": "s", "LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"JWT_SECRET": "s", "SUCCESS_PAGE": "perhaps"}, "SUCCESS_PAGE"),
        ({"JWT_SECRET": "s", "AUTOMATIC_TAX": "sometimes"}, "AUTOMATIC_TAX"),
        ({"JWT_SECRET": "s", "MAIL_SENDERS": "0"}, "MAIL_SENDERS"),
        (
            {"JWT_SECRET": "s", "PROMETHEUS_MULTIPROC_DIR": "/nonexistent/metrics"},
            "PROMETHEUS_MULTIPROC_DIR",
        ),
    ],
)
def test_a_bad_setting_is_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)
