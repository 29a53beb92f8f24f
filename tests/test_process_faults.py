"""Faults of whole processes: a server killed with SIGKILL between a payment and its receipt,
and the database restarted under a running server."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    BACKEND,
    IN_CI,
    JWT_SECRET,
    WEBHOOK_SECRET,
    Harness,
    Mailbox,
    SmtpServer,
    postgres_only,
    scratch_database,
)
from tests.utils.helpers import ADD_TO_CART, CHECKOUT
from tests.utils.live import ServerProcess, eventually

ORDER_STATUS = "query($id: ID!) { order(id: $id) { status paymentStatus } }"


@pytest.fixture
async def own_database() -> AsyncIterator[str]:
    """A database of this test's own, so that only the processes it starts touch it."""
    if BACKEND == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite://{Path(folder) / 'own.sqlite3'}"
        return
    async with scratch_database("own") as url:
        yield url


def _server_env(app: Harness, smtp: SmtpServer, database_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "EVENTS_URL": "memory://",
        "JWT_SECRET": JWT_SECRET,
        "STRIPE_SECRET_KEY": "sk_test_ordergraph",
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": app.settings.stripe_api_base or "",
        "STRIPE_TIMEOUT_SECONDS": "5",
        "FRONTEND_URL": "http://shop.test",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "SWEEP_INTERVAL_SECONDS": "0",
        "MAIL_SEND_TIMEOUT_SECONDS": "2",  # a killed sender's claim runs out in 9 s
    }


async def _gql(
    url: str, query: str, variables: dict[str, object] | None = None, token: str | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(
            f"{url}/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )


async def _place_order(app: Harness, server: ServerProcess, database_url: str) -> str:
    staff = app.token("sam", staff=True)
    created = await _gql(
        server.url,
        'mutation { upsertProduct(input: {sku: "KILL", name: "Kill test", price: 900, '
        "stock: 3}) { product { id } } }",
        token=staff,
    )
    product_id = created.json()["data"]["upsertProduct"]["product"]["id"]
    token = app.token("victim")
    await _gql(server.url, ADD_TO_CART, {"p": product_id, "q": 1}, token=token)
    answer = (await _gql(server.url, CHECKOUT, token=token)).json()["data"]["checkout"]
    assert answer["userErrors"] == [], answer
    order_id: str = answer["orderId"]
    return order_id


async def test_receipt_survives_kill_9_between_confirmation_and_sending(
    app: Harness, mailbox: Mailbox, smtp: SmtpServer, own_database: str
) -> None:
    env = _server_env(app, smtp, own_database)
    first = ServerProcess(env, "kill-first")
    await first.start()
    try:
        order_id = await _place_order(app, first, own_database)
        session_id = next(
            s["id"] for s in app.emulator.sessions.values() if s["client_reference_id"] == order_id
        )
        smtp.stop()  # the receipt cannot leave before the kill
        app.emulator.webhook_url = f"{first.url}/webhooks/stripe"
        delivery = await app.emulator.complete_session(session_id)
        assert delivery.status_code == 200
        assert first.process is not None
        first.process.kill()  # SIGKILL: no shutdown, no flush
        await first.process.wait()
    finally:
        await first.stop()
        smtp.start()
    assert mailbox.messages == []

    second = ServerProcess(env, "kill-second")
    await second.start()
    try:
        messages = await mailbox.wait_for(1, timeout=30)
        assert [m["To"] for m in messages] == ["victim@example.com"]
        assert order_id in messages[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
        status = await _gql(second.url, ORDER_STATUS, {"id": order_id}, token=app.token("victim"))
        assert status.json()["data"]["order"] == {
            "status": "PAYMENT_CONFIRMED",
            "paymentStatus": "PAID",
        }
        assert len(await mailbox.wait_for(2, timeout=2)) == 1
    finally:
        await second.stop()


def _restart_command() -> list[str] | None:
    """How to restart the machine's PostgreSQL, where this test may do so."""
    if os.environ.get("ORDERGRAPH_TEST_PG_RESTART", "").lower() not in ("1", "true"):
        return None
    tool = shutil.which("pg_ctlcluster")
    versions = (
        sorted(Path("/etc/postgresql").glob("*/main")) if Path("/etc/postgresql").exists() else []
    )
    if tool is None or not versions or os.geteuid() != 0:
        return None
    return [tool, "--skip-systemctl-redirect", versions[-1].parent.name, "main", "restart"]


@postgres_only
@pytest.mark.alone  # every other test's connections would go down with the server
async def test_server_rides_out_a_database_restart(
    app: Harness, smtp: SmtpServer, own_database: str
) -> None:
    command = _restart_command()
    if command is None:
        reason = "restarting PostgreSQL needs ORDERGRAPH_TEST_PG_RESTART=1, root and pg_ctlcluster"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    server = ServerProcess(_server_env(app, smtp, own_database), "pg-restart")
    await server.start()
    token = app.token("patient")
    try:
        before = await _gql(server.url, "{ cart { itemCount } }", token=token)
        assert before.json() == {"data": {"cart": {"itemCount": 0}}}

        restart = await asyncio.create_subprocess_exec(*command, stdout=subprocess.DEVNULL)
        during: list[int] = []
        while restart.returncode is None:
            try:
                response = await _gql(server.url, "{ cart { itemCount } }", token=token)
                during.append(response.status_code)
                assert "Traceback" not in response.text
            except httpx.TransportError:
                during.append(0)
            try:
                await asyncio.wait_for(restart.wait(), 0.05)
            except TimeoutError:
                pass
        assert restart.returncode == 0
        assert all(code in (200, 503) for code in during), during

        async def recovered() -> bool:
            response = await _gql(server.url, "{ cart { itemCount } }", token=token)
            return response.json() == {"data": {"cart": {"itemCount": 0}}}

        assert await eventually(recovered, timeout=30)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{server.url}/readyz")).status_code == 200
    finally:
        await server.stop()
