"""A local Stripe emulator: the part of Stripe's REST API that ordergraph calls.

Why it exists: the service must be tested and demonstrated offline, with the
real ``stripe`` SDK on the wire (form-encoded requests, Stripe's JSON objects,
Stripe's error envelope, idempotency keys and retry headers) and with webhooks
signed exactly as Stripe signs them. Production never uses it.

Shapes follow Stripe's own example objects (``fixtures3.json`` from Stripe's
OpenAPI repository, MIT licensed, Copyright (c) 2011- Stripe, Inc.), trimmed
and rebuilt in code, in the current API version (``2026-10-28.endive``): the
shipping address lives at ``collected_information.shipping_details`` and
``payment_intent`` is null until the session is paid.

Deliberate simplifications, each documented where it happens:

* state lives in memory, one account, test mode only;
* sessions never expire by the clock; call :meth:`StripeEmulator.expire_session_event`;
* only 2xx answers and errors raised after an endpoint began (unknown ids,
  wrong states, over-refunds) are kept for idempotent replay; malformed
  parameters are not, as Stripe documents for validation failures; injected
  faults are never kept, so the client's retry with the same key executes;
* events caused by API calls (``charge.refunded`` after a refund,
  ``checkout.session.expired`` after an ``expire``) are delivered by a
  background task once the API answer is sent, like Stripe; :meth:`drain` waits
  for them.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import re
import secrets
import string
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = [
    "Delivery",
    "EmulatorError",
    "RecordedRequest",
    "StripeApiError",
    "StripeEmulator",
    "decode_form",
    "serve_emulator",
]

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]

DEFAULT_API_VERSION = "2026-10-28.endive"
FAULT_MODES = ("error500", "delay", "drop")
UI_MODES = ("embedded_page", "hosted_page", "elements", "form")
# A session's expires_at must lie 30 minutes to 24 hours after creation.
MIN_EXPIRY_SECONDS = 30 * 60
MAX_EXPIRY_SECONDS = 24 * 60 * 60

# Top-level parameters Stripe accepts (from the SDK's SessionCreateParams /
# RefundCreateParams, request options removed). Anything else is refused with
# "Received unknown parameter", as Stripe does, so typos in the service show up.
SESSION_CREATE_PARAMS = frozenset(
    """adaptive_pricing after_expiration allow_promotion_codes allowed_payment_method_types
    automatic_tax billing_address_collection branding_settings cancel_url client_reference_id
    consent_collection currency custom_fields custom_text customer customer_account
    customer_creation customer_email customer_update discounts excluded_payment_method_types
    expand expires_at integration_identifier invoice_creation line_items locale
    managed_payments metadata mode name_collection optional_items origin_context
    payment_intent_data payment_method_collection payment_method_configuration
    payment_method_data payment_method_options permissions phone_number_collection
    redirect_on_completion return_url saved_payment_method_options setup_intent_data
    shipping_address_collection shipping_options submit_type subscription_data success_url
    tax_id_collection ui_mode wallet_options""".split()
)
REFUND_CREATE_PARAMS = frozenset(
    """amount charge currency customer expand instructions_email metadata origin
    payment_intent reason refund_application_fee reverse_transfer""".split()
)
LINE_ITEM_PARAMS = frozenset(
    "adjustable_quantity metadata price price_data quantity tax_rates".split()
)
PRICE_DATA_PARAMS = frozenset(
    "currency product product_data recurring tax_behavior unit_amount unit_amount_decimal".split()
)
REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")

DEFAULT_SHIPPING: JsonDict = {
    "name": "Jenny Rosen",
    "address": {
        "line1": "510 Townsend St",
        "line2": None,
        "city": "San Francisco",
        "state": "CA",
        "postal_code": "94103",
        "country": "US",
    },
}
DEFAULT_EMAIL = "jenny.rosen@example.com"
ADDRESS_KEYS = ("city", "country", "line1", "line2", "postal_code", "state")


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


class StripeApiError(Exception):
    """An error answered in Stripe's envelope: ``{"error": {"type", "message", ...}}``.

    ``stored`` says whether an idempotent request keeps this answer for replay
    (Stripe keeps results once an endpoint began executing, not validation failures).
    """

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        stored: bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.code = code
        self.param = param
        self.stored = stored
        self.headers = headers or {}

    def body(self) -> JsonDict:
        error: JsonDict = {"message": self.message, "type": self.type}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            error["param"] = self.param
        return {"error": error}


class EmulatorError(ValueError):
    """Misuse of the emulator's own controls (unknown id, wrong state); ``status`` for HTTP."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _invalid(message: str, param: str | None = None, code: str | None = None) -> StripeApiError:
    """A parameter validation error: 400, not kept for idempotent replay."""
    return StripeApiError(
        400, "invalid_request_error", message, code=code, param=param, stored=False
    )


def _missing(param: str) -> StripeApiError:
    return _invalid(f"Missing required param: {param}.", param, "parameter_missing")


# ------------------------------------------------------------------------ form codec


_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


def decode_form(pairs: Iterable[tuple[str, str]]) -> JsonDict:
    """Decode Stripe's bracketed form keys (``line_items[0][price_data][currency]``) to nesting.

    Dicts whose keys are all indices become lists, as the SDK encodes lists with
    explicit indices (``expand[0]``); ``key[]`` appends.
    """
    root: JsonDict = {}
    for raw_key, value in pairs:
        match = _KEY_RE.match(raw_key)
        if match is None:
            raise _invalid(f"Invalid parameter name: {raw_key}", raw_key)
        parts = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node: JsonDict = root
        for depth, part in enumerate(parts):
            key = str(len(node)) if part == "" else part
            last = depth == len(parts) - 1
            if last:
                if isinstance(node.get(key), dict):
                    raise _invalid(f"Invalid hash: {raw_key}", raw_key)
                node[key] = value
            else:
                child = node.setdefault(key, {})
                if not isinstance(child, dict):
                    raise _invalid(f"Invalid array or hash: {raw_key}", raw_key)
                node = child
    return _listify(root)


def _listify(node: JsonDict) -> JsonDict:
    out: JsonDict = {}
    for key, value in node.items():
        out[key] = _listify_value(value)
    return out


def _listify_value(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if value and all(k.isdigit() for k in value):
        return [_listify_value(value[k]) for k in sorted(value, key=int)]
    return _listify(value)


# --------------------------------------------------------------------------- helpers

_ALPHABET = string.ascii_letters + string.digits


def _rand(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def _new_id(prefix: str, n: int = 24) -> str:
    return f"{prefix}{_rand(n)}"


def _now() -> int:
    return int(time.time())


def _int_param(value: Any, param: str, *, minimum: int | None = None) -> int:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise _invalid(f"Invalid integer: {value}", param)
    try:
        number = int(value)
    except ValueError:
        raise _invalid(f"Invalid integer: {value}", param) from None
    if minimum is not None and number < minimum:
        raise _invalid(
            f"This value must be greater than or equal to {minimum}.",
            param,
            "parameter_invalid_integer",
        )
    return number


def _str_param(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _invalid(f"Invalid string: {value!r}", param)
    return value


def _dict_param(value: Any, param: str) -> JsonDict:
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise _invalid(f"Invalid object: {param} must be a hash", param)
    return value


def _check_unknown(params: JsonDict, allowed: frozenset[str], prefix: str = "") -> None:
    for key in params:
        if key not in allowed:
            name = f"{prefix}[{key}]" if prefix else key
            raise _invalid(f"Received unknown parameter: {name}", name, "parameter_unknown")


def _format_amount(amount: int, currency: str) -> str:
    if currency == "usd":
        return f"${amount / 100:.2f}"
    return f"{amount / 100:.2f} {currency.upper()}"


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
    after: list[Callable[[], Coroutine[Any, Any, Any]]] = field(default_factory=list)


@dataclass
class _Stored:
    method: str
    path: str
    params: JsonDict
    status: int
    content: bytes
    request_id: str


Handler = Callable[..., Awaitable[_Result]]


# -------------------------------------------------------------------------- emulator


class StripeEmulator:
    """In-memory Stripe: REST endpoints for the SDK, controls for tests, signed webhooks.

    ``app`` is the Starlette ASGI app. Everything is kept on the instance
    (``sessions``, ``payment_intents``, ``charges``, ``refunds``, ``disputes``,
    ``events``, ``deliveries``, ``requests``) so in-process tests can look inside.
    If no ``webhook_secret`` is given one is generated (``whsec_...``), as
    ``stripe listen`` does; read it from ``webhook_secret``.
    """

    def __init__(
        self,
        *,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        api_version: str = DEFAULT_API_VERSION,
    ) -> None:
        self.webhook_url: str | None = webhook_url
        self.webhook_secret: str | None = webhook_secret or _new_id("whsec_", 32)
        self.api_version = api_version
        # Stripe measures expires_at from its own clock at creation; this allows for
        # the latency between the caller computing it and the request arriving.
        self.expires_at_leeway = 5
        # Deliver the events Stripe sends after API calls (refund, expire).
        self.send_api_events = True
        self.webhook_timeout = 10.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._generation = 0
        self._init_state()
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("POST", re.compile(r"/v1/checkout/sessions"), self._create_session),
            ("GET", re.compile(r"/v1/checkout/sessions/([^/]+)"), self._retrieve_session),
            ("POST", re.compile(r"/v1/checkout/sessions/([^/]+)/expire"), self._expire_session),
            ("GET", re.compile(r"/v1/checkout/sessions/([^/]+)/line_items"), self._line_items),
            ("POST", re.compile(r"/v1/refunds"), self._create_refund),
            ("GET", re.compile(r"/v1/refunds/([^/]+)"), self._retrieve_refund),
            ("GET", re.compile(r"/v1/payment_intents/([^/]+)"), self._retrieve_payment_intent),
            ("GET", re.compile(r"/v1/charges/([^/]+)"), self._retrieve_charge),
            ("GET", re.compile(r"/v1/events/([^/]+)"), self._retrieve_event),
        ]
        ctl = "/_emulator/checkout/sessions/{session_id}"
        self.app = Starlette(
            routes=[
                Route(f"{ctl}/complete", self._ctl_complete, methods=["POST"]),
                Route(f"{ctl}/async_payment_succeeded", self._ctl_async_ok, methods=["POST"]),
                Route(f"{ctl}/async_payment_failed", self._ctl_async_failed, methods=["POST"]),
                Route(f"{ctl}/expire", self._ctl_expire, methods=["POST"]),
                Route("/_emulator/checkout/sessions", self._ctl_sessions, methods=["GET"]),
                Route(
                    "/_emulator/payment_intents/{pi}/dispute", self._ctl_dispute, methods=["POST"]
                ),
                Route("/_emulator/reset", self._ctl_reset, methods=["POST"]),
                Route("/_emulator/faults", self._ctl_faults, methods=["POST"]),
                Route("/_emulator/requests", self._ctl_requests, methods=["GET"]),
                Route("/_emulator/events", self._ctl_events, methods=["GET"]),
                Route("/_emulator/webhook", self._ctl_webhook, methods=["GET", "PUT"]),
                Route(
                    "/{path:path}",
                    self._api_entry,
                    methods=["GET", "POST", "DELETE", "PUT", "PATCH"],
                ),
            ]
        )

    # ------------------------------------------------------------------ state

    def _init_state(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.sessions: dict[str, JsonDict] = {}
        self.line_items: dict[str, list[JsonDict]] = {}
        self.payment_intents: dict[str, JsonDict] = {}
        self.charges: dict[str, JsonDict] = {}
        self.refunds: dict[str, JsonDict] = {}
        self.disputes: dict[str, JsonDict] = {}
        self.events: list[JsonDict] = []
        self.deliveries: list[Delivery] = []
        self._faults: deque[tuple[str, float]] = deque()
        self._idempotency: dict[tuple[str, str], _Stored] = {}
        self._in_flight: set[tuple[str, str]] = set()
        self._pi_data: dict[str, JsonDict] = {}

    def reset(self) -> None:
        """Forget all objects, requests, faults, idempotency keys and pending deliveries.

        The webhook URL and secret are configuration and are kept.
        """
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        self._generation += 1
        self._init_state()

    def inject_fault(self, mode: str, count: int = 1, *, delay: float = 0.0) -> None:
        """Make the next ``count`` API calls misbehave (control calls are never affected).

        ``error500``: a 500 ``api_error`` with ``Stripe-Should-Retry: false`` (the SDK
        does not retry it). ``delay``: sleep ``delay`` seconds, then execute and
        answer normally (a client with a shorter timeout gives up, yet the call
        took effect, as with Stripe). ``drop``: the connection is closed mid-answer
        without executing (the SDK sees a connection error and, if allowed, retries).
        """
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; use one of {FAULT_MODES}")
        if count < 0 or delay < 0:
            raise ValueError("count and delay must not be negative")
        self._faults.extend([(mode, delay)] * count)

    async def drain(self) -> None:
        """Wait until the background deliveries (after refunds, API expiries) are done."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _schedule(self, factory: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        task = asyncio.get_running_loop().create_task(factory())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----------------------------------------------------------- API entry

    async def _api_entry(self, request: Request) -> Response:
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
        self.requests.append(RecordedRequest(method, path, params, idem_key, headers))
        request_id = _new_id("req_", 14)
        base_headers = {"Request-Id": request_id, "Stripe-Version": self.api_version}
        if method == "POST" and idem_key:
            base_headers["Idempotency-Key"] = idem_key
            base_headers["Original-Request"] = request_id

        mode, delay = self._faults.popleft() if self._faults else ("", 0.0)
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
                self._in_flight.add(scope_key)
            try:
                if delay:
                    delayed = True
                    generation = self._generation
                    await asyncio.sleep(delay)
                    if generation != self._generation:
                        # reset() ran meanwhile: this request belongs to a forgotten world.
                        raise StripeApiError(
                            500, "api_error", "The emulator was reset.", stored=False
                        )
                result = await handler(call, *groups)
            except StripeApiError as exc:
                if scope_key is not None and exc.stored:
                    self._store(scope_key, call, exc.status, exc.body(), request_id)
                raise
            finally:
                if scope_key is not None:
                    self._in_flight.discard(scope_key)
            if scope_key is not None:
                self._store(scope_key, call, result.status, result.body, request_id)
            for factory in result.after:
                self._schedule(factory)
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
        for route_method, pattern, handler in self._routes:
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
        stored = self._idempotency.get(scope_key)
        if stored is None:
            if scope_key in self._in_flight:
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
                "Stripe-Version": self.api_version,
            },
        )

    def _store(
        self, scope_key: tuple[str, str], call: _Call, status: int, body: JsonDict, rid: str
    ) -> None:
        content = (json.dumps(body, indent=2) + "\n").encode()
        self._idempotency[scope_key] = _Stored(
            call.method, call.path, call.params, status, content, rid
        )

    # ------------------------------------------------------- object lookup

    def _get(self, table: dict[str, JsonDict], kind: str, object_id: str, param: str) -> JsonDict:
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

    def _expand(self, obj: JsonDict, expand: Any) -> JsonDict:
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
                out["line_items"] = self._line_items_list(obj["id"])
            elif path in tables and path in obj:
                value = obj[path]
                out[path] = copy.deepcopy(tables[path].get(value, value)) if value else None
            else:
                raise _invalid(f"This property cannot be expanded ({path}).", "expand")
        return out

    # -------------------------------------------------- checkout sessions

    async def _create_session(self, call: _Call) -> _Result:
        p = call.params
        _check_unknown(p, SESSION_CREATE_PARAMS)
        mode = p.get("mode")
        if not mode:
            raise _missing("mode")
        if mode != "payment":
            raise _invalid(
                f"Invalid mode: {mode}. The emulator supports only mode=payment.", "mode"
            )
        ui_mode = p.get("ui_mode", "hosted_page")
        if ui_mode not in UI_MODES:
            raise _invalid(
                f"Invalid ui_mode: must be one of {', '.join(UI_MODES[:-1])}, or {UI_MODES[-1]}",
                "ui_mode",
                "parameter_invalid_string",
            )
        return_url = p.get("return_url") or None
        redirect = p.get("redirect_on_completion", "always")
        if ui_mode in ("embedded_page", "elements", "form"):
            for forbidden in ("success_url", "cancel_url"):
                if p.get(forbidden):
                    raise _invalid(
                        f"`{forbidden}` is not supported when `ui_mode` is `{ui_mode}`.",
                        forbidden,
                    )
            if return_url is None and redirect != "never":
                raise _invalid(
                    f"`return_url` is required when `ui_mode` is `{ui_mode}` unless "
                    "`redirect_on_completion` is `never`.",
                    "return_url",
                    "parameter_missing",
                )
        elif return_url is not None:
            raise _invalid(
                "`return_url` can only be used when `ui_mode` is `embedded_page`, "
                "`elements` or `form`.",
                "return_url",
            )
        now = _now()
        expires_at = now + MAX_EXPIRY_SECONDS
        if p.get("expires_at") not in (None, ""):
            expires_at = _int_param(p["expires_at"], "expires_at")
            ahead = expires_at - now
            if ahead + self.expires_at_leeway < MIN_EXPIRY_SECONDS:
                raise _invalid(
                    "The `expires_at` timestamp must be at least 30 minutes from Checkout "
                    "Session creation.",
                    "expires_at",
                )
            if ahead > MAX_EXPIRY_SECONDS:
                raise _invalid(
                    "The `expires_at` timestamp must be less than 24 hours from Checkout "
                    "Session creation.",
                    "expires_at",
                )
        metadata = _dict_param(p.get("metadata", {}), "metadata")
        shipping_collection = p.get("shipping_address_collection") or None
        if shipping_collection is not None:
            shipping_collection = _dict_param(shipping_collection, "shipping_address_collection")
            countries = shipping_collection.get("allowed_countries")
            if not isinstance(countries, list) or not countries:
                raise _missing("shipping_address_collection[allowed_countries]")
        pi_data = _dict_param(p.get("payment_intent_data", {}), "payment_intent_data")
        lines, currency = self._parse_line_items(p.get("line_items"))
        subtotal = sum(line["amount_subtotal"] for line in lines)

        session_id = _new_id("cs_test_a1", 56)
        session = _session_skeleton()
        session.update(
            {
                "id": session_id,
                "amount_subtotal": subtotal,
                "amount_total": subtotal,
                "cancel_url": p.get("cancel_url") or None,
                "client_reference_id": p.get("client_reference_id") or None,
                "client_secret": (
                    f"{session_id}_secret_{_rand(24)}" if ui_mode != "hosted_page" else None
                ),
                "created": now,
                "currency": currency,
                "customer_email": p.get("customer_email") or None,
                "expires_at": expires_at,
                "locale": p.get("locale") or None,
                "metadata": metadata,
                "mode": mode,
                "redirect_on_completion": redirect if ui_mode != "hosted_page" else None,
                "return_url": (
                    return_url.replace("{CHECKOUT_SESSION_ID}", session_id) if return_url else None
                ),
                "shipping_address_collection": shipping_collection,
                "success_url": p.get("success_url") or None,
                "ui_mode": ui_mode,
                "url": (
                    f"https://checkout.stripe.com/c/pay/{session_id}"
                    if ui_mode == "hosted_page"
                    else None
                ),
            }
        )
        if p.get("billing_address_collection"):
            session["billing_address_collection"] = p["billing_address_collection"]
        if p.get("submit_type"):
            session["submit_type"] = p["submit_type"]
        if isinstance(p.get("payment_method_types"), list):
            session["payment_method_types"] = p["payment_method_types"]
        session["total_details"] = {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0}
        # Kept privately: what payment_intent_data asked for, applied when a PI is made.
        self._pi_data[session_id] = pi_data
        for line in lines:
            line["id"] = _new_id("li_")
        self.sessions[session_id] = session
        self.line_items[session_id] = lines
        return _Result(200, self._expand(session, p.get("expand")))

    def _parse_line_items(self, raw: Any) -> tuple[list[JsonDict], str]:
        if raw in (None, "", []):
            raise _missing("line_items")
        if not isinstance(raw, list):
            raise _invalid("Invalid array", "line_items")
        if len(raw) > 100:
            raise _invalid("You may only specify up to 100 line items.", "line_items")
        currency: str | None = None
        lines: list[JsonDict] = []
        now = _now()
        for i, item in enumerate(raw):
            at = f"line_items[{i}]"
            item = _dict_param(item, at)
            _check_unknown(item, LINE_ITEM_PARAMS, at)
            if "price" in item:
                raise _invalid(
                    f"No such price: '{item['price']}'", f"{at}[price]", "resource_missing"
                )
            if "price_data" not in item:
                raise _invalid(
                    f"You must specify either `price` or `price_data` in {at}.", f"{at}[price_data]"
                )
            pd = _dict_param(item["price_data"], f"{at}[price_data]")
            _check_unknown(pd, PRICE_DATA_PARAMS, f"{at}[price_data]")
            if not pd.get("currency"):
                raise _missing(f"{at}[price_data][currency]")
            cur = _str_param(pd["currency"], f"{at}[price_data][currency]").lower()
            if not re.fullmatch(r"[a-z]{3}", cur):
                raise _invalid(f"Invalid currency: {cur}", f"{at}[price_data][currency]")
            if currency is not None and cur != currency:
                raise _invalid(
                    "Checkout does not support multiple currencies: all line_items must use "
                    f"the same currency ({currency}).",
                    f"{at}[price_data][currency]",
                )
            currency = cur
            if pd.get("unit_amount") in (None, ""):
                raise _missing(f"{at}[price_data][unit_amount]")
            unit_amount = _int_param(pd["unit_amount"], f"{at}[price_data][unit_amount]", minimum=0)
            product_data = pd.get("product_data")
            if not isinstance(product_data, dict) or not product_data.get("name"):
                raise _missing(f"{at}[price_data][product_data][name]")
            if item.get("quantity") in (None, ""):
                raise _missing(f"{at}[quantity]")
            quantity = _int_param(item["quantity"], f"{at}[quantity]", minimum=1)
            amount = unit_amount * quantity
            lines.append(
                {
                    "id": "",
                    "object": "item",
                    "adjustable_quantity": None,
                    "amount_discount": 0,
                    "amount_subtotal": amount,
                    "amount_tax": 0,
                    "amount_total": amount,
                    "currency": cur,
                    "description": product_data["name"],
                    "metadata": _dict_param(item.get("metadata", {}), f"{at}[metadata]"),
                    "price": {
                        "id": _new_id("price_"),
                        "object": "price",
                        "active": False,
                        "billing_scheme": "per_unit",
                        "created": now,
                        "currency": cur,
                        "custom_unit_amount": None,
                        "livemode": False,
                        "lookup_key": None,
                        "metadata": {},
                        "nickname": None,
                        "product": _new_id("prod_", 14),
                        "recurring": None,
                        "tax_behavior": pd.get("tax_behavior", "unspecified"),
                        "tiers_mode": None,
                        "transform_quantity": None,
                        "type": "one_time",
                        "unit_amount": unit_amount,
                        "unit_amount_decimal": str(unit_amount),
                    },
                    "quantity": quantity,
                }
            )
        assert currency is not None
        return lines, currency

    def _line_items_list(self, session_id: str) -> JsonDict:
        return {
            "object": "list",
            "data": copy.deepcopy(self.line_items.get(session_id, [])),
            "has_more": False,
            "url": f"/v1/checkout/sessions/{session_id}/line_items",
        }

    async def _retrieve_session(self, call: _Call, session_id: str) -> _Result:
        _check_unknown(call.params, frozenset({"expand"}))
        session = self._get(self.sessions, "checkout.session", session_id, "id")
        return _Result(200, self._expand(session, call.params.get("expand")))

    async def _line_items(self, call: _Call, session_id: str) -> _Result:
        self._get(self.sessions, "checkout.session", session_id, "id")
        return _Result(200, self._line_items_list(session_id))

    async def _expire_session(self, call: _Call, session_id: str) -> _Result:
        _check_unknown(call.params, frozenset({"expand"}))
        session = self._get(self.sessions, "checkout.session", session_id, "id")
        if session["status"] != "open":
            raise StripeApiError(
                400,
                "invalid_request_error",
                "Only Checkout Sessions with a status in [open] can be expired. This Checkout "
                f"Session has a status of {session['status']}.",
                param="session",
            )
        self._mark_expired(session)
        after: list[Callable[[], Coroutine[Any, Any, Any]]] = []
        if self.send_api_events:
            event = self.build_event(
                "checkout.session.expired",
                session,
                request={"id": call.request_id, "idempotency_key": call.idempotency_key},
            )
            after.append(lambda: self.deliver(event))
        return _Result(200, self._expand(session, call.params.get("expand")), after)

    @staticmethod
    def _mark_expired(session: JsonDict) -> None:
        session["status"] = "expired"
        session["url"] = None

    # ------------------------------------------------ payments and refunds

    def _new_payment(self, session: JsonDict, *, succeeded: bool) -> tuple[JsonDict, JsonDict]:
        """Make the PaymentIntent and Charge a completed Checkout Session has."""
        now = _now()
        pi_id = _new_id("pi_3")
        ch_id = _new_id("ch_3")
        pm_id = _new_id("pm_1")
        amount = int(session["amount_total"])
        currency = session["currency"]
        pi_data = self._pi_data.get(session["id"], {})
        # Stripe copies payment_intent_data[metadata] to the PaymentIntent and charge,
        # never the session's own metadata.
        metadata = dict(pi_data.get("metadata") or {})
        shipping_details = (session.get("collected_information") or {}).get("shipping_details")
        shipping = (
            {
                **copy.deepcopy(shipping_details),
                "carrier": None,
                "phone": None,
                "tracking_number": None,
            }
            if shipping_details
            else None
        )
        email = (session.get("customer_details") or {}).get("email")
        charge: JsonDict = {
            "id": ch_id,
            "object": "charge",
            "amount": amount,
            "amount_captured": amount if succeeded else 0,
            "amount_refunded": 0,
            "application": None,
            "application_fee": None,
            "application_fee_amount": None,
            "balance_transaction": _new_id("txn_3") if succeeded else None,
            "billing_details": {
                "address": _address(None),
                "email": email,
                "name": shipping_details["name"] if shipping_details else None,
                "phone": None,
                "tax_id": None,
            },
            "calculated_statement_descriptor": "ORDERGRAPH",
            "captured": succeeded,
            "created": now,
            "currency": currency,
            "customer": None,
            "description": pi_data.get("description"),
            "disputed": False,
            "failure_balance_transaction": None,
            "failure_code": None,
            "failure_message": None,
            "fraud_details": {},
            "livemode": False,
            "metadata": metadata,
            "on_behalf_of": None,
            "outcome": {
                "network_status": "approved_by_network",
                "reason": None,
                "risk_level": "normal",
                "seller_message": "Payment complete.",
                "type": "authorized",
            },
            "paid": succeeded,
            "payment_intent": pi_id,
            "payment_method": pm_id,
            "payment_method_details": (
                {
                    "card": {
                        "brand": "visa",
                        "country": "US",
                        "exp_month": 8,
                        "exp_year": 2030,
                        "funding": "credit",
                        "last4": "4242",
                        "network": "visa",
                    },
                    "type": "card",
                }
                if succeeded
                else {"type": "us_bank_account", "us_bank_account": {"last4": "6789"}}
            ),
            "receipt_email": email,
            "receipt_number": None,
            "receipt_url": None,
            "refunded": False,
            "review": None,
            "shipping": shipping,
            "source_transfer": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "succeeded" if succeeded else "pending",
            "transfer_data": None,
            "transfer_group": None,
        }
        pi: JsonDict = {
            "id": pi_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_details": {"tip": {}},
            "amount_received": amount if succeeded else 0,
            "application": None,
            "application_fee_amount": None,
            "automatic_payment_methods": None,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": "automatic_async",
            "client_secret": f"{pi_id}_secret_{_rand(25)}",
            "confirmation_method": "automatic",
            "created": now,
            "currency": currency,
            "customer": None,
            "description": pi_data.get("description"),
            "last_payment_error": None,
            "latest_charge": ch_id,
            "livemode": False,
            "metadata": metadata,
            "next_action": None,
            "on_behalf_of": None,
            "payment_method": pm_id,
            "payment_method_configuration_details": None,
            "payment_method_options": {},
            "payment_method_types": list(session.get("payment_method_types") or ["card"]),
            "processing": None,
            "receipt_email": email,
            "review": None,
            "setup_future_usage": None,
            "shipping": shipping,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "succeeded" if succeeded else "processing",
            "transfer_data": None,
            "transfer_group": None,
        }
        self.payment_intents[pi_id] = pi
        self.charges[ch_id] = charge
        return pi, charge

    def _charge_of(self, pi: JsonDict) -> JsonDict:
        return self.charges[pi["latest_charge"]]

    async def _create_refund(self, call: _Call) -> _Result:
        p = call.params
        _check_unknown(p, REFUND_CREATE_PARAMS)
        if p.get("payment_intent"):
            pi = self._get(
                self.payment_intents, "payment_intent", p["payment_intent"], "payment_intent"
            )
            pi_id = pi["id"]
        elif p.get("charge"):
            found = self._get(self.charges, "charge", p["charge"], "charge")
            pi = self.payment_intents[found["payment_intent"]]
            pi_id = pi["id"]
        else:
            raise _invalid("One of `charge` or `payment_intent` is required.", "payment_intent")
        amount = (
            None if p.get("amount") in (None, "") else _int_param(p["amount"], "amount", minimum=1)
        )
        reason = p.get("reason") or None
        if reason is not None and reason not in REFUND_REASONS:
            raise _invalid(f"Invalid reason: must be one of {', '.join(REFUND_REASONS)}", "reason")
        metadata = _dict_param(p.get("metadata", {}), "metadata")
        if pi["status"] != "succeeded":
            raise StripeApiError(
                400,
                "invalid_request_error",
                f"This PaymentIntent ({pi_id}) does not have a successful charge to refund.",
                param="payment_intent",
            )
        charge = self._charge_of(pi)
        if charge["disputed"] and any(
            d["charge"] == charge["id"] and d["status"] not in ("won", "lost", "warning_closed")
            for d in self.disputes.values()
        ):
            raise StripeApiError(
                400,
                "invalid_request_error",
                f"Charge {charge['id']} has been charged back; cannot issue a refund.",
                code="charge_disputed",
            )
        remaining = charge["amount"] - charge["amount_refunded"]
        if remaining <= 0:
            raise StripeApiError(
                400,
                "invalid_request_error",
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        if amount is None:
            amount = remaining
        if amount > remaining:
            cur = charge["currency"]
            what = (
                "charge amount" if charge["amount_refunded"] == 0 else "unrefunded amount on charge"
            )
            raise StripeApiError(
                400,
                "invalid_request_error",
                f"Refund amount ({_format_amount(amount, cur)}) is greater than {what} "
                f"({_format_amount(remaining, cur)})",
                code="amount_too_large",
                param="amount",
            )
        refund: JsonDict = {
            "id": _new_id("re_3"),
            "object": "refund",
            "amount": amount,
            "balance_transaction": _new_id("txn_3"),
            "charge": charge["id"],
            "created": _now(),
            "currency": charge["currency"],
            "destination_details": {
                "card": {
                    "reference_status": "pending",
                    "reference_type": "acquirer_reference_number",
                    "type": "refund",
                },
                "type": "card",
            },
            "metadata": metadata,
            "payment_intent": pi_id,
            "reason": reason,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": "succeeded",
            "transfer_reversal": None,
        }
        self.refunds[refund["id"]] = refund
        previous = {"amount_refunded": charge["amount_refunded"], "refunded": charge["refunded"]}
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        if previous["refunded"] == charge["refunded"]:
            del previous["refunded"]
        after: list[Callable[[], Coroutine[Any, Any, Any]]] = []
        if self.send_api_events:
            event = self.build_event(
                "charge.refunded",
                charge,
                previous_attributes=previous,
                request={"id": call.request_id, "idempotency_key": call.idempotency_key},
            )
            after.append(lambda: self.deliver(event))
        return _Result(200, self._expand(refund, p.get("expand")), after)

    async def _retrieve_refund(self, call: _Call, refund_id: str) -> _Result:
        refund = self._get(self.refunds, "refund", refund_id, "id")
        return _Result(200, self._expand(refund, call.params.get("expand")))

    async def _retrieve_payment_intent(self, call: _Call, pi_id: str) -> _Result:
        pi = self._get(self.payment_intents, "payment_intent", pi_id, "intent")
        return _Result(200, self._expand(pi, call.params.get("expand")))

    async def _retrieve_charge(self, call: _Call, charge_id: str) -> _Result:
        charge = self._get(self.charges, "charge", charge_id, "id")
        return _Result(200, self._expand(charge, call.params.get("expand")))

    async def _retrieve_event(self, call: _Call, event_id: str) -> _Result:
        by_id = {e["id"]: e for e in self.events}
        return _Result(200, copy.deepcopy(self._get(by_id, "event", event_id, "id")))

    # ---------------------------------------------- simulated customer actions

    def _session(self, session_id: str) -> JsonDict:
        session = self.sessions.get(session_id)
        if session is None:
            raise EmulatorError(f"No such checkout.session: '{session_id}'", 404)
        return session

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
    ) -> Delivery:
        """The customer pays: the session completes and ``checkout.session.completed`` is sent.

        ``payment_status="unpaid"`` is a delayed method (bank debit): the PaymentIntent
        stays ``processing`` until :meth:`async_payment_succeeded`/``_failed``.
        ``amount_total`` and ``metadata`` (merged into the session's) let tests forge
        what a tampered or mismatched session would carry. The shipping address is
        ``shipping`` or, when the session collects one, a default US address.
        With ``deliver=False`` the event is built but not sent (status_code 0).
        """
        session = self._session(session_id)
        if session["status"] != "open":
            raise EmulatorError(
                f"Checkout session {session_id} is {session['status']}, not open", 400
            )
        if payment_status not in ("paid", "unpaid"):
            raise ValueError("payment_status must be 'paid' or 'unpaid'")
        if amount_total is not None:
            session["amount_total"] = amount_total
            session["amount_subtotal"] = amount_total
        if metadata:
            session["metadata"] = {**session["metadata"], **metadata}
        if shipping is not None and not isinstance(shipping, dict):
            raise TypeError("shipping must be a dict with name and address")
        if shipping is None and session.get("shipping_address_collection"):
            shipping = DEFAULT_SHIPPING
        shipping_details = (
            {"address": _address(shipping.get("address")), "name": shipping.get("name")}
            if shipping
            else None
        )
        email = customer_email or session.get("customer_email") or DEFAULT_EMAIL
        session["collected_information"] = {
            "business_name": None,
            "individual_name": None,
            "shipping_details": shipping_details,
        }
        session["customer_details"] = {
            "address": _address(shipping_details["address"] if shipping_details else None),
            "business_name": None,
            "email": email,
            "individual_name": None,
            "name": shipping_details["name"] if shipping_details else None,
            "phone": None,
            "tax_exempt": "none",
            "tax_ids": [],
        }
        pi, _ = self._new_payment(session, succeeded=payment_status == "paid")
        session.update(
            {
                "status": "complete",
                "payment_status": payment_status,
                "payment_intent": pi["id"],
                "url": None,
            }
        )
        event = self.build_event("checkout.session.completed", session)
        if not deliver:
            return Delivery(0, "", event)
        return await self.deliver(event)

    def _unpaid_completed(self, session_id: str) -> tuple[JsonDict, JsonDict, JsonDict]:
        session = self._session(session_id)
        if session["status"] != "complete" or session["payment_status"] != "unpaid":
            raise EmulatorError(
                f"Checkout session {session_id} is not complete with payment_status unpaid "
                f"(status {session['status']}, payment_status {session['payment_status']})",
                400,
            )
        pi = self.payment_intents[session["payment_intent"]]
        if pi["status"] != "processing":
            raise EmulatorError(f"PaymentIntent {pi['id']} already settled ({pi['status']})", 400)
        return session, pi, self._charge_of(pi)

    async def async_payment_succeeded(self, session_id: str) -> Delivery:
        """A delayed payment settles: ``checkout.session.async_payment_succeeded``."""
        session, pi, charge = self._unpaid_completed(session_id)
        session["payment_status"] = "paid"
        pi.update({"status": "succeeded", "amount_received": pi["amount"]})
        charge.update(
            {
                "status": "succeeded",
                "paid": True,
                "captured": True,
                "amount_captured": charge["amount"],
                "balance_transaction": _new_id("txn_3"),
            }
        )
        return await self.deliver(
            self.build_event("checkout.session.async_payment_succeeded", session)
        )

    async def async_payment_failed(self, session_id: str) -> Delivery:
        """A delayed payment fails: ``checkout.session.async_payment_failed`` (stays unpaid)."""
        session, pi, charge = self._unpaid_completed(session_id)
        failure = {"code": "insufficient_funds", "message": "The account has insufficient funds."}
        pi.update(
            {
                "status": "requires_payment_method",
                "last_payment_error": {**failure, "type": "card_error"},
            }
        )
        charge.update(
            {
                "status": "failed",
                "failure_code": failure["code"],
                "failure_message": failure["message"],
            }
        )
        return await self.deliver(
            self.build_event("checkout.session.async_payment_failed", session)
        )

    async def expire_session_event(self, session_id: str) -> Delivery:
        """The session runs out of time: it expires and ``checkout.session.expired`` is sent."""
        session = self._session(session_id)
        if session["status"] != "open":
            raise EmulatorError(
                f"Checkout session {session_id} is {session['status']}, not open", 400
            )
        self._mark_expired(session)
        return await self.deliver(self.build_event("checkout.session.expired", session))

    async def dispute(self, payment_intent: str, *, status: str = "needs_response") -> Delivery:
        """The customer disputes the payment: ``charge.dispute.created``.

        A closing status (``won``, ``lost``, ``warning_closed``, ``prevented``) updates the
        open dispute of that payment (or makes one) and sends ``charge.dispute.closed``.
        """
        pi = self.payment_intents.get(payment_intent)
        if pi is None:
            raise EmulatorError(f"No such payment_intent: '{payment_intent}'", 404)
        if pi["status"] != "succeeded":
            raise EmulatorError(f"PaymentIntent {payment_intent} has not succeeded", 400)
        charge = self._charge_of(pi)
        closing = status in ("won", "lost", "warning_closed", "prevented")
        existing = next((d for d in self.disputes.values() if d["charge"] == charge["id"]), None)
        if existing is None or not closing:
            existing = {
                "id": _new_id("dp_1"),
                "object": "dispute",
                "amount": charge["amount"],
                "balance_transactions": [],
                "charge": charge["id"],
                "created": _now(),
                "currency": charge["currency"],
                "evidence_details": {
                    "due_by": _now() + 7 * 24 * 3600,
                    "has_evidence": False,
                    "past_due": False,
                    "submission_count": 0,
                },
                "is_charge_refundable": False,
                "livemode": False,
                "metadata": {},
                "payment_intent": pi["id"],
                "reason": "fraudulent",
                "status": status,
            }
            self.disputes[existing["id"]] = existing
        existing["status"] = status
        charge["disputed"] = True
        kind = "charge.dispute.closed" if closing else "charge.dispute.created"
        return await self.deliver(self.build_event(kind, existing))

    # ------------------------------------------------------------- webhooks

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
        data: JsonDict = {"object": copy.deepcopy(obj)}
        if previous_attributes is not None:
            data["previous_attributes"] = copy.deepcopy(previous_attributes)
        event: JsonDict = {
            "id": _new_id("evt_1"),
            "object": "event",
            "api_version": self.api_version,
            "created": _now(),
            "data": data,
            "livemode": False,
            "pending_webhooks": 1 if self.webhook_url else 0,
            "request": request or {"id": None, "idempotency_key": None},
            "type": event_type,
        }
        self.events.append(event)
        return event

    def signed_headers(
        self, payload: str, *, secret: str | None = None, timestamp: int | None = None
    ) -> dict[str, str]:
        """The headers Stripe puts on a delivery, with ``Stripe-Signature: t=...,v1=...``.

        ``secret``/``timestamp`` override the configured secret and now, to forge
        bad or stale signatures.
        """
        key = secret if secret is not None else self.webhook_secret
        if not key:
            raise ValueError("no webhook secret configured")
        header = stripe.WebhookSignature.generate_signature_header(
            payload, key, timestamp=timestamp
        )
        return {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Cache-Control": "no-cache",
            "Stripe-Signature": header,
        }

    async def deliver(
        self, event: JsonDict | str, *, secret: str | None = None, timestamp: int | None = None
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
        if not self.webhook_url:
            delivery = Delivery(0, "no webhook_url configured", parsed)
        else:
            headers = self.signed_headers(payload, secret=secret, timestamp=timestamp)
            try:
                async with httpx.AsyncClient(timeout=self.webhook_timeout) as http:
                    answer = await http.post(
                        self.webhook_url, content=payload.encode("utf-8"), headers=headers
                    )
                delivery = Delivery(answer.status_code, answer.text, parsed)
            except httpx.HTTPError as exc:
                delivery = Delivery(0, f"{type(exc).__name__}: {exc}", parsed)
        self.deliveries.append(delivery)
        if delivery.status_code == 0 or delivery.status_code >= 300:
            log.info("webhook %s -> %s %s", parsed.get("type"), delivery.status_code, delivery.body)
        return delivery

    # -------------------------------------------------------- control routes

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

    async def _ctl_complete(self, request: Request) -> Response:
        sid = request.path_params["session_id"]

        async def act() -> Delivery:
            body = await self._json_body(request)
            allowed = {"payment_status", "shipping", "customer_email", "amount_total", "metadata"}
            unknown = set(body) - allowed
            if unknown:
                raise EmulatorError(f"unknown fields: {sorted(unknown)}")
            return await self.complete_session(sid, **body)

        return await self._control(act)

    async def _ctl_async_ok(self, request: Request) -> Response:
        return await self._control(
            lambda: self.async_payment_succeeded(request.path_params["session_id"])
        )

    async def _ctl_async_failed(self, request: Request) -> Response:
        return await self._control(
            lambda: self.async_payment_failed(request.path_params["session_id"])
        )

    async def _ctl_expire(self, request: Request) -> Response:
        return await self._control(
            lambda: self.expire_session_event(request.path_params["session_id"])
        )

    async def _ctl_dispute(self, request: Request) -> Response:
        async def act() -> Delivery:
            body = await self._json_body(request)
            return await self.dispute(
                request.path_params["pi"], status=str(body.get("status", "needs_response"))
            )

        return await self._control(act)

    async def _ctl_sessions(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": list(self.sessions.values())})

    async def _ctl_reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"reset": True})

    async def _ctl_faults(self, request: Request) -> Response:
        async def act() -> JsonDict:
            body = await self._json_body(request)
            self.inject_fault(
                str(body.get("mode", "")),
                int(body.get("count", 1)),
                delay=float(body.get("delay", 0.0)),
            )
            return {"pending_faults": [list(f) for f in self._faults]}

        return await self._control(act)

    async def _ctl_requests(self, request: Request) -> Response:
        data = []
        for rec in self.requests:
            item = asdict(rec)
            item["headers"] = _redact(rec.headers)
            data.append(item)
        return JSONResponse({"object": "list", "data": data})

    async def _ctl_events(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": self.events})

    async def _ctl_webhook(self, request: Request) -> Response:
        async def act() -> JsonDict:
            if request.method == "PUT":
                body = await self._json_body(request)
                if "url" in body:
                    self.webhook_url = body["url"] or None
                if "secret" in body:
                    self.webhook_secret = body["secret"] or None
            return {"url": self.webhook_url, "secret": self.webhook_secret}

        return await self._control(act)


def _session_skeleton() -> JsonDict:
    """Every key of a current ``checkout.session`` with the values a new payment session has."""
    return {
        "id": "",
        "object": "checkout.session",
        "adaptive_pricing": {"enabled": False},
        "after_expiration": None,
        "allow_promotion_codes": None,
        "amount_subtotal": None,
        "amount_total": None,
        "automatic_tax": {"enabled": False, "liability": None, "provider": None, "status": None},
        "billing_address_collection": None,
        "branding_settings": None,
        "cancel_url": None,
        "client_reference_id": None,
        "client_secret": None,
        "collected_information": None,
        "consent": None,
        "consent_collection": None,
        "created": 0,
        "currency": None,
        "currency_conversion": None,
        "custom_fields": [],
        "custom_text": {
            "after_submit": None,
            "shipping_address": None,
            "submit": None,
            "terms_of_service_acceptance": None,
        },
        "customer": None,
        "customer_account": None,
        "customer_creation": "if_required",
        "customer_details": None,
        "customer_email": None,
        "discounts": [],
        "expires_at": 0,
        "integration_identifier": None,
        "invoice": None,
        "invoice_creation": {
            "enabled": False,
            "invoice_data": {
                "account_tax_ids": None,
                "custom_fields": None,
                "description": None,
                "footer": None,
                "issuer": None,
                "metadata": {},
                "rendering_options": None,
            },
        },
        "livemode": False,
        "locale": None,
        "managed_payments": None,
        "metadata": {},
        "mode": "payment",
        "origin_context": None,
        "payment_intent": None,
        "payment_link": None,
        "payment_method_collection": "if_required",
        "payment_method_configuration_details": None,
        "payment_method_options": {},
        "payment_method_types": ["card"],
        "payment_status": "unpaid",
        "permissions": None,
        "phone_number_collection": {"enabled": False},
        "presentment_details": None,
        "recovered_from": None,
        "redirect_on_completion": None,
        "return_url": None,
        "saved_payment_method_options": None,
        "setup_intent": None,
        "shipping_address_collection": None,
        "shipping_cost": None,
        "shipping_options": [],
        "status": "open",
        "submit_type": None,
        "subscription": None,
        "success_url": None,
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": "hosted_page",
        "url": None,
        "wallet_options": None,
    }


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
