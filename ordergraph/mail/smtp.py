"""One SMTP session kept open across mails, for the sender of one process.

Opening a session per mail (TCP, the greeting, EHLO, and STARTTLS and AUTH where configured)
cost more CPU than the mail itself, and a name lookup of this host (`socket.getfqdn`, for
EHLO) each time. The session opens with the first mail and serves the next ones; it is opened
again when the server closed it, and after `IDLE_SECONDS` without a mail a NOOP checks it first
(servers drop idle clients, and a dropped one can look open). A mail that fails on a session
that was already open, because the connection was lost, is tried once more on a fresh one
before it counts as a failure (so is one the server cut with a 421, as servers that limit the
mails of a session do): a server that went away in between should not cost a try. After any
failure but a recipient refused for good (then the envelope is reset, as aiosmtplib does, and
the session serves the next mail), the session is dropped and the next mail opens a new one.

The settings are those of a session per mail: SMTP_HOST, SMTP_PORT, SMTP_USERNAME and
SMTP_PASSWORD, SMTP_STARTTLS, and MAIL_SEND_TIMEOUT_SECONDS for each step of opening a session.
A mail's own steps (MAIL, RCPT, DATA) have no timeout of their own: the sender bounds the whole
mail (`MailSender.send_time`), which spares each step a timer and a task of `asyncio.wait_for`.
"""

from __future__ import annotations

import logging
import time

import aiosmtplib

from ordergraph.mail.mime import Mail, Wire
from ordergraph.settings import Settings

log = logging.getLogger(__name__)

IDLE_SECONDS = 15.0


class SmtpSession:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: aiosmtplib.SMTP | None = None
        self._last_used = 0.0

    async def send(self, mail: Mail) -> None:
        """Send `mail`, or raise what the server (or the connection) said."""
        wire = mail.wire()  # rendered once, whatever happens next
        client, reused = await self._ready()
        try:
            await self._send_on(client, mail, wire)
        except (ConnectionError, aiosmtplib.SMTPException) as exc:
            if not reused or not _session_lost(exc):
                raise
            log.info("SMTP session lost; sending mail %s on a new one", mail.message_id)
            client = await self._open()
            await self._send_on(client, mail, wire)
        self._last_used = time.monotonic()

    async def close(self) -> None:
        """QUIT, politely but briefly; the session is gone either way."""
        client, self._client = self._client, None
        if client is None or not client.is_connected:
            return
        try:
            await client.quit(timeout=min(5, self.settings.mail_send_timeout_seconds))
        except Exception:
            client.close()

    async def _ready(self) -> tuple[aiosmtplib.SMTP, bool]:
        """The open session and True, or a new one and False."""
        client = self._client
        if client is not None and client.is_connected:
            if time.monotonic() - self._last_used < IDLE_SECONDS:
                return client, True
            try:
                await client.noop()
            except Exception:
                self._drop()
            else:
                self._last_used = time.monotonic()
                return client, True
        return await self._open(), False

    async def _open(self) -> aiosmtplib.SMTP:
        self._drop()
        settings = self.settings
        client = aiosmtplib.SMTP(
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password,
            start_tls=settings.smtp_starttls,
            timeout=settings.mail_send_timeout_seconds,
        )
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:  # as sendmail would before its MAIL
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    if not client.is_connected:
                        raise
                    await client.helo()
        except BaseException:
            client.close()
            raise
        self._client = client
        self._last_used = time.monotonic()
        return client

    async def _send_on(self, client: aiosmtplib.SMTP, mail: Mail, wire: Wire | None) -> None:
        try:
            if wire is None or (wire.eight_bit and not client.supports_extension("8bitmime")):
                await client.send_message(mail.message())
            else:
                await _transaction(client, wire, mail.recipient)
        except (aiosmtplib.SMTPRecipientsRefused, aiosmtplib.SMTPRecipientRefused) as exc:
            if not is_permanent(exc):
                self._forget(client)
            raise  # a recipient refused for good: the session goes on
        except BaseException:
            self._forget(client)
            raise

    def _forget(self, client: aiosmtplib.SMTP) -> None:
        """After anything but a refused recipient (a server that answers 4xx to a session it
        has had enough of, a lost connection, a cancelled send), the next mail gets a new
        session."""
        if self._client is client:
            self._drop()
        else:
            client.close()

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _session_lost(exc: Exception) -> bool:
    """The connection was gone, or the server closed it (421: it had had enough of it)."""
    closing = aiosmtplib.SMTPStatus.domain_unavailable
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return any(refused.code == closing for refused in exc.recipients)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code == closing
    return isinstance(exc, ConnectionError)


def is_permanent(exc: Exception) -> bool:
    """An SMTP 5xx refusal of the recipient will not change by trying again."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return all(500 <= r.code < 600 for r in exc.recipients)
    return isinstance(exc, aiosmtplib.SMTPRecipientRefused) and 500 <= exc.code < 600


async def _transaction(client: aiosmtplib.SMTP, wire: Wire, recipient: str) -> None:
    """MAIL, RCPT and DATA as `aiosmtplib.SMTP.sendmail` sends them for one recipient, with
    the same errors, without its checks of addresses `Wire` only has in plain form (four
    parses of an address a mail) and of line ends `Wire` has already written as CRLF."""
    options = []
    if client.supports_extension("size"):
        options.append(f"size={len(wire.data)}".encode())
    if client.supports_extension("8bitmime"):
        options.append(b"BODY=8BITMIME")
    try:
        response = await client.execute_command(
            b"MAIL", b"FROM:<" + wire.sender.encode() + b">", *options, timeout=None
        )
        if response.code != aiosmtplib.SMTPStatus.completed:
            raise aiosmtplib.SMTPSenderRefused(response.code, response.message, wire.sender)
        response = await client.execute_command(
            b"RCPT", b"TO:<" + recipient.encode() + b">", timeout=None
        )
        if response.code not in (
            aiosmtplib.SMTPStatus.completed,
            aiosmtplib.SMTPStatus.will_forward,
        ):
            refused = aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)
            raise aiosmtplib.SMTPRecipientsRefused([refused])
        await client.data(wire.data, timeout=None)
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        try:  # reset the envelope, as sendmail does
            await client.rset()
        except (ConnectionError, aiosmtplib.SMTPResponseException):
            pass
        raise
