"""The `ordergraph` command as an operator runs it: a real subprocess."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

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


VERBS = (
    "serve",
    "demo",
    "migrate",
    "token",
    "expire-pending",
    "reconcile",
    "export-orders",
    "send-webhooks",
    "schema",
    "stripe-emulator",
)


def test_bare_ordergraph_lists_the_verbs() -> None:
    done = run()
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    for verb in VERBS:
        assert re.search(rf"^ +{verb}\b", done.stderr, re.MULTILINE), done.stderr


def test_every_verb_and_option_says_what_it_does_and_its_default() -> None:
    import argparse

    from ordergraph.cli import build_parser

    verbs = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    assert sorted(verbs.choices) == sorted(VERBS)
    assert all(choice.help for choice in verbs._choices_actions)
    for name, parser in verbs.choices.items():
        for action in parser._actions:
            assert action.help, (name, action.option_strings)
            shown = action.default not in (None, False) and not action.required
            if shown:  # the formatter adds it; nothing else may say it twice
                assert "default" not in action.help, (name, action.option_strings)
            elif action.default is None and not action.required and action.nargs != 0:
                assert "default:" in action.help, (name, action.option_strings)
    serve = " ".join(run("serve", "--help").stdout.split())
    for text in (
        "--port PORT port of the service (default: 8000)",
        "(default: 127.0.0.1)",
        "(default: .ordergraph-demo/<port> in the current directory)",
        "(default: 12111, or a free port when 12111 is taken; 0: a free port)",
        "(default: 1025, or a free port when 1025 is taken; 0: a free port)",
    ):
        assert text in serve, serve
    token = " ".join(run("token", "--help").stdout.split())
    assert "--ttl SECONDS lifetime in seconds (default: 3600)" in token, token


@pytest.mark.parametrize("ttl", ["0", "-5", "soon"])
def test_token_ttl_below_one_second_is_refused(ttl: str) -> None:
    done = run("token", "--user", "u", "--email", "e", "--ttl", ttl, env={"JWT_SECRET": "s" * 32})
    assert done.returncode == 2
    assert "argument --ttl:" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_demo_options_need_demo() -> None:
    done = run("serve", "--reset")
    assert done.returncode == 2
    assert "--reset applies to the demo only: add --demo" in done.stderr
    done = run("serve", "--demo", "--workers", "2")
    assert done.returncode == 2
    assert "the demo runs in one process" in done.stderr


@pytest.mark.parametrize("verb", ["serve", "stripe-emulator"])
def test_a_taken_port_is_one_line_before_anything_else(tmp_path: Path, verb: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        database = tmp_path / "never.sqlite3"
        done = run(
            verb,
            "--port",
            str(port),
            env={"JWT_SECRET": "s" * 32, "DATABASE_URL": f"sqlite://{database}"},
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"ordergraph: port {port} on 127.0.0.1 is already in use: stop what listens there, "
        "or choose another with --port"
    ]
    assert not database.exists()  # nothing migrated
