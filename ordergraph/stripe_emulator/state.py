"""The emulator's in-memory world: its configuration, its tables, and the records kept.

Every resource module reads and writes one ``EmulatorState``; ``StripeEmulator``
exposes its tables (``sessions``, ``refunds``, ``requests``...) as its own
attributes. Also here: the small records passed between modules (an API call,
its result, a kept idempotent answer, a webhook delivery) and the id and time
helpers every object needs.
"""

from __future__ import annotations

import asyncio
import copy
import secrets
import string
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ordergraph.stripe_emulator.errors import StripeApiError, _invalid
from ordergraph.stripe_emulator.types import After, JsonDict

DEFAULT_API_VERSION = "2026-10-28.endive"
FAULT_MODES = ("error500", "delay", "drop")
ADDRESS_KEYS = ("city", "country", "line1", "line2", "postal_code", "state")
# Automatic tax, per country of the customer, in basis points (1900 = 19 %).
DEFAULT_TAX_RATES: dict[str, int] = {"US": 0, "DE": 1900, "FR": 2000, "GB": 2000}


# --------------------------------------------------------------------------- records


@dataclass
class Delivery:
    """What happened to one webhook delivery: the endpoint's answer and the event sent.

    ``status_code`` is 0 when nothing answered (no webhook URL, connection error).
    """

    status_code: int
    body: str
    event: JsonDict


@dataclass
class RecordedRequest:
    """One API request as the emulator received it, so tests can assert on the wire.

    ``params`` is the decoded form (nested dicts and lists, leaf values are the
    strings that were sent); ``headers`` has lower-case names.
    """

    method: str
    path: str
    params: JsonDict
    idempotency_key: str | None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Call:
    """One API call after decoding: what handlers need to know."""

    method: str
    path: str
    params: JsonDict
    api_key: str
    idempotency_key: str | None
    request_id: str


@dataclass
class _Result:
    status: int
    body: JsonDict
    after: list[After] = field(default_factory=list)


@dataclass
class _Stored:
    method: str
    path: str
    params: JsonDict
    status: int
    content: bytes
    request_id: str


# An API handler: ``(state, call, *path_groups) -> _Result``.
Handler = Callable[..., Awaitable[_Result]]
# A resource's route: HTTP method, path pattern (matched whole), handler.
ApiRoute = tuple[str, str, Handler]


# --------------------------------------------------------------------------- helpers

_ALPHABET = string.ascii_letters + string.digits


def _rand(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def _new_id(prefix: str, n: int = 24) -> str:
    return f"{prefix}{_rand(n)}"


def _now() -> int:
    return int(time.time())


def _address(raw: Any) -> JsonDict:
    src = raw if isinstance(raw, dict) else {}
    return {k: src.get(k) for k in ADDRESS_KEYS}


def _mask_key(key: str) -> str:
    return f"{key[:8]}****{key[-4:]}" if len(key) > 12 else "****"


def _redact(headers: dict[str, str]) -> dict[str, str]:
    out = dict(headers)
    if "authorization" in out:
        scheme, _, key = out["authorization"].partition(" ")
        out["authorization"] = f"{scheme} {_mask_key(key)}"
    return out


# ----------------------------------------------------------------------------- state


class EmulatorState:
    """Configuration, tables and background deliveries of one emulated Stripe account.

    ``clear`` makes new, empty tables (the configuration is kept); ``reset`` also
    cancels the pending deliveries and starts a new generation, so a delayed
    request that began before the reset knows its world was forgotten.
    """

    requests: list[RecordedRequest]
    sessions: dict[str, JsonDict]
    line_items: dict[str, list[JsonDict]]
    payment_intents: dict[str, JsonDict]
    charges: dict[str, JsonDict]
    refunds: dict[str, JsonDict]
    disputes: dict[str, JsonDict]
    events: list[JsonDict]
    deliveries: list[Delivery]
    faults: deque[tuple[str, float]]
    idempotency: dict[tuple[str, str], _Stored]
    in_flight: set[tuple[str, str]]
    # What each session's payment_intent_data asked for, applied when a PI is made.
    pi_data: dict[str, JsonDict]
    coupons: dict[str, JsonDict]
    promotion_codes: dict[str, JsonDict]
    shipping_rates: dict[str, JsonDict]
    # Each session's line items' product tax codes (None where not given), for automatic tax.
    tax_codes: dict[str, list[str | None]]

    def __init__(
        self, *, webhook_url: str | None, webhook_secret: str | None, api_version: str
    ) -> None:
        self.webhook_url: str | None = webhook_url
        self.webhook_secret: str | None = webhook_secret
        self.api_version = api_version
        # Stripe measures expires_at from its own clock at creation; this allows for
        # the latency between the caller computing it and the request arriving.
        self.expires_at_leeway = 5
        # Deliver the events Stripe sends after API calls (refund, expire).
        self.send_api_events = True
        self.webhook_timeout = 10.0
        # Configuration like the webhook: kept by reset().
        self.tax_rates: dict[str, int] = dict(DEFAULT_TAX_RATES)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.generation = 0
        self.clear()

    def clear(self) -> None:
        self.requests = []
        self.sessions = {}
        self.line_items = {}
        self.payment_intents = {}
        self.charges = {}
        self.refunds = {}
        self.disputes = {}
        self.events = []
        self.deliveries = []
        self.faults = deque()
        self.idempotency = {}
        self.in_flight = set()
        self.pi_data = {}
        self.coupons = {}
        self.promotion_codes = {}
        self.shipping_rates = {}
        self.tax_codes = {}

    def reset(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()
        self.generation += 1
        self.clear()

    def set_tax_rates(self, rates: dict[str, int]) -> None:
        """Replace the automatic-tax table: two-letter country code to basis points."""
        if not isinstance(rates, dict):
            raise TypeError("tax rates must be a mapping of country code to basis points")
        table: dict[str, int] = {}
        for country, bp in rates.items():
            if not isinstance(country, str) or len(country) != 2 or not country.isalpha():
                raise ValueError(f"tax rates: {country!r} is not a two-letter country code")
            if not isinstance(bp, int) or isinstance(bp, bool) or not 0 <= bp <= 10000:
                raise ValueError(f"tax rates: {country} must be basis points from 0 to 10000")
            table[country.upper()] = bp
        self.tax_rates = table

    def inject_fault(self, mode: str, count: int = 1, *, delay: float = 0.0) -> None:
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; use one of {FAULT_MODES}")
        if count < 0 or delay < 0:
            raise ValueError("count and delay must not be negative")
        self.faults.extend([(mode, delay)] * count)

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    def schedule(self, factory: After) -> None:
        task = asyncio.get_running_loop().create_task(factory())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------------ object lookup

    def get(self, table: dict[str, JsonDict], kind: str, object_id: str, param: str) -> JsonDict:
        obj = table.get(object_id)
        if obj is None:
            raise StripeApiError(
                404,
                "invalid_request_error",
                f"No such {kind}: '{object_id}'",
                code="resource_missing",
                param=param,
            )
        return obj

    def expand(self, obj: JsonDict, expand: Any) -> JsonDict:
        """Apply ``expand[]``: replace ids by objects; ``line_items`` on sessions."""
        if expand in (None, ""):
            return copy.deepcopy(obj)
        paths = expand if isinstance(expand, list) else [expand]
        out = copy.deepcopy(obj)
        tables = {
            "payment_intent": self.payment_intents,
            "latest_charge": self.charges,
            "charge": self.charges,
        }
        for path in paths:
            if path == "line_items" and obj.get("object") == "checkout.session":
                out["line_items"] = self.line_items_list(obj["id"])
            elif path in tables and path in obj:
                value = obj[path]
                out[path] = copy.deepcopy(tables[path].get(value, value)) if value else None
            else:
                raise _invalid(f"This property cannot be expanded ({path}).", "expand")
        return out

    def line_items_list(self, session_id: str) -> JsonDict:
        return {
            "object": "list",
            "data": copy.deepcopy(self.line_items.get(session_id, [])),
            "has_more": False,
            "url": f"/v1/checkout/sessions/{session_id}/line_items",
        }
