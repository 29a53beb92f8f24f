"""Orders as CSV, streamed: the one writer behind `GET /exports/orders.csv` and
`ordergraph export-orders`, so that both give the same bytes.

Columns: id, created, status, payment_status, email, subtotal, discount, shipping, tax, total,
refunded, currency, lines, shipping_country, tracking; one row per order, oldest first
(created, then id). `created` is ISO 8601 in UTC to the second (`2026-11-26T04:44:00Z`);
statuses are the API's enum names; `email` is what Stripe collected, else the email known at
checkout; money is a decimal string in major units of the order's currency (1234 cents of
USD is `12.34`; JPY has no decimals, KWD three, as Stripe counts them); `lines` reads
`2 x Tee; 1 x Mug` in the order's line order.

A spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` (and some a tab, CR or LF
first) as a formula. Product names and emails come from shoppers and staff, so every cell,
and every product name inside `lines`, that starts with one of those (after spaces, or in
their full-width forms) gets a single quote in front (OWASP's advice for CSV injection).

Memory stays flat whatever the size: on PostgreSQL one query through a server-side cursor
(asyncpg, in a read-only transaction: one snapshot) fetched `BATCH` rows at a time; on
SQLite keyset batches of `BATCH` rows, since a cursor held open there would hold the one
connection, and every other request, for the whole export. Chunks of about 64 KiB leave as
soon as they are written, at the pace the client reads them.

Example:
    query = export_query("2026-11-01", "2026-11-30", "shipped")
    async for chunk in csv_chunks(query):
        sink.write(chunk)
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncGenerator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, BinaryIO

import anyio

from ordergraph.db import get_connection, is_postgres
from ordergraph.domain.order_search import (
    OrderQuery,
    OrderSort,
    Statement,
    after,
    sql_where,
    where,
)
from ordergraph.models import OrderStatus, PaymentStatus

COLUMNS = (
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
)
BATCH = 1000
CHUNK_CHARS = 64 * 1024
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
# Stripe's currencies without minor units, and those with three decimals.
ZERO_DECIMAL = frozenset("BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split())
THREE_DECIMAL = frozenset("BHD JOD KWD OMR TND".split())

_LINES = {
    "postgres": "(SELECT json_agg(json_build_array(i.id, i.quantity, i.product_name))"
    " FROM order_items i WHERE i.order_id = o.id)",
    "sqlite": "(SELECT json_group_array(json_array(i.id, i.quantity, i.product_name))"
    " FROM order_items i WHERE i.order_id = o.id)",
}
_COUNTRY = {
    "postgres": "o.shipping_address->>'country'",
    "sqlite": "json_extract(o.shipping_address, '$.country')",
}


class ExportInputError(ValueError):
    """A query parameter (or option) that is not what an export takes; the message says why."""


def _moment(name: str, raw: str, *, end: bool) -> datetime:
    """An ISO date or date-time in UTC (one without an offset is UTC). A date as `to` means
    its whole day."""
    text = raw.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            if end:
                return datetime.combine(day + timedelta(days=1), time.min, UTC) - timedelta(
                    microseconds=1
                )
            return datetime.combine(day, time.min, UTC)
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise ExportInputError(
            f"{name} must be an ISO date (2026-11-30) or date-time (2026-11-30T18:00:00Z),"
            f" not {raw[:40]!r}"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def export_query(start: str | None, end: str | None, status: str | None) -> OrderQuery:
    """The orders an export's `from`, `to` and `status` ask for (empty values: no bound)."""
    created_from = _moment("from", start, end=False) if start else None
    created_to = _moment("to", end, end=True) if end else None
    if created_from is not None and created_to is not None and created_from > created_to:
        raise ExportInputError("from is after to")
    statuses = None
    if status:
        name = status.strip().upper()
        if name not in OrderStatus.__members__:
            raise ExportInputError(
                f"status must be one of {', '.join(OrderStatus.__members__)}, not {status[:40]!r}"
            )
        statuses = frozenset({OrderStatus[name]})
    return OrderQuery(statuses=statuses, created_from=created_from, created_to=created_to)


def neutralise(cell: str) -> str:
    """The cell as text a spreadsheet shows and never runs."""
    return "'" + cell if cell.lstrip(" ").startswith(FORMULA_STARTS) else cell


def major_units(amount: int, currency: str) -> str:
    code = currency.upper()
    places = 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2
    if places == 0:
        return str(amount)
    whole, part = divmod(abs(amount), 10**places)
    return f"{'-' if amount < 0 else ''}{whole}.{part:0{places}d}"


def _created(value: datetime | str) -> str:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _lines(value: str | list[Any] | None) -> str:
    lines = json.loads(value) if isinstance(value, str) else value or []
    return "; ".join(f"{quantity} x {neutralise(str(name))}" for _, quantity, name in sorted(lines))


def cells(row: Mapping[str, Any]) -> list[str]:
    """One order's row, every cell neutralised."""
    currency = str(row["currency"])
    money = [
        major_units(int(row[column]), currency)
        for column in ("subtotal", "discount", "shipping_cost", "tax", "total", "amount_refunded")
    ]
    values = [
        str(row["id"]),
        _created(row["created_at"]),
        OrderStatus(row["status"]).name,
        PaymentStatus(row["payment_status"]).name,
        row["email"] or "",
        *money,
        currency,
        _lines(row["lines"]),
        row["country"] or "",
        row["tracking_number"] or "",
    ]
    return [neutralise(str(v)) for v in values]


def _select(dialect: str) -> str:
    return (
        "SELECT o.id, o.created_at, o.status, o.payment_status,"
        " COALESCE(o.customer_email, o.email) AS email, o.subtotal, o.discount,"
        " o.shipping_cost, o.tax, o.total, o.amount_refunded, o.currency,"
        f" {_LINES[dialect]} AS lines, {_COUNTRY[dialect]} AS country, o.tracking_number"
        " FROM orders o"
    )


async def rows(query: OrderQuery) -> AsyncGenerator[Mapping[str, Any], None]:
    """The orders of `query`, oldest first, as the export's rows, `BATCH` at a time."""
    connection = get_connection()
    value = Statement(connection)
    order = " ORDER BY o.created_at, o.id"
    if is_postgres(connection):
        sql = _select("postgres") + sql_where(where(query, value)) + order
        async with connection.acquire_connection() as raw:
            snapshot = raw.transaction(readonly=True)
            await snapshot.start()
            try:
                async for record in raw.cursor(sql, *value.values, prefetch=BATCH):
                    yield record
            finally:
                # Also when the reader left: Starlette cancels the response's task group, and
                # a cancelled ROLLBACK would leave asyncpg to roll back (and complain) on release.
                with anyio.CancelScope(shield=True):
                    await snapshot.rollback()  # read only: nothing to commit
        return
    last: tuple[Any, Any] | None = None
    while True:
        value = Statement(connection)
        conditions = where(query, value)
        if last is not None:
            conditions.append(after(OrderSort.CREATED_ASC, *last, value))
        sql = _select("sqlite") + sql_where(conditions) + order + f" LIMIT {value(BATCH)}"
        batch = await connection.execute_query_dict(sql, value.values)
        for row in batch:
            yield row
        if len(batch) < BATCH:
            return
        last = (batch[-1]["created_at"], batch[-1]["id"])


async def csv_chunks(query: OrderQuery) -> AsyncGenerator[str, None]:
    """The CSV text: the header, then the rows in chunks of about `CHUNK_CHARS`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    source = rows(query)
    try:
        async for row in source:
            writer.writerow(cells(row))
            if buffer.tell() >= CHUNK_CHARS:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
    finally:
        await source.aclose()  # the cursor's transaction ends even when the reader left
    yield buffer.getvalue()


async def write_csv(database_url: str, query: OrderQuery, out: BinaryIO) -> None:
    """`ordergraph export-orders`: the same CSV, written to `out` as UTF-8."""
    from tortoise import Tortoise

    from ordergraph.db import tortoise_config

    await Tortoise.init(config=tortoise_config(database_url))
    try:
        async for chunk in csv_chunks(query):
            out.write(chunk.encode())
        out.flush()
    finally:
        await Tortoise.close_connections()
