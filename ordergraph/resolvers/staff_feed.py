"""What a subscription remembers of what it sent, and what the whole shop's feed re-reads after
a transport gap. For `subscriptions` (orderStatusChanged and orderChanges).

A message is newer than the last one when the order's version grew, or, for staff, when it
has more notes: a `Mark` is (version, number of notes). Notes are counted, not compared by id,
because two notes written at once may commit out of id order; a note event is therefore always
worth a read, and the read decides whether anything is sent.

`orderChanges` follows every order of the shop, so what it remembers is bounded: the marks of
the `SENT_LIMIT` orders it sent most recently (`SentMarks`, some 100 bytes an order). An order
it forgot is only sent again, unchanged, if a stale hint for it arrives.

After the transport lost its connection, changes published meanwhile are gone; the feed
re-reads the orders changed or noted since then (`missed_orders`), newest first and at most
`MISSED_LIMIT`, one query shared by the process's staff subscribers.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from ordergraph import events
from ordergraph.models import Order, OrderNote

# (order version, number of notes sent): notes count only for staff, 0 for everyone else.
Mark = tuple[int, int]
NOTHING_SENT: Mark = (0, 0)

SENT_LIMIT = 512
MISSED_LIMIT = 500
# Order rows carry the clock of the process that changed them, read before its commit: the
# re-read after a gap starts this much before the transport was last known to work.
MISSED_SLACK_SECONDS = 30.0


def newer(mark: Mark, last: Mark) -> bool:
    return mark[0] > last[0] or mark[1] > last[1]


def worth_reading(event: events.OrderEvent, last: Mark | None) -> bool:
    """Whether a hint may show something newer than `last` (None: nothing sent yet)."""
    return (
        last is None
        or event.version == events.CATCH_UP
        or event.note > 0
        or event.version > last[0]
    )


class SentMarks:
    """The last mark sent of each order, for at most `limit` orders (least recently sent
    forgotten first)."""

    __slots__ = ("_marks", "limit")

    def __init__(self, limit: int = SENT_LIMIT) -> None:
        self._marks: dict[str, Mark] = {}
        self.limit = limit

    def get(self, order_id: str) -> Mark | None:
        return self._marks.get(order_id)

    def record(self, order_id: str, mark: Mark) -> bool:
        """Remember `mark` if it is newer than what was sent of the order: then it is to be
        sent, and True is returned."""
        last = self._marks.get(order_id)
        if last is not None and not newer(mark, last):
            return False
        if last is not None:
            del self._marks[order_id]  # re-inserted last: the most recently sent
            mark = (max(mark[0], last[0]), max(mark[1], last[1]))
        self._marks[order_id] = mark
        if len(self._marks) > self.limit:
            del self._marks[next(iter(self._marks))]
        return True

    def __len__(self) -> int:
        return len(self._marks)


_missed: dict[float, asyncio.Task[list[str]]] = {}


async def with_missed(news: events.ShopNews) -> dict[str, events.Hint]:
    """The hints of `news`, and a catch-up hint for each order changed or noted since the
    transport may have lost events (when it did)."""
    hints = news.hints
    if news.missed_since is None:
        return hints
    order_ids = await missed_orders(news.missed_since)
    received = time.monotonic()
    merged = dict(hints)
    for order_id in order_ids:
        merged.setdefault(
            order_id, events.Hint(events.OrderEvent(order_id, events.CATCH_UP), received)
        )
    return merged


async def missed_orders(since: float) -> list[str]:
    """The orders changed or noted from `since` (a Unix time, less the slack) on, at most
    `MISSED_LIMIT` of them, those changed most recently first. Every whole-shop subscriber of
    this process is told the same `since` at once, so they share one query."""
    task = _missed.get(since)
    if task is None:
        task = _missed[since] = asyncio.create_task(_changed_since(since))
        task.add_done_callback(lambda _: _missed.pop(since, None))
    return await asyncio.shield(task)


async def _changed_since(since: float) -> list[str]:
    cutoff = datetime.fromtimestamp(since - MISSED_SLACK_SECONDS, UTC)
    changed = (
        await Order.filter(updated_at__gte=cutoff)
        .order_by("-updated_at")
        .limit(MISSED_LIMIT)
        .values_list("id", flat=True)
    )
    noted = (
        await OrderNote.filter(at__gte=cutoff)
        .order_by("-id")
        .limit(MISSED_LIMIT)
        .values_list("order_id", flat=True)
    )
    return list(dict.fromkeys(str(order_id) for order_id in [*changed, *noted]))[:MISSED_LIMIT]
