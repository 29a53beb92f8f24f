"""`ordergraph demo`: two whole purchases, made as clients make them, with their timeline.

A shopper's, followed to delivery (below), then a guest's with a shipping rate, a promotion
code and automatic tax (`ordergraph.demo.guest`; the stack runs with automatic tax on).

It starts the demo stack (SQLite in a fresh temporary directory, in-memory events, the Stripe
emulator, an SMTP sink) on free loopback ports, then talks to it only as the outside world
does: GraphQL over HTTP, the `orderStatusChanged` subscription over `graphql-transport-ws`,
the emulator's "the shopper paid" control, and mail arriving over SMTP. Each step prints when
it finished, how long it took and the order's status; a failed step stops the run with a
non-zero exit. Nothing is kept between runs, so the second run is like the first.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from email.message import EmailMessage
from typing import Any

import httpx
import websockets

from ordergraph.app import create_app
from ordergraph.auth import issue_token
from ordergraph.db import apply_migrations
from ordergraph.demo.guest import figures, guest_purchase
from ordergraph.demo.stack import (
    bound_port,
    loopback_socket,
    seed_catalogue,
    start_mail_sink,
    uvicorn_server,
)
from ordergraph.demo.steps import (
    WAIT_SECONDS,
    Client,
    HookReceiver,
    Stack,
    StepFailed,
    Timeline,
    heard_summary,
    money,
    next_mail,
)
from ordergraph.settings import Settings
from ordergraph.stripe_emulator import StripeEmulator

SHOPPER_EMAIL = "shopper@example.com"

ORDER_FIELDS = """
  id status paymentStatus total { amount currency }
  lines { productName quantity lineTotal { amount } }
  shippingAddress { name line1 city country } trackingNumber carrier
  history { status }
"""
PRODUCTS = "{ products(first: 10) { edges { node { id sku name stock price { amount } } } } }"
ADD_TO_CART = """mutation($p: ID!, $q: Int!) { addToCart(productId: $p, quantity: $q) {
  cart { itemCount total { amount currency } } userErrors { code message } } }"""
CHECKOUT = "mutation { checkout { orderId clientSecret userErrors { code message } } }"
ORDER = "query($id: ID!) { order(id: $id) { %s } }" % ORDER_FIELDS
SUBSCRIBE = "subscription($id: ID!) { orderStatusChanged(orderId: $id) { %s } }" % ORDER_FIELDS
STAFF_ACTIONS = [
    ("markOrderAwaitingShipment", "", "AWAITING_SHIPMENT"),
    ("markOrderShipped", ', trackingNumber: "1Z999AA10123456784", carrier: "UPS"', "SHIPPED"),
    ("markOrderDelivered", "", "DELIVERED"),
]
STAFF_ACTION = """mutation($id: ID!) { %s(orderId: $id%s) {
  order { status paymentStatus } userErrors { code message } } }"""


@asynccontextmanager
async def demo_stack() -> AsyncIterator[Stack]:
    async with AsyncExitStack() as stack:
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="ordergraph-demo-"))
        mail: asyncio.Queue[tuple[float, EmailMessage]] = asyncio.Queue()
        sink = await start_mail_sink(
            lambda message: mail.put_nowait((time.perf_counter(), message))
        )
        stack.push_async_callback(sink.wait_closed)
        stack.callback(sink.close)
        service_socket, emulator_socket, hooks_socket = (loopback_socket() for _ in range(3))
        hooks = HookReceiver()
        url = "http://127.0.0.1:%d" % service_socket.getsockname()[1]
        emulator_url = "http://127.0.0.1:%d" % emulator_socket.getsockname()[1]
        settings = Settings(
            database_url=f"sqlite://{directory}/demo.sqlite3",
            jwt_secret="demo-" + secrets.token_hex(16),
            stripe_secret_key="sk_test_demo",
            stripe_webhook_secret="whsec_demo_" + secrets.token_hex(8),
            stripe_api_base=emulator_url,
            smtp_host="127.0.0.1",
            smtp_port=bound_port(sink),
            frontend_url=url,
            allowed_origins=(url,),
            success_page=True,
            checkout_rate_per_minute=0,
            automatic_tax=True,  # the guest's purchase is taxed (the shopper's, in the US, is not)
            webhook_allow_private_targets=True,  # the shop's system listens on loopback
        )
        await apply_migrations(settings.database_url)
        await seed_catalogue(settings)
        emulator = StripeEmulator(
            webhook_url=f"{url}/webhooks/stripe", webhook_secret=settings.stripe_webhook_secret
        )
        served = (
            (hooks.app(), hooks_socket),
            (emulator.app, emulator_socket),
            (create_app(settings), service_socket),
        )
        for app, sock in served:
            server = uvicorn_server(app)
            task = asyncio.create_task(server.serve(sockets=[sock]))
            stack.push_async_callback(_stop, server, task)
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        hooks_url = "http://127.0.0.1:%d" % hooks_socket.getsockname()[1]
        yield Stack(url, emulator_url, settings, mail, hooks, hooks_url)


async def _stop(server: Any, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await task


class Follower:
    """The `orderStatusChanged` subscription over `graphql-transport-ws`, written out by hand
    (it is a handful of messages), each message timestamped on arrival."""

    def __init__(self, url: str, token: str, order_id: str) -> None:
        self.ws_url = url.replace("http://", "ws://", 1) + "/graphql"
        self.origin = url
        self.token, self.order_id = token, order_id
        self.messages: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()

    async def __aenter__(self) -> Follower:
        self.socket = await websockets.connect(
            self.ws_url,
            subprotocols=[websockets.Subprotocol("graphql-transport-ws")],
            origin=websockets.Origin(self.origin),
        )
        await self.socket.send(
            json.dumps(
                {"type": "connection_init", "payload": {"authorization": f"Bearer {self.token}"}}
            )
        )
        ack = json.loads(await asyncio.wait_for(self.socket.recv(), WAIT_SECONDS))
        if ack.get("type") != "connection_ack":
            raise StepFailed(f"the WebSocket was not acknowledged: {ack}")
        await self.socket.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": SUBSCRIBE, "variables": {"id": self.order_id}},
                }
            )
        )
        self.reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for raw in self.socket:
            message = json.loads(raw)
            if message["type"] == "ping":
                await self.socket.send(json.dumps({"type": "pong"}))
            elif message["type"] == "next":
                order = message["payload"]["data"]["orderStatusChanged"]
                self.messages.put_nowait((time.perf_counter(), order))
            elif message["type"] in ("error", "complete"):
                self.messages.put_nowait((time.perf_counter(), {"error": message}))
                return

    async def until(self, status: str) -> tuple[float, dict[str, Any]]:
        """The first message with `status`, and when it arrived."""
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StepFailed(f"no live message with status {status} in {WAIT_SECONDS:.0f} s")
            try:
                arrived, order = await asyncio.wait_for(self.messages.get(), remaining)
            except TimeoutError:
                continue
            if "error" in order:
                raise StepFailed(f"the subscription ended: {order['error']}")
            if order["status"] == status:
                return arrived, order

    async def __aexit__(self, *exc: object) -> None:
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        await self.socket.close()


async def purchase(stack: Stack, timeline: Timeline) -> dict[str, Any]:
    summary: dict[str, Any] = {"live": [], "mail": []}
    tokens: dict[str, str] = {}

    async def mint_tokens() -> str:
        secret = stack.settings.jwt_secret
        tokens["shopper"] = issue_token(secret, "demo-shopper", SHOPPER_EMAIL)
        tokens["staff"] = issue_token(secret, "demo-staff", "staff@example.com", staff=True)
        return "HS256 bearer tokens for shopper@example.com and staff@example.com"

    await timeline.step("mint tokens", mint_tokens)
    shopper_token, staff_token = tokens["shopper"], tokens["staff"]
    async with AsyncExitStack() as exits:
        http = await exits.enter_async_context(httpx.AsyncClient(timeout=WAIT_SECONDS))
        shopper = Client(http, stack.url, shopper_token)
        staff = Client(http, stack.url, staff_token)
        picked: list[tuple[dict[str, Any], int]] = []
        state: dict[str, Any] = {}

        async def register_hooks() -> str:
            return await stack.hooks.register(staff, stack.hooks_url)

        await timeline.step("staff: a webhook endpoint for the shop's system", register_hooks)

        async def browse() -> str:
            edges = (await shopper(PRODUCTS))["products"]["edges"]
            if len(edges) < 2:
                raise StepFailed(f"the catalogue has {len(edges)} products")
            picked.extend([(edges[0]["node"], 2), (edges[1]["node"], 1)])
            return f"{len(edges)} products listed"

        async def fill_cart() -> str:
            cart: dict[str, Any] = {}
            for product, quantity in picked:
                variables = {"p": product["id"], "q": quantity}
                cart = (await shopper(ADD_TO_CART, variables))["addToCart"]["cart"]
            total = cart["total"]
            names = ", ".join(f"{q} x {p['name']}" for p, q in picked)
            return (
                f"{names}; {cart['itemCount']} items, {money(total['amount'], total['currency'])}"
            )

        async def checkout() -> str:
            result = (await shopper(CHECKOUT))["checkout"]
            if not result["clientSecret"]:
                raise StepFailed("checkout returned no client secret")
            state["order_id"], state["client_secret"] = result["orderId"], result["clientSecret"]
            order = (await shopper(ORDER, {"id": state["order_id"]}))["order"]
            timeline.status = f"{order['status']}/{order['paymentStatus']}"
            state["total"] = money(order["total"]["amount"], order["total"]["currency"])
            return f"order {state['order_id']} created, Stripe session opened"

        async def subscribe() -> str:
            follower = Follower(stack.url, shopper_token, state["order_id"])
            state["follower"] = await exits.enter_async_context(follower)
            _, order = await follower.until("PENDING_PAYMENT")
            summary["live"].append(order["status"])
            return "graphql-transport-ws; first message is the order as it is"

        async def pay() -> str:
            session_id = state["client_secret"].split("_secret_")[0]
            response = await http.post(
                f"{stack.emulator_url}/_emulator/checkout/sessions/{session_id}/complete",
                json={},
            )
            if response.status_code != 200:
                raise StepFailed(f"the emulator answered {response.status_code}: {response.text}")
            state["paid_at"] = time.perf_counter()
            webhook = response.json()
            if webhook["webhook_status"] != 200:
                raise StepFailed(
                    f"the service answered the webhook with {webhook['webhook_status']}: "
                    f"{webhook['webhook_body']}"
                )
            return f"signed webhook {webhook['event']['type']} answered 200"

        async def live_confirmation() -> str:
            arrived, order = await state["follower"].until("PAYMENT_CONFIRMED")
            summary["live"].append(order["status"])
            timeline.status = f"{order['status']}/{order['paymentStatus']}"
            address = order["shippingAddress"] or {}
            delay = (arrived - state["paid_at"]) * 1000
            return (
                f"{delay:.1f} ms after the payment; ships to {address.get('name')}, "
                f"{address.get('city')} {address.get('country')}"
            )

        async def receipt() -> str:
            arrived, message = await _next_mail(stack, "receipt")
            summary["mail"].append(message["Subject"])
            delay = (arrived - state["paid_at"]) * 1000
            return f"{delay:.1f} ms after the payment, to {message['To']}: {message['Subject']!r}"

        await timeline.step("browse the catalogue", browse)
        await timeline.step("fill the cart", fill_cart)
        await timeline.step("checkout", checkout)
        await timeline.step("subscribe to the order", subscribe)
        await timeline.step("pay (the emulator completes the session)", pay)
        await timeline.step("live: payment confirmed", live_confirmation)
        await timeline.step("receipt read from the SMTP sink", receipt)

        for mutation, arguments, status in STAFF_ACTIONS:

            async def act(
                mutation: str = mutation, arguments: str = arguments, status: str = status
            ) -> str:
                began = time.perf_counter()
                await staff(STAFF_ACTION % (mutation, arguments), {"id": state["order_id"]})
                arrived, order = await state["follower"].until(status)
                summary["live"].append(order["status"])
                timeline.status = f"{order['status']}/{order['paymentStatus']}"
                _, message = await _next_mail(stack)
                summary["mail"].append(message["Subject"])
                return (
                    f"{mutation}; live after {(arrived - began) * 1000:.1f} ms; "
                    f"mail {message['Subject']!r}"
                )

            await timeline.step(f"staff: {status}", act)

        async def final_read() -> str:
            order = (await shopper(ORDER, {"id": state["order_id"]}))["order"]
            state["final"] = order
            path = " -> ".join(change["status"] for change in order["history"])
            return f"history {path}"

        await timeline.step("read the order", final_read)

        async def hooks_heard() -> str:
            types = await stack.hooks.of_order(state["order_id"], 2 + len(STAFF_ACTIONS))
            summary["hooks"] = types
            return heard_summary(types)

        await timeline.step("the shop's system heard the order's changes", hooks_heard)
    return {**summary, **state, "staff_token": staff_token}


async def _next_mail(stack: Stack, subject_has: str = "") -> tuple[float, EmailMessage]:
    """The next mail the sink received, and when; it must be the shopper's."""
    return await next_mail(stack, SHOPPER_EMAIL, subject_has)


async def run_purchase_demo() -> int:
    """The whole demo; the process's exit status."""
    print(
        "ordergraph demo: two purchases, made as clients make them\n"
        "(SQLite in a temporary directory, in-memory events, the Stripe emulator, an SMTP sink)\n"
    )
    print(f"{'at':>8}  {'#':>2}  {'took':>11}  {'order status/payment':<24}  step")
    timeline = Timeline()
    try:
        async with AsyncExitStack() as exits:
            try:
                stack = await exits.enter_async_context(demo_stack())
            except Exception as exc:
                raise StepFailed(f"step 0 (start the stack): {type(exc).__name__}: {exc}") from exc
            timeline.line(timeline.started, f"stack up: GraphQL at {stack.url}/graphql")
            stack_hooks = stack.hooks
            result = await purchase(stack, timeline)
            guest = await guest_purchase(stack, timeline, result["staff_token"])
    except StepFailed as exc:
        print(f"\ndemo FAILED after {timeline.elapsed():.2f} s at {exc}", file=sys.stderr)
        return 1
    final = result["final"]
    print(
        f"\ndemo passed: {timeline.steps} steps in {timeline.elapsed():.2f} s\n"
        f"  order        {final['id']}: {final['status']}/{final['paymentStatus']}, "
        f"{result['total']}\n"
        f"  lines        "
        + "; ".join(f"{line['quantity']} x {line['productName']}" for line in final["lines"])
        + f"\n  live         {len(result['live'])} messages: {' -> '.join(result['live'])}\n"
        f"  mail         {len(result['mail'])} received: {'; '.join(result['mail'])}\n"
        f"  tracking     {final['carrier']} {final['trackingNumber']}\n"
        f"  guest order  {guest['final']['id']}: {guest['final']['status']}/"
        f"{guest['final']['paymentStatus']}, {guest['final']['email']}\n"
        f"  guest money  {figures(guest['final'])}; Stripe charged {guest['charged_text']}\n"
        f"  withdrawal   1 unit, {guest['withdrawn']} refunded\n"
        f"  webhooks     {len(stack_hooks.heard)} events heard by the shop's system, "
        f"{sum(ok for _, _, ok in stack_hooks.heard)} with a valid signature"
    )
    return 0
