"""The emulator's own controls under ``/_emulator/...``: act as the customer, inspect, reset.

Not part of Stripe's API: they let a test or the demo, in another process,
do what in-process tests call on ``StripeEmulator`` (complete a session, with
the shopper's shipping option, promotion code and tax country; dispute a
payment; inject faults; point the webhook elsewhere; set the automatic-tax
rates) and read what the emulator received. Errors are plain JSON with the HTTP status of
``EmulatorError``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ordergraph.stripe_emulator.checkout_actions import (
    async_payment_failed,
    async_payment_succeeded,
    complete_session,
    expire_session_event,
)
from ordergraph.stripe_emulator.disputes import dispute
from ordergraph.stripe_emulator.errors import EmulatorError
from ordergraph.stripe_emulator.state import Delivery, EmulatorState, _redact
from ordergraph.stripe_emulator.types import JsonDict


class EmulatorControls:
    """The ``/_emulator/...`` endpoints over one ``EmulatorState``; ``routes()`` lists them."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def routes(self) -> list[Route]:
        ctl = "/_emulator/checkout/sessions/{session_id}"
        return [
            Route(f"{ctl}/complete", self.complete, methods=["POST"]),
            Route(f"{ctl}/async_payment_succeeded", self.async_ok, methods=["POST"]),
            Route(f"{ctl}/async_payment_failed", self.async_failed, methods=["POST"]),
            Route(f"{ctl}/expire", self.expire, methods=["POST"]),
            Route("/_emulator/checkout/sessions", self.sessions, methods=["GET"]),
            Route(
                "/_emulator/payment_intents/{pi}/dispute", self.dispute_payment, methods=["POST"]
            ),
            Route("/_emulator/reset", self.reset, methods=["POST"]),
            Route("/_emulator/faults", self.faults, methods=["POST"]),
            Route("/_emulator/requests", self.requests, methods=["GET"]),
            Route("/_emulator/events", self.events, methods=["GET"]),
            Route("/_emulator/webhook", self.webhook, methods=["GET", "PUT"]),
            Route("/_emulator/tax_rates", self.tax_rates, methods=["GET", "PUT"]),
        ]

    async def _json_body(self, request: Request) -> JsonDict:
        raw = await request.body()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise EmulatorError("body must be a JSON object") from None
        if not isinstance(body, dict):
            raise EmulatorError("body must be a JSON object")
        return body

    async def _control(self, action: Callable[[], Awaitable[Any]]) -> Response:
        try:
            result = await action()
        except EmulatorError as exc:
            return JSONResponse(
                {"error": {"type": "invalid_request_error", "message": str(exc)}},
                status_code=exc.status,
            )
        except (ValueError, TypeError) as exc:
            return JSONResponse(
                {"error": {"type": "invalid_request_error", "message": str(exc)}},
                status_code=400,
            )
        if isinstance(result, Delivery):
            return JSONResponse(
                {
                    "event": result.event,
                    "webhook_status": result.status_code,
                    "webhook_body": result.body,
                }
            )
        return JSONResponse(result)

    async def complete(self, request: Request) -> Response:
        sid = request.path_params["session_id"]

        async def act() -> Delivery:
            body = await self._json_body(request)
            allowed = {
                "payment_status",
                "shipping",
                "customer_email",
                "amount_total",
                "metadata",
                "shipping_rate",
                "promotion_code",
                "country",
            }
            unknown = set(body) - allowed
            if unknown:
                raise EmulatorError(f"unknown fields: {sorted(unknown)}")
            return await complete_session(self.state, sid, **body)

        return await self._control(act)

    async def async_ok(self, request: Request) -> Response:
        return await self._control(
            lambda: async_payment_succeeded(self.state, request.path_params["session_id"])
        )

    async def async_failed(self, request: Request) -> Response:
        return await self._control(
            lambda: async_payment_failed(self.state, request.path_params["session_id"])
        )

    async def expire(self, request: Request) -> Response:
        return await self._control(
            lambda: expire_session_event(self.state, request.path_params["session_id"])
        )

    async def dispute_payment(self, request: Request) -> Response:
        async def act() -> Delivery:
            body = await self._json_body(request)
            return await dispute(
                self.state,
                request.path_params["pi"],
                status=str(body.get("status", "needs_response")),
            )

        return await self._control(act)

    async def sessions(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": list(self.state.sessions.values())})

    async def reset(self, request: Request) -> Response:
        self.state.reset()
        return JSONResponse({"reset": True})

    async def faults(self, request: Request) -> Response:
        async def act() -> JsonDict:
            body = await self._json_body(request)
            self.state.inject_fault(
                str(body.get("mode", "")),
                int(body.get("count", 1)),
                delay=float(body.get("delay", 0.0)),
            )
            return {"pending_faults": [list(f) for f in self.state.faults]}

        return await self._control(act)

    async def requests(self, request: Request) -> Response:
        data = []
        for rec in self.state.requests:
            item = asdict(rec)
            item["headers"] = _redact(rec.headers)
            data.append(item)
        return JSONResponse({"object": "list", "data": data})

    async def events(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": self.state.events})

    async def webhook(self, request: Request) -> Response:
        async def act() -> JsonDict:
            if request.method == "PUT":
                body = await self._json_body(request)
                if "url" in body:
                    self.state.webhook_url = body["url"] or None
                if "secret" in body:
                    self.state.webhook_secret = body["secret"] or None
            return {"url": self.state.webhook_url, "secret": self.state.webhook_secret}

        return await self._control(act)

    async def tax_rates(self, request: Request) -> Response:
        """``GET``: the automatic-tax table; ``PUT`` a JSON object ``{"DE": 1900, ...}``
        (country code to basis points) replaces it."""

        async def act() -> JsonDict:
            if request.method == "PUT":
                self.state.set_tax_rates(await self._json_body(request))
            return dict(self.state.tax_rates)

        return await self._control(act)
