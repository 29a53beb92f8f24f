"""``StripeEmulator``, the object tests and the demo hold, and ``serve_emulator``.

It composes the pieces: one ``EmulatorState``, the Stripe API over it, the
``/_emulator`` controls, and a Starlette app mounting both. Its attributes and
methods are the emulator's whole public surface; the tables and settings it
shows are those of its state, read and written through it.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, overload

from starlette.applications import Starlette

from ordergraph.stripe_emulator.api import StripeApi
from ordergraph.stripe_emulator.checkout_actions import (
    async_payment_failed,
    async_payment_succeeded,
    complete_session,
    expire_session_event,
)
from ordergraph.stripe_emulator.control import EmulatorControls
from ordergraph.stripe_emulator.delivery import build_event, deliver, signed_headers
from ordergraph.stripe_emulator.disputes import dispute
from ordergraph.stripe_emulator.state import (
    DEFAULT_API_VERSION,
    Delivery,
    EmulatorState,
    RecordedRequest,
    _new_id,
)
from ordergraph.stripe_emulator.types import JsonDict

T = TypeVar("T")


class _OnState(Generic[T]):
    """An attribute of the emulator kept on its ``EmulatorState``, read and set through it."""

    name: str

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> _OnState[T]: ...

    @overload
    def __get__(self, obj: StripeEmulator, owner: type[Any] | None = None) -> T: ...

    def __get__(
        self, obj: StripeEmulator | None, owner: type[Any] | None = None
    ) -> T | _OnState[T]:
        if obj is None:
            return self
        value: T = getattr(obj.state, self.name)
        return value

    def __set__(self, obj: StripeEmulator, value: T) -> None:
        setattr(obj.state, self.name, value)


class StripeEmulator:
    """In-memory Stripe: REST endpoints for the SDK, controls for tests, signed webhooks.

    ``app`` is the Starlette ASGI app. Everything is kept on the instance
    (``sessions``, ``payment_intents``, ``charges``, ``refunds``, ``disputes``,
    ``coupons``, ``promotion_codes``, ``shipping_rates``, ``events``, ``deliveries``,
    ``requests``) so in-process tests can look inside.
    If no ``webhook_secret`` is given one is generated (``whsec_...``), as
    ``stripe listen`` does; read it from ``webhook_secret``.
    """

    webhook_url: _OnState[str | None] = _OnState()
    webhook_secret: _OnState[str | None] = _OnState()
    api_version: _OnState[str] = _OnState()
    # Stripe measures expires_at from its own clock at creation; this allows for
    # the latency between the caller computing it and the request arriving.
    expires_at_leeway: _OnState[int] = _OnState()
    # Deliver the events Stripe sends after API calls (refund, expire).
    send_api_events: _OnState[bool] = _OnState()
    webhook_timeout: _OnState[float] = _OnState()
    # Automatic tax by customer country, in basis points (configuration: kept by reset).
    tax_rates: _OnState[dict[str, int]] = _OnState()

    requests: _OnState[list[RecordedRequest]] = _OnState()
    sessions: _OnState[dict[str, JsonDict]] = _OnState()
    line_items: _OnState[dict[str, list[JsonDict]]] = _OnState()
    payment_intents: _OnState[dict[str, JsonDict]] = _OnState()
    charges: _OnState[dict[str, JsonDict]] = _OnState()
    refunds: _OnState[dict[str, JsonDict]] = _OnState()
    disputes: _OnState[dict[str, JsonDict]] = _OnState()
    events: _OnState[list[JsonDict]] = _OnState()
    deliveries: _OnState[list[Delivery]] = _OnState()
    coupons: _OnState[dict[str, JsonDict]] = _OnState()
    promotion_codes: _OnState[dict[str, JsonDict]] = _OnState()
    shipping_rates: _OnState[dict[str, JsonDict]] = _OnState()

    def __init__(
        self,
        *,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        api_version: str = DEFAULT_API_VERSION,
    ) -> None:
        self.state = EmulatorState(
            webhook_url=webhook_url,
            webhook_secret=webhook_secret or _new_id("whsec_", 32),
            api_version=api_version,
        )
        controls = EmulatorControls(self.state)
        self.app = Starlette(routes=[*controls.routes(), StripeApi(self.state).route()])

    def reset(self) -> None:
        """Forget all objects, requests, faults, idempotency keys and pending deliveries.

        The webhook URL and secret are configuration and are kept.
        """
        self.state.reset()

    def inject_fault(self, mode: str, count: int = 1, *, delay: float = 0.0) -> None:
        """Make the next ``count`` API calls misbehave (control calls are never affected).

        ``error500``: a 500 ``api_error`` with ``Stripe-Should-Retry: false`` (the SDK
        does not retry it). ``delay``: sleep ``delay`` seconds, then execute and
        answer normally (a client with a shorter timeout gives up, yet the call
        took effect, as with Stripe). ``drop``: the connection is closed mid-answer
        without executing (the SDK sees a connection error and, if allowed, retries).
        """
        self.state.inject_fault(mode, count, delay=delay)

    def set_tax_rates(self, rates: dict[str, int]) -> None:
        """Replace the automatic-tax table: ``{"DE": 1900}`` taxes German customers at 19 %.

        Countries not in the table are taxed at 0. The table is configuration, kept by
        :meth:`reset`; the default is ``DEFAULT_TAX_RATES``.
        """
        self.state.set_tax_rates(rates)

    async def drain(self) -> None:
        """Wait until the background deliveries (after refunds, API expiries) are done."""
        await self.state.drain()

    # ---------------------------------------------------- simulated customer actions

    async def complete_session(
        self,
        session_id: str,
        *,
        payment_status: str = "paid",
        shipping: JsonDict | None = None,
        customer_email: str | None = None,
        amount_total: int | None = None,
        metadata: JsonDict | None = None,
        deliver: bool = True,
        shipping_rate: str | None = None,
        promotion_code: str | None = None,
        country: str | None = None,
    ) -> Delivery:
        """The customer pays: the session completes and ``checkout.session.completed`` is sent.

        ``payment_status="unpaid"`` is a delayed method (bank debit): the PaymentIntent
        stays ``processing`` until :meth:`async_payment_succeeded`/``_failed``.
        ``amount_total`` and ``metadata`` (merged into the session's) let tests forge
        what a tampered or mismatched session would carry. The shipping address is
        ``shipping`` or, when the session collects one, a default US address.
        ``shipping_rate``: the ``shr_...`` of the option the customer picked (default the
        first). ``promotion_code``: the code the customer typed, on a session with
        ``allow_promotion_codes``; an unknown, inactive, expired or used-up code raises
        ``EmulatorError`` (400) with Checkout's message, a good one counts a redemption.
        ``country``: the tax country for automatic tax (default the shipping address's).
        With ``deliver=False`` the event is built but not sent (status_code 0).
        """
        return await complete_session(
            self.state,
            session_id,
            payment_status=payment_status,
            shipping=shipping,
            customer_email=customer_email,
            amount_total=amount_total,
            metadata=metadata,
            deliver=deliver,
            shipping_rate=shipping_rate,
            promotion_code=promotion_code,
            country=country,
        )

    async def async_payment_succeeded(self, session_id: str) -> Delivery:
        """A delayed payment settles: ``checkout.session.async_payment_succeeded``."""
        return await async_payment_succeeded(self.state, session_id)

    async def async_payment_failed(self, session_id: str) -> Delivery:
        """A delayed payment fails: ``checkout.session.async_payment_failed`` (stays unpaid)."""
        return await async_payment_failed(self.state, session_id)

    async def expire_session_event(self, session_id: str) -> Delivery:
        """The session runs out of time: it expires and ``checkout.session.expired`` is sent."""
        return await expire_session_event(self.state, session_id)

    async def dispute(self, payment_intent: str, *, status: str = "needs_response") -> Delivery:
        """The customer disputes the payment: ``charge.dispute.created``.

        A closing status (``won``, ``lost``, ``warning_closed``, ``prevented``) updates the
        open dispute of that payment (or makes one) and sends ``charge.dispute.closed``.
        """
        return await dispute(self.state, payment_intent, status=status)

    # ---------------------------------------------------------------------- webhooks

    def build_event(
        self,
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
        return build_event(
            self.state,
            event_type,
            obj,
            previous_attributes=previous_attributes,
            request=request,
        )

    def signed_headers(
        self, payload: str, *, secret: str | None = None, timestamp: int | None = None
    ) -> dict[str, str]:
        """The headers Stripe puts on a delivery, with ``Stripe-Signature: t=...,v1=...``.

        ``secret``/``timestamp`` override the configured secret and now, to forge
        bad or stale signatures.
        """
        return signed_headers(self.state, payload, secret=secret, timestamp=timestamp)

    async def deliver(
        self, event: JsonDict | str, *, secret: str | None = None, timestamp: int | None = None
    ) -> Delivery:
        """POST an event to ``webhook_url``, signed; a string is sent byte for byte.

        Like Stripe, the body is pretty-printed JSON, so a receiver that verifies a
        re-serialised body instead of the raw bytes fails. Never raises for the
        endpoint's answer or a connection error: they are in the returned Delivery
        (status 0 when nothing answered) and in ``deliveries``.
        """
        return await deliver(self.state, event, secret=secret, timestamp=timestamp)


async def serve_emulator(
    host: str,
    port: int,
    *,
    webhook_url: str | None,
    webhook_secret: str | None,
    log_level: str = "info",
) -> None:
    """Run the emulator under uvicorn until interrupted (the ``ordergraph stripe-emulator`` verb).

    Prints the API base and the webhook secret, which the service needs as
    ``STRIPE_API_BASE`` and ``STRIPE_WEBHOOK_SECRET``.
    """
    import uvicorn

    emulator = StripeEmulator(webhook_url=webhook_url, webhook_secret=webhook_secret)
    print(
        f"Stripe emulator on http://{host}:{port} (STRIPE_API_BASE); webhook "
        f"{webhook_url or '(none: PUT /_emulator/webhook)'}; secret {emulator.webhook_secret}",
        flush=True,
    )
    server = uvicorn.Server(uvicorn.Config(emulator.app, host=host, port=port, log_level=log_level))
    await server.serve()
