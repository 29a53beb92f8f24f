"""`Ordergraph-Signature`: Stripe's webhook signature scheme with the endpoint's secret.

`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: a receiver that verifies Stripe's
webhooks verifies ours the same way (and refuses old timestamps to stop replays).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

HEADER = "Ordergraph-Signature"
SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, body: str, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256)
    return mac.hexdigest()


def signature_header(secret: str, body: str, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={signature(secret, body, t)}"


def verify(secret: str, body: str, header: str, *, tolerance: int = 300) -> bool:
    """What a receiver does: some v1 matches, and the timestamp is recent."""
    parts = [part.split("=", 1) for part in header.split(",") if "=" in part]
    timestamps = [value for key, value in parts if key == "t"]
    if len(timestamps) != 1 or not timestamps[0].isdigit():
        return False
    t = int(timestamps[0])
    if abs(time.time() - t) > tolerance:
        return False
    expected = signature(secret, body, t)
    return any(key == "v1" and hmac.compare_digest(value, expected) for key, value in parts)
