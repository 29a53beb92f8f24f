"""The mail sender: a background task that sends what the outbox holds, over SMTP.

Due rows are claimed up to `BATCH_SIZE` at a time (status SENDING and a lease, `claimed_until`),
so several processes may run senders at once, and sent one after another on one SMTP session
kept open (`smtp.SmtpSession`), each written as `mime.Mail.wire` writes it. Each outcome is
recorded as soon as the server gave it, so a sender that dies mid-batch may send one mail twice,
as one that sent a mail at a time did: the mail it was sending (or had just sent). The rest of
its batch is due again when the lease runs out.

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

from ordergraph import logs, metrics
from ordergraph.mail.claims import Batch, ClaimedMail, batch
from ordergraph.mail.mime import Mail, message_id
from ordergraph.mail.outbox import sender_wakeup
from ordergraph.mail.smtp import SmtpSession, is_permanent
from ordergraph.models import OutboxStatus
from ordergraph.settings import Settings

log = logging.getLogger(__name__)

BACKOFF_CAP = timedelta(hours=1)
RETRY_WINDOW = timedelta(hours=24)
# 12 doubling waits (1 s ... 2048 s, 68 min in all), then 23 hourly ones: 24 h 8 min of
# waiting before the last try (a test checks that it covers RETRY_WINDOW).
MAX_ATTEMPTS = 36
POLL_SECONDS = 5.0
BATCH_SIZE = 20
# A batch shares one lease: one mail's time (twice MAIL_SEND_TIMEOUT_SECONDS), BATCH_SECONDS
# and RECORD_MARGIN. The first mail is always begun; a later one only while its whole time and
# RECORD_MARGIN to record its outcome fit in what is left of the lease, so a live sender never
# loses its claim. A batch at ~1 ms a mail needs 20 ms of the 10 s; against a server that
# slowed down, the rest of a batch that did not fit is handed back, due at once.
RECORD_MARGIN = timedelta(seconds=5)
BATCH_SECONDS = timedelta(seconds=10)
SENT, RETRIED, GIVEN_UP = (metrics.EMAILS.labels(o) for o in ("sent", "retried", "dead"))


def backoff(attempts: int) -> timedelta:
    """The wait after the `attempts`th failed try: 1 s, 2 s, 4 s ... capped at an hour."""
    cap = int(BACKOFF_CAP.total_seconds())
    return timedelta(seconds=min(2 ** min(max(attempts - 1, 0), 32), cap))


def retry_schedule() -> timedelta:
    """How long a mail is retried before its last try: the waits between its MAX_ATTEMPTS."""
    return sum((backoff(n) for n in range(1, MAX_ATTEMPTS)), timedelta())


class MailSender:
    """Sends due outbox rows until stopped; woken at once by new mail, else polls."""

    def __init__(
        self,
        settings: Settings,
        *,
        poll_seconds: float = POLL_SECONDS,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.settings = settings
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        # One mail's time, twice the timeout: a session opened for it (each step cut at the
        # timeout), then its MAIL, RCPT and DATA (smtp.py), cut all together.
        self.send_time = timedelta(seconds=2 * settings.mail_send_timeout_seconds)
        self.lease = self.send_time + BATCH_SECONDS + RECORD_MARGIN
        self.smtp = SmtpSession(settings)
        self._stopping = False

    async def run(self) -> None:
        wakeup = sender_wakeup()
        try:
            while not self._stopping:
                try:
                    while not self._stopping and await self.send_batch():
                        pass
                except Exception:
                    log.exception("mail sender pass failed; retrying")
                try:
                    await asyncio.wait_for(wakeup.wait(), timeout=self.poll_seconds)
                except TimeoutError:
                    pass
                wakeup.clear()
        finally:
            await self.smtp.close()

    def stop(self) -> None:
        self._stopping = True
        sender_wakeup().set()

    def now(self) -> datetime:
        """The sender's clock: when mail is due, and when it was sent or is tried again."""
        return datetime.now(UTC)

    async def send_one(self) -> bool:
        """Send one due mail; False when none is due, or when it failed and will be retried."""
        return await self.send_batch(1)

    async def send_batch(self, limit: int | None = None) -> bool:
        """Claim up to `limit` (`batch_size`) due mails (`claims.Batch.claim`) and send them
        one after another, recording each outcome as it comes.

        False when none was due, or when one failed and will be retried: the server is likely
        down, so the pass stops rather than try every other due mail against it, and hands
        the rest of the batch back (due at once, their tries not counted)."""
        async with batch() as claims:
            now = self.now()
            mails = await claims.claim(now, now + self.lease, limit or self.batch_size)
            if not mails:
                return False
            for index, mail in enumerate(mails):
                late = index > 0 and self.now() + self.send_time + RECORD_MARGIN > mail.until
                if self._stopping or late:
                    await claims.release(mails[index:])
                    return not self._stopping
                with logs.about_order(mail.order_id):
                    if not await self._send(claims, mail):
                        await claims.release(mails[index + 1 :])
                        return False
            return True

    async def _send(self, claims: Batch, mail: ClaimedMail) -> bool:
        """One attempt: SENT, or back to PENDING with backoff, or DEAD when it cannot go.

        False after a failure worth retrying."""
        attempts = mail.attempts + 1
        try:
            # Within the claim's lease, whatever the SMTP server's pace step by step.
            async with asyncio.timeout(self.send_time.total_seconds()):
                await self.deliver(mail)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
            if attempts >= MAX_ATTEMPTS or is_permanent(exc):
                log.error(
                    "mail %s to %s is dead after %d tries: %s",
                    mail.id,
                    mail.recipient,
                    attempts,
                    error,
                )
                status = OutboxStatus.DEAD
            else:
                log.warning(
                    "mail %s to %s failed (try %d): %s", mail.id, mail.recipient, attempts, error
                )
                status = OutboxStatus.PENDING
            await claims.failed(
                mail,
                status=status,
                attempts=attempts,
                error=error,
                next_attempt_at=self.now() + backoff(attempts),
            )
            (GIVEN_UP if status == OutboxStatus.DEAD else RETRIED).inc()
            return status == OutboxStatus.DEAD
        await claims.sent(mail, attempts, self.now())
        SENT.inc()
        return True

    def compose(self, mail: ClaimedMail) -> Mail:
        return Mail(
            mail_from=self.settings.mail_from,
            recipient=mail.recipient,
            subject=mail.subject,
            message_id=message_id(mail.dedupe_key, mail.id),
            text=mail.text_body,
            html=mail.html_body,
        )

    async def deliver(self, mail: ClaimedMail) -> None:
        await self.smtp.send(self.compose(mail))
