"""Events and webhooks: build an event snapshot, sign it as Stripe does, POST it.

Every resource that changes an object in a way Stripe reports (a completed
session, a refund, a dispute) comes here; the signature is made by the real
``stripe`` SDK so that a receiver verifying with ``stripe.Webhook`` sees
exactly what Stripe would send.
"""

from __future__ import annotations

import copy
import json
import logging

import httpx
import stripe

from ordergraph.stripe_emulator.state import Delivery, EmulatorState, _new_id, _now
from ordergraph.stripe_emulator.types import JsonDict

# The name the emulator logged under when it was a single module.
log = logging.getLogger("ordergraph.stripe_emulator")


def build_event(
    state: EmulatorState,
    event_type: str,
    obj: JsonDict,
    *,
    previous_attributes: JsonDict | None = None,
    request: JsonDict | None = None,
) -> JsonDict:
    """A snapshot event as Stripe sends it: the object is copied as it is now.

    ``request`` is the API request that caused it (null id for customer actions).
    The event is kept in ``events`` and retrievable at ``GET /v1/events/{id}``.
    """
    data: JsonDict = {"object": copy.deepcopy(obj)}
    if previous_attributes is not None:
        data["previous_attributes"] = copy.deepcopy(previous_attributes)
    event: JsonDict = {
        "id": _new_id("evt_1"),
        "object": "event",
        "api_version": state.api_version,
        "created": _now(),
        "data": data,
        "livemode": False,
        "pending_webhooks": 1 if state.webhook_url else 0,
        "request": request or {"id": None, "idempotency_key": None},
        "type": event_type,
    }
    state.events.append(event)
    return event


def signed_headers(
    state: EmulatorState, payload: str, *, secret: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    """The headers Stripe puts on a delivery, with ``Stripe-Signature: t=...,v1=...``.

    ``secret``/``timestamp`` override the configured secret and now, to forge
    bad or stale signatures.
    """
    key = secret if secret is not None else state.webhook_secret
    if not key:
        raise ValueError("no webhook secret configured")
    header = stripe.WebhookSignature.generate_signature_header(payload, key, timestamp=timestamp)
    return {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        "Cache-Control": "no-cache",
        "Stripe-Signature": header,
    }


async def deliver(
    state: EmulatorState,
    event: JsonDict | str,
    *,
    secret: str | None = None,
    timestamp: int | None = None,
) -> Delivery:
    """POST an event to ``webhook_url``, signed; a string is sent byte for byte.

    Like Stripe, the body is pretty-printed JSON, so a receiver that verifies a
    re-serialised body instead of the raw bytes fails. Never raises for the
    endpoint's answer or a connection error: they are in the returned Delivery
    (status 0 when nothing answered) and in ``deliveries``.
    """
    if isinstance(event, str):
        payload = event
        try:
            parsed = json.loads(event)
        except ValueError:
            parsed = {}
        if not isinstance(parsed, dict):
            parsed = {}
    else:
        payload, parsed = json.dumps(event, indent=2), event
    if not state.webhook_url:
        delivery = Delivery(0, "no webhook_url configured", parsed)
    else:
        headers = signed_headers(state, payload, secret=secret, timestamp=timestamp)
        try:
            async with httpx.AsyncClient(timeout=state.webhook_timeout) as http:
                answer = await http.post(
                    state.webhook_url, content=payload.encode("utf-8"), headers=headers
                )
            delivery = Delivery(answer.status_code, answer.text, parsed)
        except httpx.HTTPError as exc:
            delivery = Delivery(0, f"{type(exc).__name__}: {exc}", parsed)
    state.deliveries.append(delivery)
    if delivery.status_code == 0 or delivery.status_code >= 300:
        log.info("webhook %s -> %s %s", parsed.get("type"), delivery.status_code, delivery.body)
    return delivery
