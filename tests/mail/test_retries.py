"""Mail outlasts a real outage: retries cover a day before a mail is DEAD, and staff can give
every dead mail a fresh set of tries at once (`retryDeadEmails`).

The SMTP server is really stopped; the tests make a failed mail due again at once (its
`next_attempt_at` set back) instead of waiting out the backoff, and drive a sender of their own
beside the service's (either may make a given try: both count the same way).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from ordergraph.mail.sender import (
    BACKOFF_CAP,
    MAX_ATTEMPTS,
    RETRY_WINDOW,
    MailSender,
    backoff,
    retry_schedule,
)
from ordergraph.models import Order, OutboxEmail, OutboxStatus
from tests.conftest import Harness, Mailbox, SmtpServer
from tests.utils.helpers import checked_out_order, make_product

OLD_MAX_ATTEMPTS = 8  # what killed a receipt after a 150 s outage

RETRY_ALL = "mutation { retryDeadEmails { retried userErrors { code message } } }"


def test_the_retry_schedule_covers_a_day() -> None:
    waits = [backoff(n) for n in range(1, MAX_ATTEMPTS)]  # between the MAX_ATTEMPTS tries
    assert sum(waits, timedelta()) >= timedelta(hours=24)
    assert sum(waits, timedelta()) == retry_schedule() >= RETRY_WINDOW == timedelta(hours=24)
    assert retry_schedule() < timedelta(hours=26)  # a day, not a week
    assert waits[:4] == [timedelta(seconds=s) for s in (1, 2, 4, 8)]  # quick at first
    assert waits == sorted(waits) and max(waits) == BACKOFF_CAP == timedelta(hours=1)
    assert MAX_ATTEMPTS > OLD_MAX_ATTEMPTS


async def _receipt_while_smtp_is_down(app: Harness) -> OutboxEmail:
    """A paid order whose receipt the service tried, and failed, to send."""
    tee = await make_product("TEE", stock=5)
    payload = await checked_out_order(app, app.token("alice"), tee)
    order = await Order.get(id=payload["orderId"])
    delivery = await app.emulator.complete_session(order.stripe_checkout_session_id or "")
    assert delivery.status_code == 200
    return await OutboxEmail.get(order_id=order.id)


async def _fail_until(sender: MailSender, mail_id: int, attempts: int) -> OutboxEmail:
    """With the SMTP server down: make the mail due and try it, until it has failed
    `attempts` times. Only the tries made here can count, since the backoff keeps it from
    being due on its own."""
    for _ in range(attempts * 50):
        row = await OutboxEmail.get(id=mail_id)
        if row.status == OutboxStatus.SENDING:  # the service's sender is trying it
            await asyncio.sleep(0.01)
            continue
        if row.attempts >= attempts:
            return row
        assert row.status == OutboxStatus.PENDING, (row.attempts, row.status, row.last_error)
        await OutboxEmail.filter(id=mail_id, status=OutboxStatus.PENDING).update(
            next_attempt_at=datetime.now(UTC) - timedelta(seconds=1)
        )
        await sender.send_one()  # fails (unless the service's sender took it first)
    raise AssertionError(f"mail {mail_id} did not reach {attempts} failed tries")


async def _wait_status(mail_id: int, status: OutboxStatus, timeout: float = 10) -> OutboxEmail:
    for _ in range(int(timeout / 0.05)):
        row = await OutboxEmail.get(id=mail_id)
        if row.status == status:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"mail {mail_id} is {row.status}, not {status}")


async def test_a_receipt_outlives_more_failures_than_the_old_limit(
    app: Harness, mailbox: Mailbox, smtp: SmtpServer
) -> None:
    sender = MailSender(app.settings)
    smtp.stop()
    try:
        mail = await _receipt_while_smtp_is_down(app)
        row = await _fail_until(sender, mail.id, MAX_ATTEMPTS - 1)
        assert row.status == OutboxStatus.PENDING and row.attempts == MAX_ATTEMPTS - 1
        assert row.last_error and "Traceback" not in row.last_error
        # Its next try is an hour away (the cap), not never.
        wait = row.next_attempt_at - datetime.now(UTC)
        assert timedelta(minutes=55) < wait <= BACKOFF_CAP
        assert mailbox.messages == []
    finally:
        smtp.start()
    # The server is back: the next try (made due now, instead of in an hour) delivers it.
    await OutboxEmail.filter(id=mail.id).update(next_attempt_at=datetime.now(UTC))
    await sender.send_one()
    messages = await mailbox.wait_for(1)
    assert [m["To"] for m in messages] == ["alice@example.com"]
    row = await _wait_status(mail.id, OutboxStatus.SENT)
    assert row.attempts == MAX_ATTEMPTS and row.sent_at is not None
    assert len(await mailbox.wait_for(2, timeout=1)) == 1


async def test_a_mail_is_dead_only_after_its_last_try_and_staff_revive_it(
    app: Harness, mailbox: Mailbox, smtp: SmtpServer
) -> None:
    sender = MailSender(app.settings)
    staff = app.token("sam", staff=True)
    smtp.stop()
    try:
        mail = await _receipt_while_smtp_is_down(app)
        await _fail_until(sender, mail.id, MAX_ATTEMPTS)
        row = await OutboxEmail.get(id=mail.id)
        assert (row.status, row.attempts) == (OutboxStatus.DEAD, MAX_ATTEMPTS)
        listed = await app.gql("{ undeliveredEmails { id status } }", token=staff)
        assert listed["data"]["undeliveredEmails"] == [{"id": str(mail.id), "status": "DEAD"}]
    finally:
        smtp.start()

    revived = await app.gql(RETRY_ALL, token=staff)

    assert revived == {"data": {"retryDeadEmails": {"retried": 1, "userErrors": []}}}
    messages = await mailbox.wait_for(1)
    assert [m["To"] for m in messages] == ["alice@example.com"]
    row = await _wait_status(mail.id, OutboxStatus.SENT)
    assert row.attempts == 1  # a fresh set of tries, the first of which went through


def _mail(key: str, recipient: str, status: OutboxStatus, **fields: object) -> OutboxEmail:
    return OutboxEmail(
        dedupe_key=key,
        recipient=recipient,
        subject=f"Mail {key}",
        text_body="Hello",
        html_body="<p>Hello</p>",
        status=status,
        next_attempt_at=datetime.now(UTC),
        **fields,
    )


async def test_retry_dead_emails_revives_every_dead_mail_and_nothing_else(
    app: Harness, mailbox: Mailbox
) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    await OutboxEmail.bulk_create(
        [
            _mail("dead-1", "ann@example.com", OutboxStatus.DEAD, attempts=8, last_error="down"),
            _mail("dead-2", "ben@example.com", OutboxStatus.DEAD, attempts=8, last_error="down"),
            _mail("sent", "cid@example.com", OutboxStatus.SENT, attempts=1, sent_at=later),
        ]
    )
    # Still being retried: not DEAD, so not touched (its next try stays an hour away).
    waiting = _mail("waiting", "dan@example.com", OutboxStatus.PENDING, attempts=3)
    waiting.next_attempt_at = later
    await waiting.save()

    shopper = await app.gql(RETRY_ALL, token=app.token("alice"))
    assert shopper == {
        "data": {
            "retryDeadEmails": {
                "retried": None,
                "userErrors": [{"code": "FORBIDDEN", "message": "Staff only"}],
            }
        }
    }
    assert await OutboxEmail.filter(status=OutboxStatus.DEAD).count() == 2

    staff = app.token("sam", staff=True)
    revived = await app.gql(RETRY_ALL, token=staff)

    assert revived == {"data": {"retryDeadEmails": {"retried": 2, "userErrors": []}}}
    messages = await mailbox.wait_for(2)
    assert sorted(m["To"] for m in messages) == ["ann@example.com", "ben@example.com"]
    for key in ("dead-1", "dead-2"):
        row = await _wait_status((await OutboxEmail.get(dedupe_key=key)).id, OutboxStatus.SENT)
        assert row.attempts == 1
    untouched = await OutboxEmail.get(dedupe_key="waiting")
    assert (untouched.status, untouched.attempts) == (OutboxStatus.PENDING, 3)
    assert abs(untouched.next_attempt_at - later) < timedelta(seconds=1)
    assert (await OutboxEmail.get(dedupe_key="sent")).status == OutboxStatus.SENT
    assert len(await mailbox.wait_for(3, timeout=1)) == 2

    again = await app.gql(RETRY_ALL, token=staff)
    assert again == {"data": {"retryDeadEmails": {"retried": 0, "userErrors": []}}}
