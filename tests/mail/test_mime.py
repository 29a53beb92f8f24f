"""`Mail.wire()` writes what the email package writes (`Mail.message()` flattened as aiosmtplib
flattens it), byte for byte but for the random boundary, or declines and leaves it to the
email package. Hypothesis looks for a mail where the two differ."""

from __future__ import annotations

import re
from email import message_from_bytes, policy

from aiosmtplib.email import extract_recipients, extract_sender, flatten_message
from hypothesis import given, settings
from hypothesis import strategies as st

from ordergraph.mail.mime import Mail, message_id

BOUNDARY = re.compile(rb"={15}\d{19}==")
LINK = "https://shop.example.com/order-success/3f6c0a52?access=eyJhbGciOiJIUzI1NiJ9." + "x" * 150


def reference(mail: Mail, *, eight_bit: bool = True) -> bytes:
    """What `aiosmtplib.SMTP.send_message` puts on the wire for `mail.message()`."""
    return flatten_message(mail.message(), cte_type="8bit" if eight_bit else "7bit")


def same_bytes(mail: Mail) -> bool:
    """Asserts the renderings agree when `wire` renders; whether it did."""
    wire = mail.wire()
    if wire is None:
        return False
    expected = reference(mail)
    assert BOUNDARY.sub(b"B", wire.data) == BOUNDARY.sub(b"B", expected)
    assert wire.eight_bit == (b"Content-Transfer-Encoding: 8bit" in expected)
    if not wire.eight_bit:  # a server without 8BITMIME gets the same from the email package
        assert BOUNDARY.sub(b"B", reference(mail, eight_bit=False)) == BOUNDARY.sub(b"B", wire.data)
    message = mail.message()
    assert wire.sender == extract_sender(message)
    assert [mail.recipient] == extract_recipients(message)
    return True


def receipt(**changes: str) -> Mail:
    fields = {
        "mail_from": "orders@shop.example.com",
        "recipient": "alice@example.com",
        "subject": "Your receipt for order 3f6c0a52",
        "message_id": message_id("receipt:3f6c0a52-1d2e-4b5c-8a9d-0123456789ab", 41),
        "text": "Thank you for your order.\nOrder: 3f6c0a52\n\n1 x Tee: 19.99 USD",
        "html": "<html><body><p>Thank you for your order.</p></body></html>",
    }
    fields.update(changes)
    return Mail(**fields)


def test_a_receipt_with_its_order_link_is_written_as_the_email_package_writes_it() -> None:
    text = f"Thank you for your order.\n\nSee your order: {LINK}"
    html = f'<html><body><p>See your order: <a href="{LINK}">{LINK}</a></p></body></html>'
    mail = receipt(text=text, html=html)
    assert same_bytes(mail)
    wire = mail.wire()
    assert wire is not None
    parsed = message_from_bytes(wire.data, policy=policy.default)
    assert parsed["Message-ID"] == "<receipt.3f6c0a52-1d2e-4b5c-8a9d-0123456789ab.41@ordergraph>"
    assert [part.get_content_type() for part in parsed.iter_parts()] == [
        "text/plain",
        "text/html",
    ]
    body = {
        kind: parsed.get_body((kind,)).get_content().replace("\r\n", "\n")  # as received
        for kind in ("plain", "html")
    }
    assert body == {"plain": text + "\n", "html": html + "\n"}


def test_every_encoding_the_email_package_chooses_is_matched() -> None:
    cases = {
        "7bit": "short\nlines",
        "8bit": "Grüße aus Köln\nbis bald",
        "quoted-printable": "a long line " * 12 + "\n" + "é" * 3,
        "quoted-printable, more than ten lines": "\n".join(["x" * 90] + ["line"] * 12),
        "base64": "日本語のテキスト" * 8,
        "base64, many lines": "\n".join(["ü" * 40] * 30),
        "line ends of every kind": "a\r\nb\rc\nd\n\n",
        "empty": "",
        "dots and From": ".\n..\nFrom me\n.",
        "trailing spaces, long": "word \t " * 20 + "\nend ",
        "escapes where a line breaks": "\n".join("x" * n + "=" + "y" * 60 for n in range(70, 80)),
        "a space at the break": "\n".join("x" * n + " " for n in range(74, 82)),
    }
    for name, text in cases.items():
        assert same_bytes(receipt(text=text, html=text)), name


def test_headers_it_would_not_write_the_same_are_left_to_the_email_package() -> None:
    assert receipt(subject="Grüße").wire() is None
    assert receipt(subject="=?utf-8?q?encoded?=").wire() is None
    assert receipt(subject="Receipt " * 12).wire() is None  # would be folded
    assert receipt(subject="two  spaces").wire() is None
    assert receipt(recipient="Alice <alice@example.com>").wire() is None
    assert receipt(recipient="zoë@example.com").wire() is None
    assert receipt(mail_from="Shop <bestellung@köln.example>").wire() is None  # SMTPUTF8
    assert receipt(message_id=message_id("refund::x", 1)).wire() is None
    # A display name in MAIL_FROM is fine: its line is the email package's own.
    assert same_bytes(receipt(mail_from='"Tee Shop" <orders@shop.example.com>'))
    assert same_bytes(receipt(mail_from="Tee Shop <orders@shop.example.com>"))
    assert same_bytes(receipt(mail_from="Shöp <orders@shop.example.com>"))  # encoded word


_atext = st.text(alphabet="abcXYZ019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=12)
_label = st.text(alphabet="abz09-", min_size=1, max_size=10)
_address = st.builds(
    lambda local, more, domain: ".".join([local, *more]) + "@" + ".".join(domain),
    _atext,
    st.lists(_atext, max_size=2),
    st.lists(_label, min_size=1, max_size=3),
)
_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from("\r\n. "),
    max_size=400,
)
# Printable ASCII with "=" and spaces where lines break: the encoder's fast path and its wrapping.
_plain_text = st.lists(st.sampled_from([*"ab=. \t\n", "x" * 70]), max_size=60).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    recipient=_address | st.text(max_size=40),
    subject=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
    | st.text(max_size=30),
    key=st.text(alphabet="abc09:-._=?", min_size=1, max_size=60),
    mail_id=st.integers(min_value=1, max_value=10**9),
    text=_text | _plain_text,
    html=_text | _plain_text,
)
def test_any_mail_is_written_as_the_email_package_writes_it_or_left_to_it(
    recipient: str, subject: str, key: str, mail_id: int, text: str, html: str
) -> None:
    mail = Mail("orders@shop.example.com", recipient, subject, message_id(key, mail_id), text, html)
    same_bytes(mail)


def test_ordinary_mail_is_rendered_by_wire() -> None:
    """The fast path is the common one: receipts to plain addresses with plain subjects."""
    for n in range(20):
        mail = receipt(
            recipient=f"shopper-{n}@bench.test",
            subject=f"Order {n:08x} has shipped",
            message_id=message_id(f"shipped:{n:08x}-1d2e-4b5c-8a9d-0123456789ab", n),
            text=f"Your order {n} has shipped.\n\nSee your order: {LINK}",
        )
        assert same_bytes(mail)
