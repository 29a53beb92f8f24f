"""Count the SQL statements each kind of request issues, by listening on asyncpg itself.

    .venv/bin/python -m bench.sqlcount DATABASE_URL SMTP_PORT RESULT.json

The service runs in this process (uvicorn on loopback, the Stripe emulator beside it) with
asyncpg's `Connection.execute/executemany/fetch/fetchrow/fetchval` wrapped, so every round
trip the ORM makes (BEGIN, SAVEPOINT and COMMIT included) is recorded against the request
that caused it; work in background tasks (the mail sender) is recorded apart. Each request
kind is sent once to warm caches, then once more and counted.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import asyncpg.connection
import httpx
import uvicorn

from bench.common import JWT_SECRET, WEBHOOK_SECRET, free_port, product_ids, service_env
from bench.loadgen import CHECKOUT_MUTATION, ORDER_QUERY, completed_event, signature

LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("bench_label", default="background")
RECORDED: list[tuple[str, str, float]] = []


def _install() -> None:
    # executemany and fetchmany send all their statements as one pipeline: one round trip.
    for name in ("execute", "executemany", "fetch", "fetchmany", "fetchrow", "fetchval"):
        original = getattr(asyncpg.connection.Connection, name)

        def wrapper(self: Any, query: str, *args: Any, _original: Any = original, **kw: Any):
            RECORDED.append((LABEL.get(), query, time.perf_counter()))
            return _original(self, query, *args, **kw)

        setattr(asyncpg.connection.Connection, name, wrapper)


def _normalise(query: str) -> str:
    query = re.sub(r"\s+", " ", query).strip()
    return query if len(query) <= 160 else query[:157] + "..."


class Labelled:
    """ASGI wrapper: the request's `x-bench-label` header names its statements."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        label = "background"
        for key, value in scope.get("headers", []):
            if key == b"x-bench-label":
                label = value.decode()
        token = LABEL.set(label)
        try:
            await self.app(scope, receive, send)
        finally:
            LABEL.reset(token)


async def main(database_url: str, smtp_port: int, out: str) -> None:
    _install()
    logging.basicConfig(level=logging.WARNING)
    from ordergraph.app import create_app
    from ordergraph.auth import issue_token
    from ordergraph.settings import Settings
    from ordergraph.stripe_emulator import StripeEmulator

    emulator = StripeEmulator(webhook_secret=WEBHOOK_SECRET)
    emulator_port = free_port()
    emulator_server = uvicorn.Server(
        uvicorn.Config(emulator.app, host="127.0.0.1", port=emulator_port, log_level="warning")
    )
    env = service_env(database_url, emulator_port=emulator_port, smtp_port=smtp_port)
    settings = Settings.from_env(env)
    os.environ.update({k: v for k, v in env.items() if k not in os.environ})
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            Labelled(create_app(settings)), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    tasks = [asyncio.create_task(emulator_server.serve()), asyncio.create_task(server.serve())]
    while not (server.started and emulator_server.started):
        await asyncio.sleep(0.02)
    # This task's own statements (refilling carts, finding orders) are the probe's, not the
    # server's: the server's tasks were created above and keep the "background" label.
    LABEL.set("probe")
    url = f"http://127.0.0.1:{port}"
    direct = await asyncpg.connect(database_url)
    products, hot = await product_ids(direct)
    user = "sqlcount-shopper"
    token = issue_token(JWT_SECRET, user, f"{user}@bench.test")
    results: dict[str, Any] = {}

    async def refill(lines: list[Any]) -> None:
        await direct.execute(
            "INSERT INTO cart_items (user_id, product_id, quantity, added_at)"
            " SELECT $1, p, 1, now() FROM unnest($2::uuid[]) AS p",
            user,
            lines,
        )

    async def counted(name: str, send: Any) -> None:
        """Send twice (warm, then counted); keep the second request's statements."""
        for attempt in ("warm", "counted"):
            label = f"{name}:{attempt}"
            before = len(RECORDED)
            started = time.perf_counter()
            response = await send(label)
            finished = time.perf_counter()
            await asyncio.sleep(0.3)  # let after-commit work and the mail sender run
            assert response.status_code == 200, response.text
        mine = [q for lab, q, _ in RECORDED[before:] if lab == label]
        background = [
            q
            for lab, q, at in RECORDED[before:]
            if lab == "background" and started <= at <= finished + 0.3
        ]
        results[name] = {
            "statements": len(mine),
            "round_trips": len(mine),
            "sql": [_normalise(q) for q in mine],
            "background_statements": len(background),
            "background_sql": [
                f"{n} x {q}" for q, n in Counter(map(_normalise, background)).items()
            ],
            "answer": response.text[:300],
        }

    async with httpx.AsyncClient(timeout=30) as http:
        await direct.execute(
            "INSERT INTO users (id, email, is_staff, created_at) VALUES ($1, $2, false, now())"
            " ON CONFLICT DO NOTHING",
            user,
            f"{user}@bench.test",
        )

        async def checkout(label: str, lines: list[Any]) -> httpx.Response:
            await refill(lines)
            return await http.post(
                f"{url}/graphql",
                json={"query": CHECKOUT_MUTATION},
                headers={"Authorization": f"Bearer {token}", "x-bench-label": label},
            )

        await counted("checkout (2 lines)", lambda label: checkout(label, products[:2]))
        await counted("checkout (hot product)", lambda label: checkout(label, [hot]))

        rows = await direct.fetch(
            "SELECT id, user_id, total, stripe_checkout_session_id FROM orders"
            " WHERE status = 'pending_payment' AND stripe_checkout_session_id LIKE 'cs_bench_%'"
            " LIMIT 2"
        )
        pending = [completed_event(r) for r in rows]

        async def webhook(label: str) -> httpx.Response:
            payload = pending.pop()
            return await http.post(
                f"{url}/webhooks/stripe",
                content=payload.encode(),
                headers={
                    "Content-Type": "application/json",
                    "Stripe-Signature": signature(payload),
                    "x-bench-label": label,
                },
            )

        await counted("webhook checkout.session.completed", webhook)

        order = await direct.fetchrow(
            "SELECT id, user_id FROM orders WHERE stripe_checkout_session_id LIKE 'cs_bench_read_%'"
            " LIMIT 1"
        )
        reader_token = issue_token(JWT_SECRET, order["user_id"], f"{order['user_id']}@bench.test")

        async def read(label: str) -> httpx.Response:
            return await http.post(
                f"{url}/graphql",
                json={"query": ORDER_QUERY, "variables": {"id": str(order["id"])}},
                headers={"Authorization": f"Bearer {reader_token}", "x-bench-label": label},
            )

        await counted("order query (5 lines)", read)

    await direct.close()
    server.should_exit = True
    emulator_server.should_exit = True
    await asyncio.gather(*tasks)
    Path(out).write_text(json.dumps(results, indent=1))  # noqa: ASYNC240


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
