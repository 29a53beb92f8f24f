"""Everything ordergraph says to Stripe and reads from it, in one place.

The rest of the service deals in `CheckoutSession`, a plain record of the few fields it needs,
so that a Stripe API change (such as the shipping address moving into
`collected_information`) is absorbed here and nowhere else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import stripe

from ordergraph import metrics
from ordergraph.settings import Settings
from ordergraph.stripe_offers import OfferCalls, ShippingOption, offer_params, product_data

log = logging.getLogger(__name__)

WEBHOOK_TOLERANCE_SECONDS = 300


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


class MalformedStripeObject(ValueError):
    """A Stripe object without the shape Stripe documents: retrying cannot help."""


@dataclass(frozen=True)
class SessionLine:
    name: str
    unit_amount: int
    quantity: int
    tax_code: str | None = None


@dataclass(frozen=True)
class CheckoutSessionRequest:
    order_id: str
    user_id: str
    currency: str
    lines: list[SessionLine]
    return_url: str
    expires_at: datetime
    customer_email: str | None = None
    # What the order was offered at checkout (stored on it: see domain/checkout.session_request).
    shipping_options: tuple[ShippingOption, ...] = ()
    allow_promotion_codes: bool = False
    automatic_tax: bool = False


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    status: str | None
    payment_status: str | None
    amount_total: int | None
    currency: str | None
    client_secret: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    payment_intent_id: str | None = None
    shipping_address: dict[str, Any] | None = None
    customer_email: str | None = None
    created: int | None = None
    # Stripe's figures (None when the payload predates them): `total_details` and the chosen
    # `shipping_cost`, whose rate and promotion code are ids until `StripeGateway.described`
    # (or an expanded object) gives their display name and code.
    amount_subtotal: int | None = None
    amount_discount: int | None = None
    amount_shipping: int | None = None
    amount_tax: int | None = None
    shipping_rate_id: str | None = None
    shipping_rate_name: str | None = None
    promotion_code_id: str | None = None
    promotion_code: str | None = None


@dataclass(frozen=True)
class Refund:
    id: str
    amount: int
    status: str


def _get(obj: Mapping[str, Any] | None, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else None


def shipping_address_of(session: Mapping[str, Any]) -> dict[str, Any] | None:
    """The shipping address where the current API puts it, else where older versions did."""
    details = _get(_get(session, "collected_information"), "shipping_details") or _get(
        session, "shipping_details"
    )
    address = _get(details, "address")
    if not isinstance(address, Mapping):
        return None
    return {
        "name": _get(details, "name"),
        "line1": address.get("line1"),
        "line2": address.get("line2"),
        "city": address.get("city"),
        "state": address.get("state"),
        "postal_code": address.get("postal_code"),
        "country": address.get("country"),
    }


def _typed(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        raise MalformedStripeObject(f"{key} is {type(value).__name__}")
    return value


def _id_or_object(data: Mapping[str, Any], key: str, name: str) -> tuple[str | None, str | None]:
    """An id, or an expanded object: its id and the string it holds under `name`."""
    value = _typed(data, key, (str, Mapping))
    if isinstance(value, Mapping):
        return _typed(value, "id", str), _typed(value, name, str)
    return value, None


def _money_of(data: Mapping[str, Any]) -> dict[str, Any]:
    """The session's money: `amount_subtotal`, `total_details`, `shipping_cost`, `discounts`."""
    details = _typed(data, "total_details", Mapping) or {}
    shipping = _typed(data, "shipping_cost", Mapping) or {}
    rate_id, rate_name = _id_or_object(shipping, "shipping_rate", "display_name")
    promo_id = promo_code = None
    for discount in _typed(data, "discounts", list) or []:
        if not isinstance(discount, Mapping):
            raise MalformedStripeObject("a discount is not an object")
        promo_id, promo_code = _id_or_object(discount, "promotion_code", "code")
        if promo_id:
            break
    return {
        "amount_subtotal": _typed(data, "amount_subtotal", int),
        "amount_discount": _typed(details, "amount_discount", int),
        "amount_shipping": _typed(details, "amount_shipping", int),
        "amount_tax": _typed(details, "amount_tax", int),
        "shipping_rate_id": rate_id,
        "shipping_rate_name": rate_name,
        "promotion_code_id": promo_id,
        "promotion_code": promo_code,
    }


def session_from_stripe(obj: Mapping[str, Any] | stripe.StripeObject) -> CheckoutSession:
    data = obj.to_dict() if isinstance(obj, stripe.StripeObject) else obj
    if not isinstance(data, Mapping) or not isinstance(data.get("id"), str):
        raise MalformedStripeObject("a checkout session needs a string id")
    payment_intent = _typed(data, "payment_intent", (str, Mapping))
    if isinstance(payment_intent, Mapping):
        payment_intent = _typed(payment_intent, "id", str)
    metadata = _typed(data, "metadata", Mapping) or {}
    amount_total = _typed(data, "amount_total", int)
    currency = _typed(data, "currency", str)
    customer = _typed(data, "customer_details", Mapping)
    return CheckoutSession(
        id=data["id"],
        status=_typed(data, "status", str),
        payment_status=_typed(data, "payment_status", str),
        amount_total=amount_total,
        currency=currency.upper() if currency else None,
        client_secret=_typed(data, "client_secret", str),
        metadata={str(k): str(v) for k, v in metadata.items()},
        payment_intent_id=payment_intent,
        shipping_address=shipping_address_of(data),
        customer_email=(customer and _typed(customer, "email", str))
        or _typed(data, "customer_email", str),
        created=_typed(data, "created", int),
        **_money_of(data),
    )


@dataclass(frozen=True)
class PaymentRecord:
    """A charge or a dispute, as far as the service reads one: which payment it is about and
    what it says of it. Fields Stripe left out, or sent in a shape we do not read, are None."""

    id: str
    payment_intent_id: str | None
    order_id: str | None
    amount: int | None
    amount_refunded: int | None
    reason: str | None
    status: str | None


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def payment_record_from_stripe(obj: Mapping[str, Any]) -> PaymentRecord:
    data = obj.to_dict() if isinstance(obj, stripe.StripeObject) else obj
    if not isinstance(data, Mapping):
        raise MalformedStripeObject("a charge or dispute must be an object")
    payment_intent = data.get("payment_intent")
    if isinstance(payment_intent, Mapping):
        payment_intent = payment_intent.get("id")
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise MalformedStripeObject("metadata is not an object")
    order_id = metadata.get("order_id")
    reason, status = data.get("reason"), data.get("status")
    return PaymentRecord(
        id=str(data.get("id")),
        payment_intent_id=payment_intent if isinstance(payment_intent, str) else None,
        order_id=order_id if isinstance(order_id, str) else None,
        amount=_whole(data.get("amount")),
        amount_refunded=_whole(data.get("amount_refunded")),
        reason=str(reason) if reason else None,
        status=status if isinstance(status, str) else None,
    )


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
        _get(event.get("data"), "object"), Mapping
    ):
        raise BadWebhook("body is not a Stripe event")
    return event


class StripeGateway(OfferCalls):
    """A StripeClient bound to this process's event loop; create it in the app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: stripe.StripeClient | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._http = stripe.HTTPXClient(timeout=settings.stripe_timeout_seconds)
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

    async def _call(self, what: str, call: Any) -> Any:
        try:
            with metrics.stripe_call(what.replace(" ", "_")):
                async with asyncio.timeout(self._deadline):
                    return await call
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
        session = await self._call(
            "checkout session create",
            self.client.v1.checkout.sessions.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": f"checkout-session-{request.order_id}"},
            ),
        )
        return session_from_stripe(session)

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
            self.client.v1.checkout.sessions.retrieve_async(session_id),
        )
        return session_from_stripe(session)

    async def described(self, session: CheckoutSession) -> CheckoutSession:
        """The session with its shipping rate's display name and its promotion code's code,
        asked of Stripe when the session holds only their ids (webhooks never expand them)."""
        changes: dict[str, Any] = {}
        if session.shipping_rate_id and session.shipping_rate_name is None:
            rate = await self._call(
                "shipping rate retrieve",
                self.client.v1.shipping_rates.retrieve_async(session.shipping_rate_id),
            )
            changes["shipping_rate_name"] = _typed(rate.to_dict(), "display_name", str) or ""
        if session.promotion_code_id and session.promotion_code is None:
            promo = await self._call(
                "promotion code retrieve",
                self.client.v1.promotion_codes.retrieve_async(session.promotion_code_id),
            )
            changes["promotion_code"] = _typed(promo.to_dict(), "code", str)
        return dataclasses.replace(session, **changes) if changes else session

    async def list_checkout_sessions(self, created_since: datetime) -> list[CheckoutSession]:
        """Every Checkout Session created since then, newest first: page by page, each page
        a call of its own (with its own deadline)."""
        params: dict[str, Any] = {"created": {"gte": int(created_since.timestamp())}, "limit": 100}
        sessions: list[CheckoutSession] = []
        while True:
            page = await self._call(
                "checkout session list",
                self.client.v1.checkout.sessions.list_async(params=params),  # type: ignore[arg-type]
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
            self.client.v1.payment_intents.retrieve_async(payment_intent_id),
        )
        return payment_record_from_stripe(intent)

    async def expire_checkout_session(self, session_id: str) -> CheckoutSession:
        session = await self._call(
            "checkout session expire",
            self.client.v1.checkout.sessions.expire_async(session_id),
        )
        return session_from_stripe(session)

    async def create_refund(
        self, payment_intent_id: str, amount: int, *, idempotency_key: str, reason: str
    ) -> Refund:
        refund = await self._call(
            "refund create",
            self.client.v1.refunds.create_async(
                params={
                    "payment_intent": payment_intent_id,
                    "amount": amount,
                    "metadata": {"reason": reason[:500]},
                },
                options={"idempotency_key": idempotency_key},
            ),
        )
        return Refund(id=refund["id"], amount=refund["amount"], status=refund["status"])

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._http.close_async()
