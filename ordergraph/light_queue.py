"""A FIFO for one consumer that costs next to nothing while empty.

What an `asyncio.Queue` offers that a long-lived, mostly idle connection uses (`put_nowait`,
`get`, `empty`, `qsize`, an optional bound) without its three deques and `asyncio.Event`
(about 3.3 KB even when empty): a list made on the first item, and a future only while the
consumer waits.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class LightQueue(Generic[T]):
    __slots__ = ("_items", "_waiter", "maxsize")

    def __init__(self, maxsize: int = 0) -> None:
        self.maxsize = maxsize
        self._items: list[T] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: T) -> None:
        """Raises `asyncio.QueueFull` when `maxsize` (if any) items are waiting."""
        if self._items is None:
            self._items = []
        elif 0 < self.maxsize <= len(self._items):
            raise asyncio.QueueFull
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> T:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.pop(0)
        if not self._items:
            self._items = None
        return item
