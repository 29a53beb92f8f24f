"""A dict of values made once per key, emptied when it is full.

For what is computed per GraphQL document (validation errors, query plans): a process serves a
handful of documents, so entries are rarely dropped, and a flood of distinct texts costs at
most `limit` entries. Emptying the whole dict is cheaper per lookup than keeping an order of
use, and the next requests of the few real documents make their entries again.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    __slots__ = ("_entries", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: dict[K, V] = {}

    def get(self, key: K, make: Callable[[], V]) -> V:
        """The value for `key`, made by `make()` on a miss."""
        entries = self._entries
        try:
            return entries[key]
        except KeyError:
            if len(entries) >= self.limit:
                entries.clear()
            value = entries[key] = make()
            return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
