"""The API entry: every ``/v1/...`` request goes through here before its resource.

It does what Stripe's front door does, in order: record the request, apply an
injected fault, authenticate the key, route to the resource's handler, and keep
or replay idempotent answers. Resources only see a decoded ``_Call``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ordergraph.stripe_emulator.checkout_sessions import ROUTES as CHECKOUT_SESSION_ROUTES
from ordergraph.stripe_emulator.coupons import ROUTES as COUPON_ROUTES
from ordergraph.stripe_emulator.errors import StripeApiError
from ordergraph.stripe_emulator.events import ROUTES as EVENT_ROUTES
from ordergraph.stripe_emulator.params import decode_form
from ordergraph.stripe_emulator.payment_intents import ROUTES as PAYMENT_INTENT_ROUTES
from ordergraph.stripe_emulator.promotion_codes import ROUTES as PROMOTION_CODE_ROUTES
from ordergraph.stripe_emulator.refunds import ROUTES as REFUND_ROUTES
from ordergraph.stripe_emulator.shipping_rates import ROUTES as SHIPPING_RATE_ROUTES
from ordergraph.stripe_emulator.state import (
    EmulatorState,
    Handler,
    RecordedRequest,
    _Call,
    _mask_key,
    _new_id,
    _Stored,
)
from ordergraph.stripe_emulator.types import JsonDict

# Every resource's routes, in the order they are tried.
API_ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    (method, re.compile(pattern), handler)
    for method, pattern, handler in [
        *CHECKOUT_SESSION_ROUTES,
        *REFUND_ROUTES,
        *PAYMENT_INTENT_ROUTES,
        *EVENT_ROUTES,
        *COUPON_ROUTES,
        *PROMOTION_CODE_ROUTES,
        *SHIPPING_RATE_ROUTES,
    ]
]


def _json_response(status: int, body: JsonDict, headers: dict[str, str] | None = None) -> Response:
    # Stripe pretty-prints its JSON; doing the same keeps clients honest about parsing.
    return Response(
        json.dumps(body, indent=2) + "\n",
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


class _DroppedResponse(Response):
    """Starts an answer it never finishes: the server then closes the connection.

    The client sees the peer hang up mid-response (httpx ``RemoteProtocolError``,
    the SDK's ``APIConnectionError``), which is what a dropped connection looks
    like; uvicorn logs one "returned without completing response" line.
    """

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"id":', "more_body": True})


class StripeApi:
    """Stripe's REST API over one ``EmulatorState``; ``route()`` mounts it under everything."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.routes = API_ROUTES

    def route(self) -> Route:
        return Route(
            "/{path:path}",
            self.endpoint,
            methods=["GET", "POST", "DELETE", "PUT", "PATCH"],
        )

    async def endpoint(self, request: Request) -> Response:
        """Every non-control request: record, apply faults, authenticate, route, idempotency."""
        method = request.method
        path = request.url.path
        if path.startswith("/_emulator/"):
            return JSONResponse(
                {"error": {"type": "invalid_request_error", "message": f"No control at {path}"}},
                status_code=404,
            )
        raw = await request.body()
        pairs = parse_qsl(request.url.query, keep_blank_values=True)
        if method == "POST" and raw:
            pairs += parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
        decode_error: StripeApiError | None = None
        try:
            params = decode_form(pairs)
        except StripeApiError as exc:
            params, decode_error = {}, exc
        headers = {k.lower(): v for k, v in request.headers.items()}
        idem_key = headers.get("idempotency-key") or None
        self.state.requests.append(RecordedRequest(method, path, params, idem_key, headers))
        request_id = _new_id("req_", 14)
        base_headers = {"Request-Id": request_id, "Stripe-Version": self.state.api_version}
        if method == "POST" and idem_key:
            base_headers["Idempotency-Key"] = idem_key
            base_headers["Original-Request"] = request_id

        mode, delay = self.state.faults.popleft() if self.state.faults else ("", 0.0)
        if mode == "drop":
            return _DroppedResponse()
        if mode == "error500":
            err = StripeApiError(
                500,
                "api_error",
                "An unknown error occurred while processing this request (injected fault).",
                headers={"Stripe-Should-Retry": "false"},
            )
            return _json_response(500, err.body(), {**base_headers, **err.headers})

        delayed = False
        scope_key: tuple[str, str] | None = None
        try:
            api_key = self._authenticate(headers.get("authorization", ""))
            if decode_error is not None:
                raise decode_error
            handler, groups = self._match(method, path)
            call = _Call(method, path, params, api_key, idem_key, request_id)
            if method == "POST" and idem_key:
                scope_key = (api_key, idem_key)
                replay = self._check_idempotency(scope_key, call)
                if replay is not None:
                    return replay
                self.state.in_flight.add(scope_key)
            try:
                if delay:
                    delayed = True
                    generation = self.state.generation
                    await asyncio.sleep(delay)
                    if generation != self.state.generation:
                        # reset() ran meanwhile: this request belongs to a forgotten world.
                        raise StripeApiError(
                            500, "api_error", "The emulator was reset.", stored=False
                        )
                result = await handler(self.state, call, *groups)
            except StripeApiError as exc:
                if scope_key is not None and exc.stored:
                    self._store(scope_key, call, exc.status, exc.body(), request_id)
                raise
            finally:
                if scope_key is not None:
                    self.state.in_flight.discard(scope_key)
            if scope_key is not None:
                self._store(scope_key, call, result.status, result.body, request_id)
            for factory in result.after:
                self.state.schedule(factory)
            return _json_response(result.status, result.body, base_headers)
        except StripeApiError as exc:
            if delay and not delayed:
                await asyncio.sleep(delay)
            return _json_response(exc.status, exc.body(), {**base_headers, **exc.headers})

    def _authenticate(self, authorization: str) -> str:
        scheme, _, credential = authorization.partition(" ")
        key = credential.strip()
        if scheme.lower() == "basic":
            try:
                key = base64.b64decode(key).decode().partition(":")[0]
            except ValueError:
                key = ""
        elif scheme.lower() != "bearer":
            key = ""
        if not key:
            raise StripeApiError(
                401,
                "authentication_error",
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
                stored=False,
            )
        if key.startswith("pk_"):
            raise StripeApiError(
                401,
                "authentication_error",
                "This API call cannot be made with a publishable API key. "
                "Please use a secret API key.",
                stored=False,
            )
        if not key.startswith(("sk_", "rk_")):
            raise StripeApiError(
                401,
                "authentication_error",
                f"Invalid API Key provided: {_mask_key(key)}",
                stored=False,
            )
        return key

    def _match(self, method: str, path: str) -> tuple[Handler, tuple[str, ...]]:
        for route_method, pattern, handler in self.routes:
            match = pattern.fullmatch(path)
            if match is not None and route_method == method:
                return handler, match.groups()
        raise StripeApiError(
            404,
            "invalid_request_error",
            f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
            "or we can help at https://support.stripe.com/.",
            stored=False,
        )

    def _check_idempotency(self, scope_key: tuple[str, str], call: _Call) -> Response | None:
        """Replay a kept answer, or refuse a reused key, as Stripe's idempotency layer does."""
        key = scope_key[1]
        stored = self.state.idempotency.get(scope_key)
        if stored is None:
            if scope_key in self.state.in_flight:
                raise StripeApiError(
                    409,
                    "invalid_request_error",
                    "There is currently another in-progress request using this idempotent key "
                    "(that probably means you submitted twice, and the other request is still "
                    "going through). Please try again later.",
                    code="idempotency_key_in_use",
                    stored=False,
                )
            return None
        if (stored.method, stored.path) != (call.method, call.path):
            raise StripeApiError(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used for the same endpoint they were "
                f"first used for ('{stored.method} {stored.path}' vs '{call.method} {call.path}'). "
                f"Try using a key other than '{key}' if you meant to execute a different request.",
                stored=False,
            )
        if stored.params != call.params:
            raise StripeApiError(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request.",
                stored=False,
            )
        return Response(
            stored.content,
            status_code=stored.status,
            media_type="application/json",
            headers={
                "Request-Id": call.request_id,
                "Original-Request": stored.request_id,
                "Idempotency-Key": key,
                "Idempotent-Replayed": "true",
                "Stripe-Version": self.state.api_version,
            },
        )

    def _store(
        self, scope_key: tuple[str, str], call: _Call, status: int, body: JsonDict, rid: str
    ) -> None:
        content = (json.dumps(body, indent=2) + "\n").encode()
        self.state.idempotency[scope_key] = _Stored(
            call.method, call.path, call.params, status, content, rid
        )
