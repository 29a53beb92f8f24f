"""`BoundedCache`: a value made once per key, and never more than `limit` entries."""

from __future__ import annotations

from ordergraph.bounded_cache import BoundedCache


def test_a_value_is_made_once_per_key_and_the_cache_empties_when_full() -> None:
    made: list[str] = []

    def make(key: str) -> str:
        made.append(key)
        return key.upper()

    cache = BoundedCache[str, str](3)
    assert [cache.get(k, lambda k=k: make(k)) for k in "abab"] == ["A", "B", "A", "B"]
    assert made == ["a", "b"]
    assert cache.get("c", lambda: make("c")) == "C"
    assert len(cache) == 3
    # Full: the next new key empties it first, so the old keys are made again when asked for.
    assert cache.get("d", lambda: make("d")) == "D"
    assert len(cache) == 1
    assert cache.get("a", lambda: make("a")) == "A"
    assert made == ["a", "b", "c", "d", "a"]
    cache.clear()
    assert len(cache) == 0
