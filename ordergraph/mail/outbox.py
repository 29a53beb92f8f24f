"""The mail outbox: written in the transaction that causes a mail, read by staff.

Because the outbox row commits with the change, a mail is never lost when the process dies or
the SMTP server is down, and never written for a change that rolled back. `sender` sends it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from tortoise.expressions import Q

from ordergraph.db import after_commit, get_connection, is_postgres
from ordergraph.db.sql import Rider, fetch
from ordergraph.models import Order, OutboxEmail, OutboxStatus
from ordergraph.wakeup import Wakeup


@dataclass(frozen=True)
class Composed:
    subject: str
    text: str
    html: str


# PostgreSQL's INSERT, as fixed text: building the ORM's INSERT ... ON CONFLICT cost more CPU
# than sending it.
_COLUMNS = ("dedupe_key", "order_id", "recipient", "subject", "text_body", "html_body")
_NEW = ("status", "attempts", "next_attempt_at", "created_at")  # a new mail's: _NEW_VALUES
_NEW_VALUES = "'pending', 0, now(), now()"
_ONCE = "ON CONFLICT (dedupe_key) DO NOTHING"
_ENQUEUE = f"""
INSERT INTO outbox_emails ({", ".join(_COLUMNS + _NEW)})
VALUES ({", ".join("?" * len(_COLUMNS))}, {_NEW_VALUES})
{_ONCE}
"""


async def enqueue_email(
    *, dedupe_key: str, recipient: str, composed: Composed, order: Order | None = None
) -> None:
    """Write the mail to the outbox in the current transaction, once per `dedupe_key`.

    One statement: INSERT that ignores a key already there (ON CONFLICT DO NOTHING on
    PostgreSQL, INSERT OR IGNORE on SQLite).
    """
    order_id = order.id if order is not None else None
    connection = get_connection()
    if is_postgres(connection):
        values = (dedupe_key, order_id, recipient, composed.subject, composed.text, composed.html)
        await fetch(connection, _ENQUEUE, *values)
    else:
        row = OutboxEmail(
            dedupe_key=dedupe_key,
            order_id=order_id,
            recipient=recipient,
            subject=composed.subject,
            text_body=composed.text,
            html_body=composed.html,
            next_attempt_at=datetime.now(UTC),
        )
        await OutboxEmail.bulk_create([row], ignore_conflicts=True)
    after_commit(wake_sender)


def email_rider(*, dedupe_key: str, recipient: str, composed: Composed, order: Order) -> Rider:
    """`enqueue_email` as a rider of the order's change (`order_state.change_order`): the
    mail is written with the change, in its statement on PostgreSQL."""
    after_commit(wake_sender)
    return Rider(
        table="outbox_emails",
        columns=_COLUMNS + _NEW,
        values=(dedupe_key, order.id, recipient, composed.subject, composed.text, composed.html),
        constants=_NEW_VALUES,
        suffix=_ONCE,
        alone=lambda: enqueue_email(
            dedupe_key=dedupe_key, recipient=recipient, composed=composed, order=order
        ),
    )


_wakeup = Wakeup()
# The mail sender of this process waits on `sender_wakeup()`; commits call `wake_sender`.
sender_wakeup = _wakeup.event
wake_sender = _wakeup.wake


async def undelivered(limit: int) -> list[OutboxEmail]:
    """Mail that has failed at least once and is not sent: what staff should look at."""
    return (
        await OutboxEmail.filter(
            Q(status=OutboxStatus.DEAD)
            | Q(status__in=[OutboxStatus.PENDING, OutboxStatus.SENDING], attempts__gte=1)
        )
        .order_by("-created_at")
        .limit(limit)
    )


async def retry_dead(email_id: int) -> OutboxEmail | None:
    """Give a dead mail a fresh set of tries (after staff fixed the address or the server)."""
    changed = await OutboxEmail.filter(id=email_id, status=OutboxStatus.DEAD).update(
        status=OutboxStatus.PENDING, attempts=0, next_attempt_at=datetime.now(UTC)
    )
    if not changed:
        return None
    revived = await OutboxEmail.get(id=email_id)  # as revived, before a sender claims it
    await wake_sender()
    return revived


async def retry_all_dead() -> int:
    """Give every dead mail a fresh set of tries at once (after an outage outlasted the
    retries, or the server's refusals were fixed); how many were revived.

    One conditional UPDATE: a mail that is not DEAD (sent, or still being tried) is untouched,
    and a mail two staff revive at the same time is counted by only one of them.
    """
    revived = await OutboxEmail.filter(status=OutboxStatus.DEAD).update(
        status=OutboxStatus.PENDING, attempts=0, next_attempt_at=datetime.now(UTC)
    )
    if revived:
        await wake_sender()
    return revived
