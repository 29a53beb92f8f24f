"""The sender's batches on one SMTP session: the session is kept, and opened again only when it
must be; a failure hands the rest of the batch back; a sender that dies mid-batch leaves the
rest to its lease, and no mail it sent goes out again; an outcome never lands on a later claim.

Each test has an SMTP server of its own (`Relay`, which counts sessions and can end them,
refuse a recipient, or hold a mail) and drives a sender of its own a day ahead (`Ahead`): the
mail these tests write is due half a day ahead, so the service's own sender leaves it alone.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from ordergraph.demo.stack import read_mail
from ordergraph.mail import sender as sender_module
from ordergraph.mail import smtp as smtp_module
from ordergraph.mail.claims import batch
from ordergraph.mail.sender import MailSender
from ordergraph.models import OutboxEmail, OutboxStatus
from tests.conftest import Harness, free_port

LATER = timedelta(hours=12)  # when the mail of these tests is due
AHEAD = timedelta(days=1)  # the clock of their senders


class Ahead(MailSender):
    def __init__(self, *args: Any, ahead: timedelta = AHEAD, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ahead = ahead

    def now(self) -> datetime:
        return datetime.now(UTC) + self.ahead


@dataclass
class Relay:
    """An SMTP server (aiosmtpd) that counts what it was asked."""

    port: int = field(default_factory=free_port)
    received: list[bytes] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)
    sessions: int = 0
    noops: int = 0
    mails_per_session: int | None = None  # then the next MAIL is answered 421 (session over)
    refuse: dict[str, str] = field(default_factory=dict)  # recipient: answer to RCPT
    hold_data: int | None = None  # the DATA of this mail (1 = the first) waits for `let_go`
    data_started: int = 0
    let_go: threading.Event = field(default_factory=threading.Event)
    login: tuple[str, str] | None = None  # then mail needs AUTH with these
    logins: int = 0
    controller: Controller | None = None

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.sessions += 1
        session.host_name = hostname
        session.mails = 0
        return responses

    async def handle_NOOP(self, server: Any, session: Any, envelope: Any, arg: str) -> str:
        self.noops += 1
        return "250 OK"

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.mails_per_session is not None and session.mails >= self.mails_per_session:
            return "421 4.7.0 Too many messages for this session"
        session.mails += 1
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_started += 1
        if self.data_started == self.hold_data:
            while not self.let_go.is_set():
                await asyncio.sleep(0.01)
            return "451 4.3.0 Not now"
        self.received.append(envelope.content)
        self.recipients.extend(envelope.rcpt_tos)
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        given = (data.login.decode(), data.password.decode())
        self.logins += given == self.login
        return AuthResult(success=given == self.login)

    def start(self) -> None:
        extra: dict[str, Any] = {}
        if self.login is not None:
            extra = {"authenticator": self.authenticate, "auth_required": True}
            extra["auth_require_tls"] = False
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, **extra)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
async def relay(app: Harness) -> AsyncIterator[Relay]:
    server = Relay()
    server.start()
    yield server
    server.let_go.set()
    server.stop()


def sender_for(app: Harness, relay: Relay, **kwargs: Any) -> Ahead:
    return Ahead(replace(app.settings, smtp_port=relay.port), **kwargs)


async def due_mails(count: int, *, start: int = 0) -> list[OutboxEmail]:
    """`count` receipts due half a day ahead, the earlier ones due first."""
    due = datetime.now(UTC) + LATER
    rows = [
        OutboxEmail(
            dedupe_key=f"receipt:batch-{n}",
            recipient=f"shopper-{n}@example.com",
            subject=f"Your receipt {n}",
            text_body=f"Thank you for order {n}.",
            html_body=f"<p>Thank you for order {n}.</p>",
            next_attempt_at=due + timedelta(milliseconds=n),
        )
        for n in range(start, start + count)
    ]
    await OutboxEmail.bulk_create(rows)
    return list(await OutboxEmail.filter(dedupe_key__startswith="receipt:batch-").order_by("id"))


async def drain(sender: MailSender) -> None:
    while await sender.send_batch():
        pass


def addressed(rows: list[OutboxEmail]) -> list[str]:
    return [row.recipient for row in rows]


async def test_a_backlog_goes_out_in_batches_over_one_session(app: Harness, relay: Relay) -> None:
    rows = await due_mails(45)
    sender = sender_for(app, relay)

    await drain(sender)
    await sender.smtp.close()

    assert relay.recipients == addressed(rows)  # once each, the longest due first
    assert relay.sessions == 1
    stored = await OutboxEmail.filter(id__in=[r.id for r in rows]).order_by("id")
    assert {(r.status, r.attempts, r.claimed_until) for r in stored} == {
        (OutboxStatus.SENT, 1, None)
    }
    # What the server received is the mail as written, with its Message-ID.
    message = read_mail(relay.received[0])
    assert message["Message-ID"] == f"<receipt.batch-0.{rows[0].id}@ordergraph>"
    assert (message["From"], message["To"], message["Subject"]) == (
        "orders@shop.test",
        "shopper-0@example.com",
        "Your receipt 0",
    )
    plain, html = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None and html is not None
    assert plain.get_content().replace("\r\n", "\n") == "Thank you for order 0.\n"
    assert html.get_content().replace("\r\n", "\n") == "<p>Thank you for order 0.</p>\n"


async def test_a_session_the_server_ends_costs_no_try(app: Harness, relay: Relay) -> None:
    """A server that takes so many mails a session (421 to the next MAIL), and one that was
    restarted meanwhile: the mail goes out on a new session, its try not counted as failed."""
    relay.mails_per_session = 3
    rows = await due_mails(10)
    sender = sender_for(app, relay)

    await drain(sender)
    relay.stop()
    relay.start()
    await due_mails(1, start=10)
    await drain(sender)
    await sender.smtp.close()

    assert sorted(relay.recipients) == sorted([*addressed(rows), "shopper-10@example.com"])
    assert relay.sessions == 5  # 3 + 3 + 3 + 1, then one after the restart
    attempts = await OutboxEmail.filter(status=OutboxStatus.SENT).values_list("attempts", flat=True)
    assert attempts == [1] * 11


async def test_a_session_idle_for_long_is_checked_first(
    app: Harness, relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smtp_module, "IDLE_SECONDS", 0.0)
    await due_mails(3)
    sender = sender_for(app, relay)

    for _ in range(3):
        assert await sender.send_one()
    await sender.smtp.close()

    assert (relay.sessions, relay.noops, len(relay.received)) == (1, 2, 3)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_the_session_logs_in_once(app: Harness) -> None:
    relay = Relay(login=("mailer", "s3cret"))
    relay.start()
    try:
        rows = await due_mails(4)
        settings = replace(app.settings, smtp_username="mailer", smtp_password="s3cret")
        sender = Ahead(replace(settings, smtp_port=relay.port))
        await drain(sender)
        await sender.smtp.close()
    finally:
        relay.stop()
    assert relay.recipients == addressed(rows)
    assert (relay.sessions, relay.logins) == (1, 1)


async def test_a_failure_worth_retrying_hands_the_rest_of_the_batch_back(
    app: Harness, relay: Relay
) -> None:
    rows = await due_mails(6)
    relay.refuse[rows[2].recipient] = "451 4.3.0 Mailbox busy"
    sender = sender_for(app, relay)

    assert not await sender.send_batch()  # the pass stops

    stored = {r.id: r for r in await OutboxEmail.filter(id__in=[r.id for r in rows])}
    assert relay.recipients == addressed(rows[:2])
    assert [stored[r.id].status for r in rows[:2]] == [OutboxStatus.SENT] * 2
    failed = stored[rows[2].id]
    assert (failed.status, failed.attempts, failed.claimed_until) == (
        OutboxStatus.PENDING,
        1,
        None,
    )
    assert failed.last_error and "451" in failed.last_error
    retry = failed.next_attempt_at - sender.now()
    assert timedelta(0) < retry <= timedelta(seconds=1)
    for row in rows[3:]:  # handed back untried: due as before, no try counted
        back = stored[row.id]
        assert (back.status, back.attempts, back.claimed_until, back.last_error) == (
            OutboxStatus.PENDING,
            0,
            None,
            None,
        )
        assert back.next_attempt_at == row.next_attempt_at

    del relay.refuse[rows[2].recipient]
    await drain(sender)
    await drain(Ahead(sender.settings, ahead=AHEAD + timedelta(seconds=2)))  # the retry
    await sender.smtp.close()
    assert sorted(relay.recipients) == sorted(addressed(rows))


async def test_a_server_that_stops_answering_costs_one_try_after_the_mails_time(
    app: Harness, relay: Relay
) -> None:
    """No SMTP step has a timeout of its own: the mail's time (twice MAIL_SEND_TIMEOUT_SECONDS)
    cuts the step the server never answers, and the next mail gets a new session."""
    rows = await due_mails(3)
    relay.hold_data = 1
    sender = Ahead(replace(app.settings, smtp_port=relay.port, mail_send_timeout_seconds=1))

    started = time.monotonic()
    assert not await sender.send_batch()
    waited = time.monotonic() - started

    assert 2 <= waited < 5
    stuck = await OutboxEmail.get(id=rows[0].id)
    assert (stuck.status, stuck.attempts, stuck.claimed_until) == (OutboxStatus.PENDING, 1, None)
    assert stuck.last_error and stuck.last_error.startswith("TimeoutError")
    assert relay.recipients == []
    relay.let_go.set()
    await drain(sender)
    await sender.smtp.close()
    assert relay.recipients == addressed(rows[1:])
    assert relay.sessions == 2  # the session cut mid-mail was not used again


async def test_a_refused_recipient_is_dead_and_the_batch_goes_on(
    app: Harness, relay: Relay
) -> None:
    rows = await due_mails(5)
    relay.refuse[rows[1].recipient] = "550 5.1.1 No such user"
    sender = sender_for(app, relay)

    assert await sender.send_batch()
    await sender.smtp.close()

    dead = await OutboxEmail.get(id=rows[1].id)
    assert (dead.status, dead.attempts) == (OutboxStatus.DEAD, 1)
    assert dead.last_error and "550" in dead.last_error
    assert relay.recipients == addressed([rows[0], *rows[2:]])
    assert relay.sessions == 1  # a refusal does not cost the session


async def test_a_sender_that_dies_mid_batch_leaves_the_rest_to_its_lease(
    app: Harness, relay: Relay
) -> None:
    rows = await due_mails(8)
    relay.hold_data = 3
    sender = sender_for(app, relay)

    task = asyncio.create_task(sender.send_batch())
    deadline = time.monotonic() + 10
    while relay.data_started < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    task.cancel()  # the process dies while the server has the third mail
    with pytest.raises(asyncio.CancelledError):
        await task
    relay.let_go.set()  # which it never accepts

    stored = {r.id: r for r in await OutboxEmail.filter(id__in=[r.id for r in rows])}
    assert [stored[r.id].status for r in rows[:2]] == [OutboxStatus.SENT] * 2
    assert {(stored[r.id].status, stored[r.id].attempts) for r in rows[2:]} == {
        (OutboxStatus.SENDING, 0)
    }
    # Until its lease runs out, the rest is no one else's to send.
    assert not await sender_for(app, relay).send_batch()

    after_lease = sender_for(app, relay, ahead=AHEAD + sender.lease + timedelta(seconds=1))
    await drain(after_lease)
    await after_lease.smtp.close()

    assert relay.recipients == addressed(rows)  # each once: the first two are not sent again
    assert await OutboxEmail.filter(status=OutboxStatus.SENT).count() == 8


async def test_an_outcome_never_lands_on_a_later_claim(app: Harness) -> None:
    """A sender that outlived its lease (paused, say) finds its rows claimed by another: what it
    records, and what it hands back, changes nothing."""
    rows = await due_mails(3)
    now = datetime.now(UTC) + AHEAD
    lease = timedelta(seconds=45)
    async with batch() as first:
        stale = await first.claim(now, now + lease, 10)
    later = now + lease + timedelta(seconds=1)
    async with batch() as second:
        current = await second.claim(later, later + lease, 10)
    assert [m.id for m in stale] == [m.id for m in current] == [r.id for r in rows]

    async with batch() as first:
        await first.sent(stale[0], 1, now)
        await first.failed(
            stale[1],
            status=OutboxStatus.DEAD,
            attempts=1,
            error="late",
            next_attempt_at=now,
        )
        await first.release(stale[2:])
    stored = await OutboxEmail.filter(id__in=[r.id for r in rows]).order_by("id")
    assert {(r.status, r.attempts, r.claimed_until) for r in stored} == {
        (OutboxStatus.SENDING, 0, later + lease)
    }

    async with batch() as second:
        for mail in current:
            await second.sent(mail, 1, later)
    assert await OutboxEmail.filter(status=OutboxStatus.SENT).count() == 3


async def test_a_batch_hands_back_what_its_lease_cannot_cover(
    app: Harness, relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease covers one mail's time and no more: the first mail goes, the rest is handed
    back untried, and the next batches send it."""
    monkeypatch.setattr(sender_module, "BATCH_SECONDS", timedelta(0))
    rows = await due_mails(3)
    sender = sender_for(app, relay)

    assert await sender.send_batch()
    stored = await OutboxEmail.filter(id__in=[r.id for r in rows]).order_by("id")
    assert [(r.status, r.attempts) for r in stored] == [
        (OutboxStatus.SENT, 1),
        (OutboxStatus.PENDING, 0),
        (OutboxStatus.PENDING, 0),
    ]
    await drain(sender)
    await sender.smtp.close()
    assert relay.recipients == addressed(rows)


async def test_two_senders_share_a_backlog_and_send_each_mail_once(
    app: Harness, relay: Relay
) -> None:
    rows = await due_mails(60)
    first, second = sender_for(app, relay), sender_for(app, relay)

    await asyncio.gather(drain(first), drain(second))
    await first.smtp.close()
    await second.smtp.close()

    assert sorted(relay.recipients) == sorted(addressed(rows))
    assert await OutboxEmail.filter(status=OutboxStatus.SENT).count() == 60
