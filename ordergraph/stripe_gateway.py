"""Everything ordergraph says to Stripe, in one place, through the official SDK; what Stripe
answers is read into the records of `stripe_objects`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from functools import partial
from typing import Any

import aiohttp
import stripe

from ordergraph import metrics
from ordergraph.settings import Settings
from ordergraph.stripe_objects import (
    CheckoutSession,
    CheckoutSessionRequest,
    PaymentRecord,
    Refund,
    payment_record_from_stripe,
    refund_from_stripe,
    session_from_stripe,
    typed_value,
    value_of,
)
from ordergraph.stripe_offers import OfferCalls, offer_params, product_data

log = logging.getLogger(__name__)

WEBHOOK_TOLERANCE_SECONDS = 300
# Waits between asks while another request holds the idempotency key (see `_call`).
IN_USE_FIRST_PAUSE = 0.05
IN_USE_MAX_PAUSE = 1.0


class PaymentProviderError(Exception):
    """Stripe could not be asked, or said no: the caller must undo what it prepared.

    `uncertain` is true when the request may still have been carried out at Stripe (a timeout,
    a dropped connection, a server error), as opposed to a refusal. `missing` is true when
    Stripe answered that the object does not exist (`resource_missing`): a definite answer.
    """

    def __init__(self, message: str, *, uncertain: bool = False, missing: bool = False) -> None:
        super().__init__(message)
        self.uncertain = uncertain
        self.missing = missing


class BadWebhook(Exception):
    """A webhook whose signature or body cannot be trusted."""


def parse_webhook(payload: bytes, signature: str | None, secret: str) -> dict[str, Any]:
    """Verify Stripe's signature on the raw body, then (and only then) parse it."""
    if not signature:
        raise BadWebhook("missing Stripe-Signature header")
    try:
        stripe.WebhookSignature.verify_header(
            payload.decode("utf-8"), signature, secret, WEBHOOK_TOLERANCE_SECONDS
        )
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as exc:
        raise BadWebhook(f"signature verification failed: {exc}") from None
    try:
        event = json.loads(payload)
    except ValueError:
        raise BadWebhook("body is not JSON") from None
    if not isinstance(event, dict) or not isinstance(event.get("id"), str):
        raise BadWebhook("body is not a Stripe event")
    if not isinstance(event.get("type"), str) or not isinstance(
        value_of(event.get("data"), "object"), Mapping
    ):
        raise BadWebhook("body is not a Stripe event")
    return event


class StripeGateway(OfferCalls):
    """A StripeClient bound to this process's event loop; create it in the app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: stripe.StripeClient | None = None
        self._background: set[asyncio.Task[None]] = set()
        # aiohttp rather than the SDK's default httpx: with its C parser and no anyio layers,
        # a call costs the worker about a millisecond less CPU, a fifth of a checkout's.
        self._http = stripe.AIOHTTPClient(
            timeout=aiohttp.ClientTimeout(total=settings.stripe_timeout_seconds)
        )
        if settings.stripe_secret_key:
            base = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
            self._client = stripe.StripeClient(
                settings.stripe_secret_key,
                http_client=self._http,
                max_network_retries=settings.stripe_max_retries,
                base_addresses=base,  # type: ignore[arg-type]
            )
        # The SDK bounds each attempt; this bounds the whole call with its retries.
        self._deadline = settings.stripe_timeout_seconds * (settings.stripe_max_retries + 1) + 2

    @property
    def client(self) -> stripe.StripeClient:
        if self._client is None:
            raise PaymentProviderError("Payments are not configured: STRIPE_SECRET_KEY is not set")
        return self._client

    async def _call(self, what: str, make: Callable[[], Awaitable[Any]]) -> Any:
        """`make()`, within the deadline. A POST whose idempotency key a request of ours is
        still using (Stripe's 409 `idempotency_key_in_use`: a double click, a mutation sent
        again while the first waits for Stripe) is asked again, as Stripe advises, until the
        first one's answer is kept and replayed to it: both callers get the same answer."""
        try:
            with metrics.stripe_call(what.replace(" ", "_")):
                async with asyncio.timeout(self._deadline):
                    pause = IN_USE_FIRST_PAUSE
                    while True:
                        try:
                            return await make()
                        except stripe.APIError as exc:
                            if exc.http_status != 409:  # Conflict: the key is in use
                                raise
                        await asyncio.sleep(pause)
                        pause = min(2 * pause, IN_USE_MAX_PAUSE)
        except stripe.StripeError as exc:
            log.warning("Stripe %s failed: %s", what, exc)
            uncertain = isinstance(exc, stripe.APIConnectionError | stripe.APIError)
            missing = isinstance(exc, stripe.InvalidRequestError) and exc.code == "resource_missing"
            raise PaymentProviderError(
                f"Stripe {what} failed", uncertain=uncertain, missing=missing
            ) from exc
        except TimeoutError as exc:
            log.warning("Stripe %s timed out", what)
            raise PaymentProviderError(f"Stripe {what} timed out", uncertain=True) from exc

    async def create_checkout_session(self, request: CheckoutSessionRequest) -> CheckoutSession:
        params: dict[str, Any] = {
            "mode": "payment",
            "ui_mode": "embedded_page",
            "line_items": [
                {
                    "quantity": line.quantity,
                    "price_data": {
                        "currency": request.currency.lower(),
                        "unit_amount": line.unit_amount,
                        "product_data": product_data(line.name, line.tax_code),
                    },
                }
                for line in request.lines
            ],
            "metadata": {"order_id": request.order_id, "user_id": request.user_id},
            "payment_intent_data": {
                "metadata": {"order_id": request.order_id, "user_id": request.user_id}
            },
            "client_reference_id": request.order_id,
            "return_url": request.return_url,
            "expires_at": int(request.expires_at.timestamp()),
            "shipping_address_collection": {
                "allowed_countries": list(self.settings.shipping_countries)
            },
        }
        if request.customer_email:
            params["customer_email"] = request.customer_email
        params |= offer_params(
            request.currency,
            request.shipping_options,
            request.allow_promotion_codes,
            request.automatic_tax,
        )
        # The SDK's raw path (same request, same errors): every checkout makes one, and
        # turning the answer into a StripeObject cost more CPU than reading the few fields
        # `session_from_stripe` takes from its JSON.
        response = await self._call(
            "checkout session create",
            lambda: self.client.raw_request_async(
                "post",
                "/v1/checkout/sessions",
                idempotency_key=f"checkout-session-{request.order_id}",
                **params,
            ),
        )
        return session_from_stripe(response.data)

    def expire_late_session(self, request: CheckoutSessionRequest) -> None:
        """After a create whose outcome is unknown, make sure no session is left payable.

        Repeating the create with the same idempotency key answers with the session Stripe
        made, if it made one (or makes it now); that session is then expired. Runs in the
        background with backoff, since Stripe was just failing.
        """
        task = asyncio.create_task(self._expire_late_session(request))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _expire_late_session(self, request: CheckoutSessionRequest) -> None:
        for attempt in range(8):
            try:
                session = await self.create_checkout_session(request)
                if session.status == "open":
                    await self.expire_checkout_session(session.id)
                log.info("expired late session %s of order %s", session.id, request.order_id)
                return
            except PaymentProviderError:
                await asyncio.sleep(min(2**attempt, 60))
        log.error("could not expire a late session of order %s", request.order_id)

    async def retrieve_checkout_session(self, session_id: str) -> CheckoutSession:
        session = await self._call(
            "checkout session retrieve",
            lambda: self.client.v1.checkout.sessions.retrieve_async(session_id),
        )
        return session_from_stripe(session)

    async def described(self, session: CheckoutSession) -> CheckoutSession:
        """The session with its shipping rate's display name and its promotion code's code,
        asked of Stripe when the session holds only their ids (webhooks never expand them)."""
        changes: dict[str, Any] = {}
        if session.shipping_rate_id and session.shipping_rate_name is None:
            rate = await self._call(
                "shipping rate retrieve",
                partial(self.client.v1.shipping_rates.retrieve_async, session.shipping_rate_id),
            )
            changes["shipping_rate_name"] = typed_value(rate.to_dict(), "display_name", str) or ""
        if session.promotion_code_id and session.promotion_code is None:
            promo = await self._call(
                "promotion code retrieve",
                partial(self.client.v1.promotion_codes.retrieve_async, session.promotion_code_id),
            )
            changes["promotion_code"] = typed_value(promo.to_dict(), "code", str)
        return dataclasses.replace(session, **changes) if changes else session

    async def list_checkout_sessions(self, created_since: datetime) -> list[CheckoutSession]:
        """Every Checkout Session created since then, newest first: page by page, each page
        a call of its own (with its own deadline)."""
        params: dict[str, Any] = {"created": {"gte": int(created_since.timestamp())}, "limit": 100}
        sessions: list[CheckoutSession] = []
        while True:
            page = await self._call(
                "checkout session list",
                partial(self.client.v1.checkout.sessions.list_async, params=params),  # type: ignore[arg-type]
            )
            sessions += [session_from_stripe(s) for s in page.data]
            if not page.has_more or not page.data:
                return sessions
            params = {**params, "starting_after": page.data[-1].id}

    async def retrieve_payment_intent(self, payment_intent_id: str) -> PaymentRecord:
        """Its `status` (`succeeded`, `processing`, `requires_payment_method` when the last
        attempt failed…) and the order its metadata names."""
        intent = await self._call(
            "payment intent retrieve",
            lambda: self.client.v1.payment_intents.retrieve_async(payment_intent_id),
        )
        return payment_record_from_stripe(intent)

    async def expire_checkout_session(self, session_id: str) -> CheckoutSession:
        session = await self._call(
            "checkout session expire",
            lambda: self.client.v1.checkout.sessions.expire_async(session_id),
        )
        return session_from_stripe(session)

    async def create_refund(
        self,
        payment_intent_id: str,
        amount: int,
        *,
        idempotency_key: str,
        reason: str,
        request_key: str | None = None,
    ) -> Refund:
        """`request_key` (in the refund's metadata) lets `find_refund` tell it again later."""
        metadata = {"reason": reason[:500]}
        if request_key is not None:
            metadata["order_refund"] = request_key
        refund = await self._call(
            "refund create",
            lambda: self.client.v1.refunds.create_async(
                params={
                    "payment_intent": payment_intent_id,
                    "amount": amount,
                    "metadata": metadata,
                    "expand": ["charge"],
                },
                options={"idempotency_key": idempotency_key},
            ),
        )
        return refund_from_stripe(refund)

    async def find_refund(self, payment_intent_id: str, request_key: str) -> Refund | None:
        """The refund of the payment made for `request_key`, if Stripe has one."""
        page = await self._call(
            "refund list",
            lambda: self.client.v1.refunds.list_async(
                params={
                    "payment_intent": payment_intent_id,
                    "limit": 100,
                    "expand": ["data.charge"],
                }
            ),
        )
        for refund in page.data:
            if (refund.to_dict().get("metadata") or {}).get("order_refund") == request_key:
                return refund_from_stripe(refund)
        return None

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._http.close_async()
