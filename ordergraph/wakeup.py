"""Waking a background sender at once when its work is committed, instead of at its next poll."""

from __future__ import annotations

import asyncio


class Wakeup:
    """An `asyncio.Event` made on first use, so that it belongs to the loop that uses it.

    `delay`: a commit wakes the sender that much later, when the request that committed has
    most likely answered, so that the sender's work does not hold up the rest of it (and the
    commits of that moment are taken in one pass)."""

    def __init__(self, delay: float = 0.0) -> None:
        self._event: asyncio.Event | None = None
        self.delay = delay

    def event(self) -> asyncio.Event:
        """What the sender waits on between passes."""
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    async def wake(self) -> None:
        """An `after_commit` callback: wake the sender, if this process runs one."""
        if self._event is None:
            return
        if self.delay:
            asyncio.get_running_loop().call_later(self.delay, self._event.set)
        else:
            self._event.set()
