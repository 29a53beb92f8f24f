"""The mail sender: a background task that sends what the outbox holds, over SMTP.

A row is claimed with a conditional UPDATE (status and lease), so several processes may run
senders at once; a sender that dies mid-send leaves a lease that expires, and that one mail
may go out twice.

Retries outlast a real outage. A failed try is retried after `backoff`: 1 s, 2 s, 4 s ...
doubling up to `BACKOFF_CAP` (an hour, reached after the 13th failure), then hourly. A mail
goes DEAD only when its `MAX_ATTEMPTS`th try fails, and the waits before that try add up to
more than `RETRY_WINDOW` (24 hours; `retry_schedule` is the sum), so an SMTP server that is
down for anything less than a day delays mail but loses none. A permanent refusal (a 5xx for the
recipient) is DEAD at once: trying again cannot change it. Staff may revive dead mail, one
(`outbox.retry_dead`) or all at once (`outbox.retry_all_dead`), with a fresh set of tries.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import aiosmtplib
from tortoise.expressions import Q

from ordergraph import logs, metrics
from ordergraph.db import transaction
from ordergraph.mail.outbox import sender_wakeup
from ordergraph.models import OutboxEmail, OutboxStatus
from ordergraph.settings import Settings

log = logging.getLogger(__name__)

BACKOFF_CAP = timedelta(hours=1)
RETRY_WINDOW = timedelta(hours=24)
# 12 doubling waits (1 s ... 2048 s, 68 min in all), then 23 hourly ones: 24 h 8 min of
# waiting before the last try (a test checks that it covers RETRY_WINDOW).
MAX_ATTEMPTS = 36
POLL_SECONDS = 5.0


def is_permanent(exc: Exception) -> bool:
    """An SMTP 5xx refusal of the recipient will not change by trying again."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return all(500 <= r.code < 600 for r in exc.recipients)
    return isinstance(exc, aiosmtplib.SMTPRecipientRefused) and 500 <= exc.code < 600


def backoff(attempts: int) -> timedelta:
    """The wait after the `attempts`th failed try: 1 s, 2 s, 4 s ... capped at an hour."""
    cap = int(BACKOFF_CAP.total_seconds())
    return timedelta(seconds=min(2 ** min(max(attempts - 1, 0), 32), cap))


def retry_schedule() -> timedelta:
    """How long a mail is retried before its last try: the waits between its MAX_ATTEMPTS."""
    return sum((backoff(n) for n in range(1, MAX_ATTEMPTS)), timedelta())


class MailSender:
    """Sends due outbox rows until stopped; woken at once by new mail, else polls."""

    def __init__(self, settings: Settings, *, poll_seconds: float = POLL_SECONDS) -> None:
        self.settings = settings
        self.poll_seconds = poll_seconds
        # Longer than any send can take, so that a live sender never loses its claim; a dead
        # sender's mail is due again once it runs out.
        self.lease = timedelta(seconds=2 * settings.mail_send_timeout_seconds + 5)
        self._stopping = False

    async def run(self) -> None:
        wakeup = sender_wakeup()
        while not self._stopping:
            try:
                while await self.send_one():
                    pass
            except Exception:
                log.exception("mail sender pass failed; retrying")
            try:
                await asyncio.wait_for(wakeup.wait(), timeout=self.poll_seconds)
            except TimeoutError:
                pass
            wakeup.clear()

    def stop(self) -> None:
        self._stopping = True
        sender_wakeup().set()

    async def _claim(self) -> OutboxEmail | None:
        """Take one due mail for this sender, so that no other sender sends it meanwhile.

        PostgreSQL: `FOR UPDATE SKIP LOCKED` lets concurrent senders pass over each other's
        rows; SQLite has one writer at a time, so there the transaction alone is the claim.
        Either way the lease (`claimed_until`) is what survives the transaction: a sender that
        dies mid-send leaves a row that is due again when its lease runs out.
        """
        now = datetime.now(UTC)
        due = Q(status=OutboxStatus.PENDING, next_attempt_at__lte=now) | Q(
            status=OutboxStatus.SENDING, claimed_until__lt=now
        )
        async with transaction():
            row = (
                await OutboxEmail.filter(due)
                .order_by("next_attempt_at", "id")
                .limit(1)
                .select_for_update(skip_locked=True)
                .first()
            )
            if row is None:
                return None
            row.status = OutboxStatus.SENDING
            row.claimed_until = now + self.lease
            await row.save(update_fields=["status", "claimed_until"])
            return row

    async def send_one(self) -> bool:
        """Send one due mail; False when none is due, or when it failed and will be retried."""
        row = await self._claim()
        if row is None:
            return False
        with logs.about_order(str(row.order_id) if row.order_id else None):
            return await self._send(row)

    async def _send(self, row: OutboxEmail) -> bool:
        """One attempt: SENT, or back to PENDING with backoff, or DEAD when it cannot go.

        False after a failure worth retrying: the server is likely down, so this pass stops
        rather than try every other due mail against it."""
        attempts = row.attempts + 1
        try:
            # Within the claim's lease, whatever the SMTP server's pace step by step.
            async with asyncio.timeout(2 * self.settings.mail_send_timeout_seconds):
                await self.deliver(row)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
            if attempts >= MAX_ATTEMPTS or is_permanent(exc):
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
            await OutboxEmail.filter(id=row.id, status=OutboxStatus.SENDING).update(
                status=status,
                attempts=attempts,
                last_error=error,
                claimed_until=None,
                next_attempt_at=datetime.now(UTC) + backoff(attempts),
            )
            metrics.EMAILS.labels("dead" if status == OutboxStatus.DEAD else "retried").inc()
            return status == OutboxStatus.DEAD
        await OutboxEmail.filter(id=row.id, status=OutboxStatus.SENDING).update(
            status=OutboxStatus.SENT,
            attempts=attempts,
            sent_at=datetime.now(UTC),
            claimed_until=None,
        )
        metrics.EMAILS.labels("sent").inc()
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
            timeout=self.settings.mail_send_timeout_seconds,
        )
