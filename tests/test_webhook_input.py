"""Every kind of bad input to `POST /webhooks/stripe`, one table: what the endpoint answers
and that nothing changed (the order, its history, recorded events, payment trackers, stock,
carts, mail, calls to Stripe).

Signature, size and body problems are refused with 400 (413 for a body over 256 KiB), so
Stripe shows them as failed; events that are genuine but not for us (an unknown type, no or a
foreign order in the metadata) are acknowledged with 200 so that Stripe stops sending them,
and security mismatches (owner, amount, currency, session) of a session that took no money
with 200 "rejected". (A mismatched session that did take money is refunded and recorded:
tests/domain/test_settlement.py.) The first row is the control: the same request, untouched,
confirms the order.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from ordergraph.models import Order
from tests.conftest import WEBHOOK_SECRET, Harness, Mailbox
from tests.utils.dbstate import snapshot
from tests.utils.helpers import checked_out_order, make_product

LIMIT = 256 * 1024
LEAKS = ("Traceback", 'File "', "asyncpg", "sqlite3", "IntegrityError", "SELECT ", "INSERT ")


@dataclass
class Pending:
    """A PENDING_PAYMENT order of alice (2 x 2500 USD) and its open Checkout Session."""

    app: Harness
    order_id: str
    session_id: str

    def paid_session(self, **change: Any) -> dict[str, Any]:
        """The order's session as Stripe would send it once paid, with `change` applied."""
        session = dict(self.app.emulator.sessions[self.session_id])
        session.update(status="complete", payment_status="paid", payment_intent="pi_test_1")
        session.update(change)
        return session

    def event(self, kind: str = "checkout.session.completed", **change: Any) -> dict[str, Any]:
        return self.app.emulator.build_event(kind, self.paid_session(**change))


def signature(payload: bytes, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """`Stripe-Signature` as Stripe computes it: HMAC-SHA256 of "{t}.{raw body}"."""
    stamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


@dataclass(frozen=True)
class Request:
    body: bytes | Callable[[], AsyncIterator[bytes]]
    headers: dict[str, str]


def pretty(event: Any) -> bytes:
    return json.dumps(event, indent=2).encode()  # as Stripe sends it


def signed(body: bytes, **sign: Any) -> Request:
    return Request(body, {"Stripe-Signature": signature(body, **sign)})


def signed_json(value: Any) -> Callable[[Pending], Request]:
    return lambda p: signed(json.dumps(value).encode())


def _tampered(p: Pending) -> Request:
    genuine = pretty(p.event())
    forged = json.loads(genuine)
    forged["data"]["object"]["amount_total"] = 1
    return Request(pretty(forged), {"Stripe-Signature": signature(genuine)})


def _reserialised(p: Pending) -> Request:
    """Same JSON, other bytes: only the raw body is verified, never a re-encoding of it."""
    event = p.event()
    return Request(
        json.dumps(event, separators=(",", ":")).encode(),
        {"Stripe-Signature": signature(pretty(event))},
    )


def _signature_of_another_event(p: Pending) -> Request:
    other = pretty(p.event("customer.created"))
    return Request(pretty(p.event()), {"Stripe-Signature": signature(other)})


def _header(value: str) -> Callable[[Pending], Request]:
    return lambda p: Request(pretty(p.event()), {"Stripe-Signature": value})


def _only_v0(p: Pending) -> Request:
    body = pretty(p.event())
    return Request(body, {"Stripe-Signature": signature(body).replace("v1=", "v0=")})


def _oversized(p: Pending) -> Request:
    event = p.event()
    event["data"]["object"]["metadata"]["padding"] = "x" * (LIMIT + 1024)
    return signed(pretty(event))


def _oversized_streamed(p: Pending) -> Request:
    """Chunked, with no Content-Length to refuse it by: the limit holds while reading."""
    event = p.event()
    event["data"]["object"]["metadata"]["padding"] = "x" * (LIMIT + 1024)
    body = pretty(event)
    header = signature(body)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 16 * 1024):
            yield body[start : start + 16 * 1024]

    return Request(chunks, {"Stripe-Signature": header})


def _event_with(
    kind: str = "checkout.session.completed", **change: Any
) -> Callable[[Pending], Request]:
    return lambda p: signed(pretty(p.event(kind, **change)))


def _metadata(payment_status: str = "paid", **metadata: Any) -> Callable[[Pending], Request]:
    def make(p: Pending) -> Request:
        session_metadata = {"order_id": p.order_id, "user_id": "alice", **metadata}
        return signed(pretty(p.event(metadata=session_metadata, payment_status=payment_status)))

    return make


def _without(key: str) -> Callable[[Pending], Request]:
    def make(p: Pending) -> Request:
        event = p.event()
        del event["data"]["object"][key]
        return signed(pretty(event))

    return make


def _object(obj: Any, kind: str = "checkout.session.completed") -> Callable[[Pending], Request]:
    def make(p: Pending) -> Request:
        event = p.event(kind)
        event["data"]["object"] = obj(p) if callable(obj) else obj
        return signed(pretty(event))

    return make


@dataclass(frozen=True)
class Case:
    request: Callable[[Pending], Request]
    status: int
    outcome: str | None = None  # the `outcome` of a 2xx answer


CASES: dict[str, Case] = {
    # Signature
    "tampered body": Case(_tampered, 400),
    "re-serialised body": Case(_reserialised, 400),
    "signature of another event": Case(_signature_of_another_event, 400),
    "stale timestamp (1 h)": Case(
        lambda p: signed(pretty(p.event()), timestamp=int(time.time()) - 3600), 400
    ),
    "stale timestamp (6 min)": Case(
        lambda p: signed(pretty(p.event()), timestamp=int(time.time()) - 360), 400
    ),
    "wrong secret": Case(lambda p: signed(pretty(p.event()), secret="whsec_wrong"), 400),
    "missing Stripe-Signature": Case(lambda p: Request(pretty(p.event()), {}), 400),
    "empty Stripe-Signature": Case(_header(""), 400),
    "garbage Stripe-Signature": Case(_header("garbage"), 400),
    "timestamp only": Case(_header(f"t={int(time.time())}"), 400),
    "non-numeric timestamp": Case(_header("t=now,v1=" + "0" * 64), 400),
    "v0 signature only": Case(_only_v0, 400),
    # Size
    "oversized body": Case(_oversized, 413),
    "oversized body, streamed": Case(_oversized_streamed, 413),
    # Body (correctly signed)
    "invalid JSON": Case(lambda p: signed(b'{"id": "evt_1", "type": '), 400),
    "empty body": Case(lambda p: signed(b""), 400),
    "not UTF-8": Case(lambda p: signed(b'{"id": "evt_\xff\xfe"}'), 400),
    "JSON array": Case(signed_json([]), 400),
    "JSON string": Case(signed_json("evt_1"), 400),
    "JSON null": Case(signed_json(None), 400),
    "id not a string": Case(signed_json({"id": 1}), 400),
    "no type": Case(signed_json({"id": "evt_1", "data": {"object": {}}}), 400),
    "no data": Case(signed_json({"id": "evt_1", "type": "checkout.session.completed"}), 400),
    "data.object not an object": Case(_object([]), 400),
    # Events whose object is not the shape its type promises: a bad body, not a reason for
    # Stripe to retry for days (a 5xx) nor a crash.
    "session without id": Case(_without("id"), 400),
    "session metadata not an object": Case(
        _object(lambda p: p.paid_session(metadata=["order_id"])), 400
    ),
    "session total_details not an object": Case(_event_with(total_details=[0, 0, 0]), 400),
    "session shipping rate not an id": Case(
        _event_with(
            shipping_cost={"amount_total": 500, "shipping_rate": 7},
            total_details={"amount_discount": 0, "amount_shipping": 500, "amount_tax": 0},
            amount_total=5500,
        ),
        400,
    ),
    "session discounts not a list": Case(_event_with(discounts={"promotion_code": "x"}), 400),
    "refund with metadata not an object": Case(
        _object({"id": "ch_1", "object": "charge", "metadata": ["x"]}, "charge.refunded"), 400
    ),
    # Genuine, but nothing for us: acknowledged, ignored
    "unknown event type": Case(_event_with("customer.created"), 200, "ignored"),
    "unknown type carrying the order's session": Case(
        _event_with("checkout.session.updated"), 200, "ignored"
    ),
    "missing metadata": Case(_event_with(metadata={}), 200, "ignored"),
    "metadata order_id not a UUID": Case(_metadata(order_id="order-1"), 200, "ignored"),
    "metadata order_id unknown": Case(
        _metadata(order_id="00000000-0000-4000-8000-000000000000"), 200, "ignored"
    ),
    "session not complete": Case(_event_with(status="open"), 200, "ignored"),
    # Genuine, but not this order's payment, and no money taken (a delayed method still
    # settling): acknowledged, refused, logged
    "metadata user_id of another shopper": Case(
        _metadata(user_id="mallory", payment_status="unpaid"), 200, "rejected"
    ),
    "amount short": Case(_event_with(amount_total=1, payment_status="unpaid"), 200, "rejected"),
    "subtotal not the order's": Case(
        _event_with(amount_subtotal=4000, amount_total=4000, payment_status="unpaid"),
        200,
        "rejected",
    ),
    "figures that do not add up": Case(
        _event_with(
            amount_total=4000,
            total_details={"amount_discount": 500, "amount_shipping": 0, "amount_tax": 0},
            payment_status="unpaid",
        ),
        200,
        "rejected",
    ),
    "other currency": Case(_event_with(currency="eur", payment_status="unpaid"), 200, "rejected"),
    "another session": Case(
        _event_with(id="cs_test_forged", payment_status="unpaid"), 200, "rejected"
    ),
}


async def _pending(app: Harness) -> Pending:
    tee = await make_product("TEE", price=2500, stock=10)
    order_id = (await checked_out_order(app, app.token("alice"), tee, 2))["orderId"]
    session_id = (await Order.get(id=order_id)).stripe_checkout_session_id
    assert session_id
    return Pending(app, order_id, session_id)


async def _post(app: Harness, request: Request) -> tuple[int, str]:
    body = request.body() if callable(request.body) else request.body
    response = await app.http.post(
        f"{app.url}/webhooks/stripe",
        content=body,
        headers={"Content-Type": "application/json; charset=utf-8", **request.headers},
    )
    return response.status_code, response.text


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
async def test_bad_webhook_input_changes_nothing(
    app: Harness, mailbox: Mailbox, case: Case
) -> None:
    pending = await _pending(app)
    request = case.request(pending)
    before = await snapshot(app.emulator)

    status, text = await _post(app, request)

    assert status == case.status, text
    assert not any(leak in text for leak in LEAKS), text
    if case.outcome is not None:
        assert json.loads(text) == {"received": True, "outcome": case.outcome}
    await app.emulator.drain()
    assert await snapshot(app.emulator) == before
    assert await mailbox.wait_for(1, timeout=0.2) == []


async def test_the_control_request_confirms_the_order(app: Harness, mailbox: Mailbox) -> None:
    """The requests above differ from this one in one respect each: this one is applied."""
    pending = await _pending(app)
    before = await snapshot(app.emulator)

    status, text = await _post(app, signed(pretty(pending.event())))

    assert status == 200, text
    assert json.loads(text) == {"received": True, "outcome": "applied"}
    order = await Order.get(id=pending.order_id)
    assert (order.status.value, order.payment_status.value) == ("payment_confirmed", "paid")
    after = await snapshot(app.emulator)
    assert after["orders"] != before["orders"]
    assert len(after["stripe_events"]) == len(before["stripe_events"]) + 1
    assert len(after["trackers"]) == 1
    assert len(await mailbox.wait_for(1)) == 1


async def test_a_body_just_under_the_limit_is_read(app: Harness) -> None:
    """The size limit refuses what is over it, not what is near it."""
    pending = await _pending(app)
    event = pending.event("customer.created")
    event["data"]["object"]["metadata"]["padding"] = ""
    room = LIMIT - len(pretty(event))
    event["data"]["object"]["metadata"]["padding"] = "x" * room
    body = pretty(event)
    assert len(body) == LIMIT

    status, text = await _post(app, signed(body))

    assert status == 200, text
    assert json.loads(text)["outcome"] == "ignored"
