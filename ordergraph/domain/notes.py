"""Staff notes on orders: what staff tell each other about an order, never shown to shoppers.

A note is a row of its own (`OrderNote`), not a change of the order: it adds no history row
and leaves `Order.version` and `updated_at` alone. The order's `history` is the shopper's
story (the success page shows it, and tells the newer of two copies by its length), and its
version orders that story; a note in either would reach the shopper, or at least wake the
shopper's subscription for an identical re-send that says "staff did something now". Nor does
a note race a status change: `change_order`'s version check would otherwise refuse a shipment
because a colleague wrote a note at the same moment.

So a note is announced as a note event, in the transaction that writes it (at commit, never
for a rollback): `OrderEvent(order_id, version, note=<note id>)`, ids only. Transports carry it
as any event; this process's fan-out hands it only to staff: subscribers of that order who
asked for notes (staff following `orderStatusChanged`) and the whole shop's (`orderChanges`),
who re-read the order and send it again when the note is newer than the last one they sent.
A shopper's subscription never sees the event, so it sends nothing.

Example:
    await add_note(order_id, "Customer called: leave the parcel with the neighbour",
                   author="staff:alice")
"""

from __future__ import annotations

import logging

from ordergraph import events
from ordergraph.db import transaction
from ordergraph.domain.errors import BusinessError, ErrorCode, order_not_found
from ordergraph.models import Order, OrderNote

log = logging.getLogger(__name__)

MAX_NOTE_LENGTH = 2000


def clean_body(body: str) -> str:
    """The note as stored: stripped, 1 to `MAX_NOTE_LENGTH` characters, no NUL (which
    PostgreSQL cannot store in text, and no one types)."""
    text = body.strip()
    if not text:
        raise _invalid("A note cannot be empty")
    if len(text) > MAX_NOTE_LENGTH:
        raise _invalid(f"A note is at most {MAX_NOTE_LENGTH} characters")
    if "\x00" in text:
        raise _invalid("A note cannot contain NUL characters")
    return text


def _invalid(message: str) -> BusinessError:
    return BusinessError.of(ErrorCode.INVALID_INPUT, message, field=("body",))


async def add_note(order_id: str, body: str, *, author: str) -> Order:
    """Write a staff note on the order and tell staff who follow it, at commit.

    Raises INVALID_INPUT for a body `clean_body` refuses, NOT_FOUND for an unknown order.
    """
    text = clean_body(body)
    async with transaction():
        order = await Order.filter(id=order_id).first()
        if order is None:
            raise order_not_found()
        note = await OrderNote.create(order_id=order.id, body=text, author=author)
        await events.announce(events.OrderEvent(str(order.id), order.version, note=note.id))
    log.info("order %s: note %s added (by %s)", order.id, note.id, author)
    return order
