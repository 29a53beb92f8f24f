"""A mail as it goes over SMTP: plain text and HTML, as `multipart/alternative`.

`Mail.message()` builds it with the email package (`EmailMessage`, `set_content`,
`add_alternative`), which aiosmtplib flattens with `email.policy.SMTP`: about 1.2 ms of CPU a
receipt, most of it parsing and refolding headers that need neither. `Mail.wire()` writes the
same bytes directly, once a mail, in about 0.05 ms: the same headers in the same order, each
part's Content-Transfer-Encoding chosen by the email package's own rule (`_encode_text` in
`email.contentmanager`: 7bit or 8bit when every line fits in 78 octets, else the shorter of
quoted-printable and base64 over the first ten lines), the bodies encoded as it encodes them
(quoted-printable by `_quoted_printable`, its encoder's text in a third of its time).
Only the boundary, random either way, differs. `wire()` declines (None) what it does not
write the same, and the sender falls back to `message()`: a header that is not plain ASCII,
that would be folded or encoded, an address that is not a plain `local@domain`.
tests/mail/test_mime.py compares the two renderings byte for byte.
"""

from __future__ import annotations

import binascii
import email.policy
import functools
import io
import random
import re
import sys
from dataclasses import dataclass
from email import quoprimime
from email.generator import BytesGenerator
from email.message import EmailMessage

from aiosmtplib.email import extract_sender

# Where the email package folds headers and stops writing bodies as they are: 78.
MAX_LINE: int = email.policy.default.max_line_length or 78
# An address the email package writes as given, and SMTP takes as it is: a dot-atom local part,
# a domain of letters, digits and hyphens.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
PLAIN_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
PLAIN_MESSAGE_ID = re.compile(rf"<{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*>")
# Unstructured text the email package leaves alone: printable ASCII, single spaces between
# words, nothing that reads as an encoded word (=?...?=).
PLAIN_TEXT = re.compile(r"(?!.*=\?)[!-~]+(?: [!-~]+)*")
_BOUNDARY_DIGITS = len(repr(sys.maxsize - 1))  # as email.generator makes boundaries


def message_id(dedupe_key: str, mail_id: int) -> str:
    return f"<{dedupe_key.replace(':', '.')}.{mail_id}@ordergraph>"


@dataclass(frozen=True, slots=True)
class Wire:
    """What goes over SMTP: the envelope's sender, the message, and whether it has 8-bit
    parts (then it needs a server with 8BITMIME, and is sent with BODY=8BITMIME)."""

    sender: str
    data: bytes
    eight_bit: bool


@dataclass(frozen=True, slots=True)
class Mail:
    mail_from: str
    recipient: str
    subject: str
    message_id: str
    text: str
    html: str

    def message(self) -> EmailMessage:
        """The mail as the email package builds it (the reference for `wire`)."""
        message = EmailMessage()
        message["From"] = self.mail_from
        message["To"] = self.recipient
        message["Subject"] = self.subject
        message["Message-ID"] = self.message_id
        message.set_content(self.text)
        message.add_alternative(self.html, subtype="html")
        return message

    def wire(self) -> Wire | None:
        """The flattened message, or None where only `message()` can be trusted to write it."""
        sender = _from_header(self.mail_from)
        if (
            sender is None
            or not _fits("To", self.recipient, PLAIN_ADDRESS)
            or not _fits("Subject", self.subject, PLAIN_TEXT)
            or not _fits("Message-ID", self.message_id, PLAIN_MESSAGE_ID)
        ):
            return None
        envelope_from, from_line = sender
        text_cte, text = _encode_text(self.text)
        html_cte, html = _encode_text(self.html)
        boundary = _make_boundary()
        while f"--{boundary}".encode() in text + html:  # as unlikely as it is for the package
            boundary = _make_boundary()
        data = b"".join(
            [
                from_line,
                f"To: {self.recipient}\r\n".encode(),
                f"Subject: {self.subject}\r\n".encode(),
                f"Message-ID: {self.message_id}\r\n".encode(),
                b"MIME-Version: 1.0\r\n",
                b"Content-Type: multipart/alternative;\r\n",
                f' boundary="{boundary}"\r\n\r\n--{boundary}\r\n'.encode(),
                b'Content-Type: text/plain; charset="utf-8"\r\n',
                f"Content-Transfer-Encoding: {text_cte}\r\n\r\n".encode(),
                text,
                f"\r\n--{boundary}\r\n".encode(),
                b'Content-Type: text/html; charset="utf-8"\r\n',
                f"Content-Transfer-Encoding: {html_cte}\r\n".encode(),
                b"MIME-Version: 1.0\r\n\r\n",
                html,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        return Wire(envelope_from, data, "8bit" in (text_cte, html_cte))


def _fits(name: str, value: str, form: re.Pattern[str]) -> bool:
    return len(name) + 2 + len(value) <= MAX_LINE and form.fullmatch(value) is not None


@functools.lru_cache(maxsize=8)
def _from_header(mail_from: str) -> tuple[str, bytes] | None:
    """(envelope sender, `From:` line) as aiosmtplib derives them from the message: once per
    MAIL_FROM, by the email package itself. None if it needs SMTPUTF8."""
    message = EmailMessage()
    message["From"] = mail_from
    sender = extract_sender(message)
    with io.BytesIO() as out:
        BytesGenerator(out, policy=email.policy.SMTP).flatten(message)
        line = out.getvalue()[: -len(b"\r\n")]  # the headers' end, no body
    if sender is None or not line.isascii() or not sender.isascii():
        return None
    return sender, line


def _make_boundary() -> str:
    token = random.randrange(sys.maxsize)
    return "=" * 15 + f"{token:0{_BOUNDARY_DIGITS}d}" + "=="


def _encode_text(text: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, body with CRLF line ends) as `set_content(text)` under
    `email.policy.default`, flattened by `BytesGenerator` under `email.policy.SMTP`, gives."""
    lines = text.encode("utf-8").splitlines()
    if max(map(len, lines), default=0) <= MAX_LINE:
        body = b"\r\n".join(lines) + b"\r\n"
        return ("7bit" if body.isascii() else "8bit"), body
    sniff = b"\n".join(lines[:10]) + b"\n"
    sniff_qp = _quoted_printable(sniff.decode("latin-1"))
    if len(sniff_qp) > len(binascii.b2a_base64(sniff)):
        per_line = MAX_LINE // 4 * 3
        whole = b"\n".join(lines) + b"\n"
        encoded = b"".join(
            binascii.b2a_base64(whole[i : i + per_line]) for i in range(0, len(whole), per_line)
        )
        return "base64", encoded.replace(b"\n", b"\r\n")
    encoded_qp = sniff_qp
    if len(lines) > 10:
        whole_text = (b"\n".join(lines) + b"\n").decode("latin-1")
        encoded_qp = _quoted_printable(whole_text)
    # Quoted-printable leaves no line end but those it writes between lines, \n: make them CRLF.
    return "quoted-printable", encoded_qp.replace("\n", "\r\n").encode("ascii")


# Characters quoted-printable writes as they are (printable ASCII, tabs and spaces, which the
# wrapping below quotes at a line's end, and line ends), and "=", which it writes as "=3D".
_QP_PLAIN = bytes(range(ord(" "), ord("~") + 1)) + b"\t\r\n"


def _quoted_printable(body: str) -> str:
    """`quoprimime.body_encode(body, MAX_LINE)`, the same text, in a third of its time for
    the usual body (printable ASCII, with the "=" of a link's query): its translation of each
    character, two thirds of its time, is then one `replace`. The wrapping is its own."""
    if not body or body.encode("latin-1").translate(None, _QP_PLAIN):
        return quoprimime.body_encode(body, MAX_LINE)  # anything else: the encoder itself
    body = body.replace("=", "=3D")
    last = MAX_LINE - 1  # room for the soft break's "="
    encoded: list[str] = []
    append = encoded.append
    for line in body.splitlines():
        start = 0
        laststart = len(line) - 1 - MAX_LINE
        while start <= laststart:
            stop = start + last
            if line[stop - 2] == "=":  # never split an escape
                append(line[start : stop - 1])
                start = stop - 2
            elif line[stop - 1] == "=":
                append(line[start:stop])
                start = stop - 1
            else:
                append(line[start:stop] + "=")
                start = stop
        if line and line[-1] in " \t":
            room = start - laststart
            if room >= 3:
                end = quoprimime.quote(line[-1])
            elif room == 2:
                end = line[-1] + "=\n"
            else:
                end = "=\n" + quoprimime.quote(line[-1])
            append(line[start:-1] + end)
        else:
            append(line[start:])
    if body[-1] in "\r\n":
        append("")
    return "\n".join(encoded)
