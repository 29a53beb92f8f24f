"""Ids that arrive from outside (a client's argument, Stripe's metadata): a UUID or nothing."""

from __future__ import annotations

import uuid


def parse_uuid(raw: object) -> uuid.UUID | None:
    """The UUID `raw` spells, or None when it spells none (answered as absent, never a 500)."""
    if not raw:
        return None
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        return None
