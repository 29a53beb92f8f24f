"""Outbox rows in the sender's hands: claiming due ones in batches, recording what came of them.

A claim is one statement that takes up to `limit` due rows (PENDING and due, or SENDING with a
lapsed lease) and returns what sending them needs. On PostgreSQL its rows are picked with
`FOR UPDATE SKIP LOCKED` in a `MATERIALIZED` CTE (evaluated once, so the rows locked are the
rows updated), and concurrent senders pass over each other's rows; SQLite has one writer at a
time, so there the statement alone is the claim. What outlives the statement is the lease,
`claimed_until`, which is also the claim's token: every outcome is written only where it is
still this claim's, so a sender that somehow outlived its lease cannot write over the next
holder's claim.

Each outcome is recorded by itself as soon as the server gave it (one short statement), so a
sender that dies mid-batch leaves at most the mail it was sending unrecorded. On PostgreSQL a
batch's statements go over one pooled connection held for the batch: taking one from the pool
and giving it back cost as much CPU as the statement, and a batch needs no second one (with
DATABASE_POOL_SIZE=1 it could not have one). SQLite's one connection is shared by the whole
process, so there each statement takes it for itself.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient

from ordergraph.db import get_connection, is_postgres
from ordergraph.db.sql import fetch
from ordergraph.models import OutboxStatus

_DUE = """
    SELECT id FROM outbox_emails
    WHERE (status = 'pending' AND next_attempt_at <= ?)
       OR (status = 'sending' AND claimed_until < ?)
    ORDER BY next_attempt_at, id
    LIMIT ?
"""
_CLAIMED = "id, order_id, dedupe_key, recipient, subject, text_body, html_body, attempts"
_CLAIM_POSTGRES = f"""
WITH due AS MATERIALIZED ({_DUE} FOR UPDATE SKIP LOCKED)
UPDATE outbox_emails o SET status = 'sending', claimed_until = ?
FROM due WHERE o.id = due.id
RETURNING o.next_attempt_at, {", ".join("o." + c for c in _CLAIMED.split(", "))}
"""
_CLAIM_SQLITE = f"""
UPDATE outbox_emails SET status = 'sending', claimed_until = ?
WHERE id IN ({_DUE})
RETURNING next_attempt_at, {_CLAIMED}
"""
_HELD = "id = ? AND status = 'sending' AND claimed_until = ?"
_SENT = f"""
UPDATE outbox_emails SET status = 'sent', attempts = ?, sent_at = ?, claimed_until = NULL
WHERE {_HELD}
"""
_FAILED = f"""
UPDATE outbox_emails
SET status = ?, attempts = ?, last_error = ?, next_attempt_at = ?, claimed_until = NULL
WHERE {_HELD}
"""
_RELEASE = """
UPDATE outbox_emails SET status = 'pending', claimed_until = NULL
WHERE status = 'sending' AND claimed_until = ? AND id IN ({ids})
"""


def _numbered(query: str) -> str:
    """asyncpg's placeholders ($1, $2 ...) for `?`."""
    numbers = itertools.count(1)
    return re.sub(r"\?", lambda _: f"${next(numbers)}", query)


_ASYNCPG = {query: _numbered(query) for query in (_CLAIM_POSTGRES, _SENT, _FAILED)}


@dataclass(frozen=True, slots=True)
class ClaimedMail:
    """A row this sender holds until `until`, with what sending it needs."""

    id: int
    order_id: str | None
    dedupe_key: str
    recipient: str
    subject: str
    text_body: str
    html_body: str
    attempts: int
    until: datetime


class Batch:
    """The claim of one batch and the outcomes of its mails, each written as it comes."""

    def __init__(self, connection: BaseDBAsyncClient, held: Any = None) -> None:
        self.connection = connection
        self.held = held  # PostgreSQL: the asyncpg connection this batch holds

    async def claim(self, now: datetime, until: datetime, limit: int) -> list[ClaimedMail]:
        """Up to `limit` rows due at `now`, held until `until`, the longest due first."""
        if self.held is not None:
            rows: list[Any] = await self.held.fetch(
                _ASYNCPG[_CLAIM_POSTGRES], now, now, limit, until
            )
        else:
            rows = await fetch(self.connection, _CLAIM_SQLITE, until, now, now, limit)
        rows.sort(key=_due_order)
        return [
            ClaimedMail(
                id=row["id"],
                order_id=str(row["order_id"]) if row["order_id"] is not None else None,
                dedupe_key=row["dedupe_key"],
                recipient=row["recipient"],
                subject=row["subject"],
                text_body=row["text_body"],
                html_body=row["html_body"],
                attempts=row["attempts"],
                until=until,
            )
            for row in rows
        ]

    async def sent(self, mail: ClaimedMail, attempts: int, at: datetime) -> None:
        await self._execute(_SENT, attempts, at, mail.id, mail.until)

    async def failed(
        self,
        mail: ClaimedMail,
        *,
        status: OutboxStatus,
        attempts: int,
        error: str,
        next_attempt_at: datetime,
    ) -> None:
        """PENDING with its next try, or DEAD."""
        values = (str(status), attempts, error, next_attempt_at, mail.id, mail.until)
        await self._execute(_FAILED, *values)

    async def release(self, mails: list[ClaimedMail]) -> None:
        """Hand back rows not tried: due again at once, their tries not counted."""
        for until in {mail.until for mail in mails}:
            ids = [mail.id for mail in mails if mail.until == until]
            query = _RELEASE.format(ids=", ".join("?" for _ in ids))
            await self._execute(query, until, *ids)

    async def _execute(self, query: str, *values: Any) -> None:
        if self.held is not None:
            await self.held.execute(_ASYNCPG.get(query) or _numbered(query), *values)
        else:
            await fetch(self.connection, query, *values)


@asynccontextmanager
async def batch() -> AsyncIterator[Batch]:
    connection = get_connection()
    if not is_postgres(connection):
        yield Batch(connection)
        return
    async with connection.acquire_connection() as held:
        yield Batch(connection, held)


def _due_order(row: Any) -> tuple[Any, int]:
    return row["next_attempt_at"], row["id"]
