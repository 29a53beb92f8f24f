"""Stripe's list endpoints, shared: ``limit``, cursors, ``created`` ranges, ``expand[]=data.x``.

Every list in Stripe pages the same way (newest first, ``limit`` 1 to 100,
default 10, ``starting_after`` / ``ending_before`` cursors naming an object of
the list, ``has_more``); the resources only say which objects match their own
filters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ordergraph.stripe_emulator.errors import _invalid
from ordergraph.stripe_emulator.params import _check_unknown, _int_param
from ordergraph.stripe_emulator.state import EmulatorState
from ordergraph.stripe_emulator.types import JsonDict

CREATED_FILTERS = frozenset({"gt", "gte", "lt", "lte"})
# An object as answered, with ``expand`` applied (``None``: nothing expanded).
Expander = Callable[[JsonDict, Any], JsonDict]


def _created_filter(raw: object) -> dict[str, int]:
    """``created`` is a timestamp or a range (``created[gte]=...``), as on every Stripe list."""
    if not isinstance(raw, dict):
        return {"eq": _int_param(raw, "created", minimum=0)}
    _check_unknown(raw, CREATED_FILTERS, "created")
    return {op: _int_param(value, f"created[{op}]", minimum=0) for op, value in raw.items()}


def _in_range(created: int, bounds: dict[str, int]) -> bool:
    checks = {
        "eq": created == bounds.get("eq", created),
        "gt": created > bounds.get("gt", created - 1),
        "gte": created >= bounds.get("gte", created),
        "lt": created < bounds.get("lt", created + 1),
        "lte": created <= bounds.get("lte", created),
    }
    return all(checks.values())


def _item_expansions(raw: object) -> list[str] | None:
    """On a list, ``expand[]=data.payment_intent`` expands each item's ``payment_intent``."""
    if raw in (None, ""):
        return None
    expansions: list[str] = []
    for path in raw if isinstance(raw, list) else [raw]:
        if not isinstance(path, str) or not path.startswith("data."):
            raise _invalid(f"This property cannot be expanded ({path}).", "expand")
        expansions.append(path.removeprefix("data."))
    return expansions


def list_page(
    state: EmulatorState,
    p: JsonDict,
    table: dict[str, JsonDict],
    kind: str,
    url: str,
    matches: Callable[[JsonDict], bool] = lambda _: True,
    expander: Expander | None = None,
) -> JsonDict:
    """One page of ``table`` (insertion order is creation order), newest first."""
    limit = _int_param(p.get("limit", 10), "limit", minimum=1)
    if limit > 100:
        raise _invalid("This value must be less than or equal to 100.", "limit")
    if "starting_after" in p and "ending_before" in p:
        raise _invalid(
            "You may only specify one of these parameters: ending_before, starting_after."
        )
    bounds = _created_filter(p["created"]) if "created" in p else {}
    expand = _item_expansions(p.get("expand"))
    newest_first = list(reversed(table.values()))
    matching = [o for o in newest_first if _in_range(o["created"], bounds) and matches(o)]
    if "starting_after" in p:
        cursor = state.get(table, kind, str(p["starting_after"]), "starting_after")
        at = matching.index(cursor) + 1 if cursor in matching else len(matching)
        page = matching[at : at + limit]
        has_more = len(matching) > at + limit
    elif "ending_before" in p:
        cursor = state.get(table, kind, str(p["ending_before"]), "ending_before")
        at = matching.index(cursor) if cursor in matching else 0
        page = matching[max(0, at - limit) : at]
        has_more = at - limit > 0
    else:
        page, has_more = matching[:limit], len(matching) > limit
    expand_one = expander or state.expand
    return {
        "object": "list",
        "data": [expand_one(o, expand) for o in page],
        "has_more": has_more,
        "url": url,
    }
