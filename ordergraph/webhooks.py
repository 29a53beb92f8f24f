"""The Stripe webhook endpoint: verify, apply once, acknowledge.

Stripe retries anything that is not 2xx, so a 2xx means "do not send this again": it is given
for events applied, repeated, or deliberately ignored (including ones that can never apply,
which are logged). A bad signature or body gets 400 and changes nothing. An event that cannot
apply yet, or whose processing failed on the way (database, Stripe), gets 5xx so that Stripe
delivers it again.
"""

from __future__ import annotations

import logging
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ordergraph import logs, metrics
from ordergraph.domain.payments import RetryLater
from ordergraph.domain.stripe_events import apply_stripe_event
from ordergraph.settings import Settings
from ordergraph.stripe_gateway import BadWebhook, parse_webhook
from ordergraph.stripe_objects import MalformedStripeObject

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024


async def _read_body(request: Request) -> bytes | None:
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


async def stripe_webhook(request: Request) -> Response:
    """Each delivery is counted by event type and outcome, and timed."""
    started = time.perf_counter()
    labels = {"type": "unverified", "outcome": "bad_request"}
    try:
        return await _handle(request, labels)
    finally:
        metrics.WEBHOOK_EVENTS.labels(labels["type"], labels["outcome"]).inc()
        metrics.WEBHOOK_SECONDS.labels(labels["type"]).observe(time.perf_counter() - started)


async def _handle(request: Request, labels: dict[str, str]) -> Response:
    settings: Settings = request.app.state.settings
    if not settings.stripe_webhook_secret:
        labels["outcome"] = "not_configured"
        log.error("a Stripe webhook arrived but STRIPE_WEBHOOK_SECRET is not set")
        return JSONResponse(
            {"error": "webhooks are not configured (STRIPE_WEBHOOK_SECRET)"}, status_code=503
        )
    body = await _read_body(request)
    if body is None:
        return JSONResponse({"error": "body too large"}, status_code=413)
    try:
        event = parse_webhook(
            body, request.headers.get("stripe-signature"), settings.stripe_webhook_secret
        )
    except BadWebhook as exc:
        log.warning("refused a Stripe webhook: %s", exc)
        return JSONResponse({"error": str(exc)}, status_code=400)
    labels["type"] = event["type"]
    labels["outcome"] = "failed"  # until it is known how the event ended
    logs.bind_stripe_event(event["id"])
    try:
        outcome = await apply_stripe_event(event, request.app.state.services)
    except MalformedStripeObject as exc:
        log.warning("refused Stripe event %s (%s): %s", event["id"], event["type"], exc)
        labels["outcome"] = "malformed"
        return JSONResponse({"error": f"malformed event: {exc}"}, status_code=400)
    except RetryLater as exc:
        log.info("stripe event %s (%s) must wait: %s", event["id"], event["type"], exc)
        labels["outcome"] = "retry_later"
        return JSONResponse({"error": "not yet applicable; retry later"}, status_code=503)
    except Exception:
        log.exception("stripe event %s (%s) failed; Stripe will retry", event["id"], event["type"])
        return JSONResponse({"error": "temporary failure; retry later"}, status_code=500)
    log.info("stripe event %s (%s): %s", event["id"], event["type"], outcome)
    labels["outcome"] = outcome.value
    return JSONResponse({"received": True, "outcome": outcome.value})
