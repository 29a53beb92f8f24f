"""Email: written to an outbox in the transaction that causes it, sent by a background sender.

Because the outbox row commits with the change, a mail is never lost when the process dies or
the SMTP server is down, and never written for a change that rolled back. A row is claimed
with a conditional UPDATE (status and lease), so several processes may run senders at once;
a sender that dies mid-send leaves a lease that expires, and that one mail may go out twice.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import aiosmtplib
from tortoise.expressions import Q

from ordergraph.db import after_commit
from ordergraph.models import Order, OutboxEmail, OutboxStatus
from ordergraph.settings import Settings

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
LEASE = timedelta(minutes=2)
POLL_SECONDS = 5.0


def backoff(attempts: int) -> timedelta:
    """1 s, 2 s, 4 s ... capped at 10 minutes."""
    return timedelta(seconds=min(2 ** (attempts - 1), 600))


@dataclass(frozen=True)
class Composed:
    subject: str
    text: str
    html: str


async def enqueue_email(
    *, dedupe_key: str, recipient: str, composed: Composed, order: Order | None = None
) -> bool:
    """Write the mail to the outbox in the current transaction; False if it was already there."""
    _, created = await OutboxEmail.get_or_create(
        dedupe_key=dedupe_key,
        defaults={
            "order_id": order.id if order is not None else None,
            "recipient": recipient,
            "subject": composed.subject,
            "text_body": composed.text,
            "html_body": composed.html,
            "next_attempt_at": datetime.now(UTC),
        },
    )
    if created:
        after_commit(wake_sender)
    return created


_wakeup: asyncio.Event | None = None


async def wake_sender() -> None:
    if _wakeup is not None:
        _wakeup.set()


class MailSender:
    """Sends due outbox rows until stopped; woken at once by new mail, else polls."""

    def __init__(self, settings: Settings, *, poll_seconds: float = POLL_SECONDS) -> None:
        self.settings = settings
        self.poll_seconds = poll_seconds
        self._stopping = False

    async def run(self) -> None:
        global _wakeup
        _wakeup = asyncio.Event()
        while not self._stopping:
            try:
                while await self.send_one():
                    pass
            except Exception:
                log.exception("mail sender pass failed; retrying")
            try:
                await asyncio.wait_for(_wakeup.wait(), timeout=self.poll_seconds)
            except TimeoutError:
                pass
            _wakeup.clear()

    def stop(self) -> None:
        self._stopping = True
        if _wakeup is not None:
            _wakeup.set()

    async def _claim(self) -> OutboxEmail | None:
        now = datetime.now(UTC)
        due = Q(status=OutboxStatus.PENDING, next_attempt_at__lte=now) | Q(
            status=OutboxStatus.SENDING, claimed_until__lt=now
        )
        for candidate in await OutboxEmail.filter(due).order_by("id").limit(5):
            claimed = await OutboxEmail.filter(
                Q(id=candidate.id),
                due,
            ).update(status=OutboxStatus.SENDING, claimed_until=now + LEASE)
            if claimed:
                await candidate.refresh_from_db()
                return candidate
        return None

    async def send_one(self) -> bool:
        """Send one due mail; False when none is due."""
        row = await self._claim()
        if row is None:
            return False
        attempts = row.attempts + 1
        try:
            await self.deliver(row)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
            if attempts >= MAX_ATTEMPTS:
                log.error(
                    "mail %s to %s is dead after %d tries: %s",
                    row.id,
                    row.recipient,
                    attempts,
                    error,
                )
                status = OutboxStatus.DEAD
            else:
                log.warning(
                    "mail %s to %s failed (try %d): %s", row.id, row.recipient, attempts, error
                )
                status = OutboxStatus.PENDING
            await OutboxEmail.filter(id=row.id).update(
                status=status,
                attempts=attempts,
                last_error=error,
                claimed_until=None,
                next_attempt_at=datetime.now(UTC) + backoff(attempts),
            )
            return status == OutboxStatus.DEAD
        await OutboxEmail.filter(id=row.id).update(
            status=OutboxStatus.SENT,
            attempts=attempts,
            sent_at=datetime.now(UTC),
            claimed_until=None,
        )
        return True

    async def deliver(self, row: OutboxEmail) -> None:
        message = EmailMessage()
        message["From"] = self.settings.mail_from
        message["To"] = row.recipient
        message["Subject"] = row.subject
        message["Message-ID"] = f"<{row.dedupe_key.replace(':', '.')}.{row.id}@ordergraph>"
        message.set_content(row.text_body)
        message.add_alternative(row.html_body, subtype="html")
        await aiosmtplib.send(
            message,
            hostname=self.settings.smtp_host,
            port=self.settings.smtp_port,
            username=self.settings.smtp_username,
            password=self.settings.smtp_password,
            start_tls=self.settings.smtp_starttls,
            timeout=30,
        )
