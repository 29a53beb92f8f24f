"""Finding orders: the filters, the search, the sorts and keyset pages of staff's order list
(and of a shopper's own list), and the SQL that answers them on SQLite and PostgreSQL.

What `search` matches (any of them; terms are trimmed, case does not matter):

* an order id: a whole UUID is that order and nothing else; 8 to 31 hex digits (the first 8
  characters of an id, as staff read them from a receipt) are an id prefix, a range of the
  primary key;
* the shopper's email by prefix: the order's `email` (known at checkout) or `customer_email`
  (what Stripe collected), each through an index on `lower(...)` with `text_pattern_ops` that
  carries the column and the id, so that the scan never visits the table;
* a product name by substring, from 3 characters on (`mug` finds "Coffee Mug"): orders with a
  line whose `product_name` contains the term, of a product whose catalogue name contains it
  too. The catalogue (thousands of names) is searched first, through a trigram index
  (pg_trgm), then those products' lines by product, from an index on `(product_id, order_id)`
  that carries the line's name. Measured on 1,000,000 orders (2,000,000 lines of 10,000
  names), a trigram index over the lines took 30 ms for one whole name and 0.8 s for a common
  word, since every trigram of a catalogue word is in tens of thousands of lines; this way
  takes 2 ms and about 50 ms. What it misses: the lines of a product renamed since, searched
  by the name they were sold under. A shorter term matches ids and emails only: one or two
  letters are in nearly every name.

Each kind is an index scan of its own; the page joins the `UNION ALL` of their ids (an `OR`
across tables would scan every order), and a search alone is counted from them directly.

Pages are keyset pages: the cursor holds the sort, the sort key and the id of the last order
sent, and the next page starts strictly after that pair (the id breaks ties). No offset is
ever used, so a page costs the same at any depth. What that guarantees while orders are
inserted or changed between two page fetches:

* CREATED_DESC: every order that existed and matched when the first page was read, and still
  matches, appears exactly once; newer orders sort before the first page and are not mixed in
  (a refresh shows them). created_at and the id never change. (An order whose checkout was
  still committing when a page was read carries the earlier time: it may show up on a later
  page, once.);
* CREATED_ASC: the same orders once each, in order, and newer ones after them;
* UPDATED_DESC: no order twice, since a change only moves an order up, above the pages already
  read; so an order that changes while staff page is missed in this walk (it is at the top);
* TOTAL_DESC: an order whose total changes while staff page (a payment adds shipping and tax)
  moves to its new place, so it may be missed, or seen again there.

A cursor is only good for the sort that made it: another sort's cursor is refused.

Example:
    query = order_query(statuses=[OrderStatus.SHIPPED], search="alice@")
    page = await find_orders(query, OrderSort.CREATED_DESC, first=50)
    total = await count_orders(query)
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient

from ordergraph.db import get_connection, is_postgres
from ordergraph.domain.errors import BusinessError, ErrorCode
from ordergraph.domain.ids import parse_uuid
from ordergraph.models import Order, OrderStatus, PaymentStatus

MAX_SEARCH_LENGTH = 200
PRODUCT_SEARCH_MIN_LENGTH = 3
_HEX_PREFIX = re.compile(r"[0-9a-f]{8,31}")


class OrderSort(StrEnum):
    CREATED_DESC = "CREATED_DESC"
    CREATED_ASC = "CREATED_ASC"
    UPDATED_DESC = "UPDATED_DESC"
    TOTAL_DESC = "TOTAL_DESC"


@dataclass(frozen=True)
class _SortKey:
    column: str
    descending: bool


_SORTS = {
    OrderSort.CREATED_DESC: _SortKey("created_at", True),
    OrderSort.CREATED_ASC: _SortKey("created_at", False),
    OrderSort.UPDATED_DESC: _SortKey("updated_at", True),
    OrderSort.TOTAL_DESC: _SortKey("total", True),
}


@dataclass(frozen=True)
class OrderQuery:
    """Which orders: every condition given must hold. `None` means any."""

    user_id: str | None = None
    statuses: frozenset[OrderStatus] | None = None
    payment_statuses: frozenset[PaymentStatus] | None = None
    search: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None  # inclusive


def _invalid(message: str, *field: str) -> BusinessError:
    return BusinessError.of(ErrorCode.INVALID_INPUT, message, field=field or None)


def _utc(value: datetime | None) -> datetime | None:
    """A moment in UTC; one given without an offset is read as UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _either(values: Iterable[Any] | None, one: Any | None) -> frozenset[Any] | None:
    """The statuses both conditions allow: a list (empty: any) and a single value."""
    allowed = frozenset(values) if values else None
    if one is None:
        return allowed
    return frozenset({one}) & allowed if allowed is not None else frozenset({one})


def order_query(
    *,
    user_id: str | None = None,
    status: OrderStatus | None = None,
    statuses: Iterable[OrderStatus] | None = None,
    payment_statuses: Iterable[PaymentStatus] | None = None,
    search: str | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
) -> OrderQuery:
    """The query these arguments ask for, or INVALID_INPUT saying which one is wrong.

    `status` (the list's old single argument) and `statuses` must both hold. An empty list
    filters nothing, as an empty choice in a form does."""
    term = (search or "").strip()
    if len(term) > MAX_SEARCH_LENGTH:
        raise _invalid(
            f"search is at most {MAX_SEARCH_LENGTH} characters, not {len(term)}",
            "filter",
            "search",
        )
    if "\x00" in term:
        raise _invalid("search cannot contain NUL characters", "filter", "search")
    start, end = _utc(created_from), _utc(created_to)
    if start is not None and end is not None and start > end:
        raise _invalid("createdFrom is after createdTo", "filter", "createdFrom")
    return OrderQuery(
        user_id=user_id,
        statuses=_either(statuses, status),
        payment_statuses=_either(payment_statuses, None),
        search=term or None,
        created_from=start,
        created_to=end,
    )


# ------------------------------------------------------------------------------- cursors


@dataclass(frozen=True)
class Position:
    """Where a page ends: the last order's sort key and id."""

    sort: OrderSort
    key: datetime | int
    order_id: uuid.UUID


def _key_of(sort: OrderSort, order: Order) -> datetime | int:
    value: datetime | int = getattr(order, _SORTS[sort].column)
    return value


def cursor_text(sort: OrderSort, order: Order) -> str:
    """What a cursor says (the API encodes it): `SORT|key|id`."""
    key = _key_of(sort, order)
    text = key.isoformat() if isinstance(key, datetime) else str(key)
    return f"{sort.value}|{text}|{order.id}"


def position(sort: OrderSort, text: str | None) -> Position:
    """The place a cursor names, for this sort. A cursor without a sort (`key|id`, as lists
    wrote them before sorts existed) is a CREATED_DESC cursor."""
    parts = (text or "").split("|")
    if len(parts) == 2:
        parts = [OrderSort.CREATED_DESC.value, *parts]
    if len(parts) != 3 or parts[0] not in OrderSort.__members__:
        raise _invalid("after is not a cursor from this API", "after")
    if parts[0] != sort.value:
        raise _invalid(
            f"after is a cursor of sort {parts[0]}, not {sort.value}: start again without it",
            "after",
        )
    order_id = parse_uuid(parts[2])
    try:
        if order_id is None:
            raise ValueError(parts[2])
        if _SORTS[sort].column == "total":
            if not (parts[1].isascii() and parts[1].lstrip("-").isdigit() and len(parts[1]) < 19):
                raise ValueError(parts[1])
            return Position(sort, int(parts[1]), order_id)
        moment = datetime.fromisoformat(parts[1])
        if moment.tzinfo is None:
            raise ValueError(parts[1])
        return Position(sort, moment.astimezone(UTC), order_id)
    except (ValueError, OverflowError):
        raise _invalid("after is not a cursor from this API", "after") from None


# ----------------------------------------------------------------------------------- SQL


class Statement:
    """Values for one statement, in the connection's placeholder style ($n or ?)."""

    def __init__(self, connection: BaseDBAsyncClient) -> None:
        self.postgres = is_postgres(connection)
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        if not self.postgres and isinstance(value, uuid.UUID):
            value = str(value)
        self.values.append(value)
        return f"${len(self.values)}" if self.postgres else "?"

    def each(self, values: Iterable[Any]) -> str:
        return ", ".join(self(v) for v in sorted(values))


def _like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _id_range(term: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    digits = term.replace("-", "")
    if not _HEX_PREFIX.fullmatch(digits):
        return None
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


def _matching_ids(term: str, value: Statement) -> list[str]:
    """SELECTs of the ids of the orders `term` matches, one per kind (an id may repeat)."""
    lowered = term.lower()
    prefix = _like(lowered) + "%"
    branches = [
        f"SELECT id FROM orders WHERE lower(email) LIKE {value(prefix)} ESCAPE '\\'",
        f"SELECT id FROM orders WHERE lower(customer_email) LIKE {value(prefix)} ESCAPE '\\'",
    ]
    ids = _id_range(lowered)
    if ids is not None:
        low, high = value(ids[0]), value(ids[1])
        branches.append(f"SELECT id FROM orders WHERE id BETWEEN {low} AND {high}")
    if len(lowered) >= PRODUCT_SEARCH_MIN_LENGTH:
        inside = "%" + _like(lowered) + "%"
        branches.append(
            "SELECT i.order_id FROM order_items i WHERE i.product_id IN"
            f" (SELECT p.id FROM products p WHERE lower(p.name) LIKE {value(inside)} ESCAPE '\\')"
            f" AND lower(i.product_name) LIKE {value(inside)} ESCAPE '\\'"
        )
    return branches


def _whole_id(term: str) -> uuid.UUID | None:
    return parse_uuid(term) if len(term) >= 32 else None


def _search(term: str, value: Statement) -> str:
    whole = _whole_id(term)
    if whole is not None:
        return f"o.id = {value(whole)}"
    return f"o.id IN ({' UNION ALL '.join(_matching_ids(term, value))})"


def where(query: OrderQuery, value: Statement) -> list[str]:
    """The conditions of `query` on `orders o`."""
    conditions = []
    if query.user_id is not None:
        conditions.append(f"o.user_id = {value(query.user_id)}")
    if query.statuses is not None:
        if not query.statuses:
            return ["1 = 0"]
        conditions.append(f"o.status IN ({value.each(s.value for s in query.statuses)})")
    if query.payment_statuses is not None:
        allowed = (s.value for s in query.payment_statuses)
        conditions.append(f"o.payment_status IN ({value.each(allowed)})")
    if query.created_from is not None:
        conditions.append(f"o.created_at >= {value(query.created_from)}")
    if query.created_to is not None:
        conditions.append(f"o.created_at <= {value(query.created_to)}")
    if query.search:
        conditions.append(_search(query.search, value))
    return conditions


def after(sort: OrderSort, key: Any, order_id: Any, value: Statement) -> str:
    """Strictly past (key, order_id) in `sort`: `(key, id) < (k, i)` (`>` ascending), with the
    key's own bound beside it, so that an index on the key alone still bounds the scan."""
    spec = _SORTS[sort]
    sign = "<" if spec.descending else ">"
    column = f"o.{spec.column}"
    return (
        f"{column} {sign}= {value(key)}"
        f" AND ({column}, o.id) {sign} ({value(key)}, {value(order_id)})"
    )


def order_by(sort: OrderSort) -> str:
    spec = _SORTS[sort]
    direction = "DESC" if spec.descending else "ASC"
    return f"ORDER BY o.{spec.column} {direction}, o.id {direction}"


def sql_where(conditions: list[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


@dataclass(frozen=True)
class Page:
    orders: list[Order]
    has_next: bool


def page_sql(
    value: Statement, query: OrderQuery, sort: OrderSort, size: int, start: Position | None
) -> str:
    """The statement of one page of `size` orders (its values are in `value`)."""
    conditions = where(query, value)
    if start is not None:
        conditions.append(after(sort, start.key, start.order_id, value))
    limit = value(size)
    return f"SELECT o.* FROM orders o{sql_where(conditions)} {order_by(sort)} LIMIT {limit}"


def count_sql(value: Statement, query: OrderQuery) -> str:
    """A search alone is counted from its own index scans, without visiting the orders."""
    only_search = query == OrderQuery(search=query.search)
    if query.search and only_search and _whole_id(query.search) is None:
        matches = " UNION ".join(_matching_ids(query.search, value))
        return f"SELECT count(*) AS n FROM ({matches}) AS matches"
    return f"SELECT count(*) AS n FROM orders o{sql_where(where(query, value))}"


async def find_orders(
    query: OrderQuery, sort: OrderSort, first: int, start: Position | None = None
) -> Page:
    """Up to `first` orders of `query` in `sort` order, after `start` when given."""
    connection = get_connection()
    value = Statement(connection)
    sql = page_sql(value, query, sort, first + 1, start)
    executor = connection.executor_class(model=Order, db=connection)
    rows: list[Order] = await executor.execute_select(sql, value.values)
    return Page(orders=rows[:first], has_next=len(rows) > first)


async def count_orders(query: OrderQuery) -> int:
    """How many orders `query` matches: an exact count."""
    connection = get_connection()
    value = Statement(connection)
    [row] = await connection.execute_query_dict(count_sql(value, query), value.values)
    return int(row["n"])
