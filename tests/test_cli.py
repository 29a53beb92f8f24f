"""The `ordergraph` command as an operator runs it: a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jwt

from ordergraph.auth import decode_token

CONTRACT = Path(__file__).resolve().parents[2] / "shared" / "tools" / "contract-check"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ordergraph.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_token_is_signed_with_jwt_secret() -> None:
    done = run(
        "token",
        "--user",
        "u1",
        "--email",
        "u1@example.com",
        "--staff",
        "--ttl",
        "60",
        env={"JWT_SECRET": "cli-secret-" + "k" * 32},
    )
    assert done.returncode == 0, done.stderr
    identity = decode_token("cli-secret-" + "k" * 32, done.stdout.strip())
    assert (identity.user_id, identity.email, identity.is_staff) == ("u1", "u1@example.com", True)
    claims = jwt.decode(done.stdout.strip(), "cli-secret-" + "k" * 32, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 60


def test_missing_jwt_secret_is_named() -> None:
    env = {k: v for k, v in os.environ.items() if k != "JWT_SECRET"}
    done = subprocess.run(
        [sys.executable, "-m", "ordergraph.cli", "token", "--user", "u", "--email", "e"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2
    assert "JWT_SECRET is required" in done.stderr
    assert "Traceback" not in done.stderr


def test_schema_keeps_the_public_contract(tmp_path: Path) -> None:
    done = run("schema")
    assert done.returncode == 0, done.stderr
    assert "type Query" in done.stdout and "checkout: CheckoutPayload!" in done.stdout
    if CONTRACT.exists():
        sdl = tmp_path / "served.graphql"
        sdl.write_text(done.stdout)
        check = subprocess.run(
            [sys.executable, str(CONTRACT), str(sdl)], capture_output=True, text=True
        )
        assert check.stdout.strip().endswith(("contract: kept", "gaps")), check.stdout


def test_committed_schema_graphql_is_current() -> None:
    """Frontends generate their types from `schema.graphql`: it must be what is served."""
    committed = Path(__file__).resolve().parents[1] / "schema.graphql"
    done = run("schema")
    assert done.returncode == 0, done.stderr
    assert done.stdout == committed.read_text(), (
        "schema.graphql is stale: run `ordergraph schema > schema.graphql` and commit it"
    )


def test_bad_log_format_is_named() -> None:
    done = run("schema", env={"LOG_FORMAT": "xml"})
    assert done.returncode == 2
    assert "LOG_FORMAT must be text or json" in done.stderr
    assert "Traceback" not in done.stderr


def test_migrate_creates_the_schema_on_a_fresh_database(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'fresh.sqlite3'}"
    first = run("migrate", env={"DATABASE_URL": url})
    assert first.returncode == 0, first.stderr
    again = run("migrate", env={"DATABASE_URL": url})
    assert again.returncode == 0, again.stderr
    import sqlite3

    tables = {
        r[0]
        for r in sqlite3.connect(tmp_path / "fresh.sqlite3").execute(
            "select name from sqlite_master where type='table'"
        )
    }
    assert {
        "orders",
        "order_items",
        "products",
        "outbox_emails",
        "processed_stripe_events",
    } <= tables
