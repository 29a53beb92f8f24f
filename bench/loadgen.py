"""The load process: closed-loop virtual users against the service, or the asyncpg ceilings.

    .venv/bin/python -m bench.loadgen SPEC.json RESULT.json

Run by `bench.run` in a process of its own, so that the load does not share an interpreter
with the server. HTTP is spoken by hand (keep-alive connections, httptools' parser, uvloop):
a request costs this process a few tens of microseconds, where an HTTP client library costs
several hundred, which on two cores would be taken from the server being measured.

Each of `concurrency` virtual users sends one request, waits for its answer, checks it, then
prepares the next (preparation, such as refilling a cart, is not timed). Only operations that
complete inside the measured window (after `warmup`) count; an answer that fails its check is
an error and not a latency.

Kinds:
- `checkout` / `checkout_sql`: the `checkout` mutation, or the same transaction with asyncpg;
  `mode` `spread` (2 random lines of 10,000 products) or `hot` (the one hot product).
- `webhook` / `webhook_sql`: signed `checkout.session.completed` for seeded PENDING_PAYMENT
  orders, or signature check plus the same transaction with asyncpg.
- `order` / `bare`: the `order` query by its owner, or the bare Starlette endpoint.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import json
import random
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

import asyncpg
import httptools
import stripe

from bench.common import JWT_SECRET, WEBHOOK_SECRET, ensure_users, percentile, product_ids
from ordergraph.auth import issue_token
from ordergraph.stripe_emulator import DEFAULT_API_VERSION, DEFAULT_SHIPPING, _session_skeleton

CHECKOUT_MUTATION = (
    "mutation { checkout { orderId clientSecret order { status total { amount currency } }"
    " userErrors { code message } } }"
)
ORDER_QUERY = (
    "query($id: ID!) { order(id: $id) { id status paymentStatus isLocked createdAt updatedAt"
    " paidAt expiresAt total { amount currency } shippingAddress { name line1 city postalCode"
    " country } lines { productId productName quantity unitPrice { amount currency } lineTotal"
    " { amount currency } } history { status reason at } } }"
)


class BadAnswer(Exception):
    pass


# ------------------------------------------------------------------------ HTTP client


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_connection(cls, host, port)
        protocol.transport = transport  # uvloop calls connection_made a moment later
        return protocol

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        body = b"".join(self.body)
        self.body = []
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionError("connection closed"))

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Caller:
    """One simulated client's connection: each request is timed into the recorder, judged by
    `accept(status, body)`; a broken connection counts as an error and is opened again."""

    def __init__(self, url: SplitResult) -> None:
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.conn: HttpConnection | None = None

    async def __aenter__(self) -> Caller:
        self.conn = await HttpConnection.open(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.conn is not None:
            self.conn.close()

    async def call(
        self, request: bytes, recorder: Recorder, accept: Callable[[int, bytes], bool]
    ) -> bool:
        """Whether an answer came (right or wrong); False after a broken connection."""
        assert self.conn is not None
        started = time.perf_counter()
        try:
            status, answer = await self.conn.request(request)
        except (ConnectionError, OSError) as exc:
            recorder.add(started, time.perf_counter(), False, repr(exc))
            self.conn = await HttpConnection.open(self.host, self.port)
            return False
        finished = time.perf_counter()
        recorder.add(started, finished, accept(status, answer), f"{status} {answer[:300]!r}")
        return True


def http_post(host: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# ----------------------------------------------------------------------- the runner


@dataclass
class Window:
    start: float
    end: float


class Recorder:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.error_samples: list[str] = []
        self.window: Window | None = None
        self.exhausted_at: float | None = None

    def add(self, started: float, finished: float, ok: bool, detail: str = "") -> None:
        window = self.window
        if window is None or not window.start <= finished <= window.end:
            return
        if ok:
            self.latencies.append(finished - started)
        else:
            self.errors += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(detail[:500])


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


Operation = Callable[[], Awaitable[None]]


async def drive(
    users: list[Callable[[Recorder, Callable[[], bool]], Awaitable[None]]],
    warmup: float,
    duration: float,
) -> dict[str, Any]:
    """Run every virtual user until the window closes; summarise what completed in it."""
    recorder = Recorder()
    now = time.perf_counter()
    recorder.window = Window(now + warmup, now + warmup + duration)
    stop_at = recorder.window.end

    def running() -> bool:
        return time.perf_counter() < stop_at

    loop = asyncio.get_running_loop()
    # Tell the runner when the window opens and closes, so that it reads every process's CPU
    # time for the window alone.
    loop.call_later(warmup, _say, "window-start")
    loop.call_later(warmup + duration, _say, "window-end")
    tasks = [asyncio.create_task(user(recorder, running)) for user in users]
    done = await asyncio.gather(*tasks, return_exceptions=True)
    crashed = [d for d in done if isinstance(d, BaseException)]
    end = recorder.window.end
    if recorder.exhausted_at is not None:
        end = min(end, recorder.exhausted_at)
    measured = max(1e-9, end - recorder.window.start)
    lat = [x * 1000 for x in recorder.latencies]
    return {
        "ok": len(lat),
        "errors": recorder.errors,
        "error_samples": recorder.error_samples
        + ["".join(traceback.format_exception(c))[-800:] for c in crashed[:3]],
        "seconds": measured,
        "throughput": len(lat) / measured,
        "p50_ms": percentile(lat, 0.50),
        "p90_ms": percentile(lat, 0.90),
        "p99_ms": percentile(lat, 0.99),
        "max_ms": max(lat) if lat else float("nan"),
        "mean_ms": sum(lat) / len(lat) if lat else float("nan"),
        "exhausted": recorder.exhausted_at is not None,
    }


def pacer(spec: dict[str, Any]) -> Callable[[], Awaitable[None]]:
    """With `rate` in the spec (operations a second over all virtual users), a user's wait
    before each call so that the users start `rate` calls a second between them, evenly
    spread (an open-loop pace, as a shop's traffic arrives); without it, no wait (closed loop:
    the next call as soon as the last one answered). A user behind its pace does not wait."""
    rate = spec.get("rate")
    if not rate:

        async def now() -> None:
            return None

        return now
    interval = spec["concurrency"] / float(rate)
    started = time.perf_counter()
    count = 0

    async def paced() -> None:
        nonlocal count
        count += 1
        wait = started + count * interval - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)

    return paced


# ------------------------------------------------------------------------- checkout


class Shoppers:
    """The shoppers of one checkout run, one per virtual user, each with a cart to refill."""

    def __init__(self, spec: dict[str, Any], pool: asyncpg.Pool) -> None:
        self.spec = spec
        self.pool = pool
        self.hot = spec["mode"] == "hot"
        self.rng = random.Random(spec.get("seed", 1))
        tag = spec["tag"]
        self.users = [f"shopper-{tag}-{i}" for i in range(spec["concurrency"])]
        self.products: list[uuid.UUID] = []
        self.hot_id: uuid.UUID | None = None
        self.prepared: dict[str, list[str]] = {}

    async def setup(self) -> None:
        async with self.pool.acquire() as conn:
            self.products, self.hot_id = await product_ids(conn)
            await ensure_users(conn, self.users)
            await conn.execute(
                "DELETE FROM cart_items WHERE user_id = ANY($1::text[])", list(self.users)
            )
        await asyncio.gather(*(self.refill(u) for u in self.users))

    def lines(self) -> list[uuid.UUID]:
        if self.hot:
            assert self.hot_id is not None
            return [self.hot_id]
        return self.rng.sample(self.products, 2)

    async def refill(self, user: str) -> None:
        """Put the next cart in place (not timed): what the shopper's addToCart calls did."""
        await self.pool.execute(
            "INSERT INTO cart_items (user_id, product_id, quantity, added_at)"
            " SELECT $1, p, 1, now() FROM unnest($2::uuid[]) AS p",
            user,
            self.lines(),
        )

    async def prepare(self, rate: float) -> None:
        """Fill, before the window, enough carts for `rate` checkouts a second over the whole
        run, each under a shopper of its own, so that refilling carts inside the loop (one
        more statement per checkout, through a small pool) cannot cap what is measured."""
        seconds = self.spec["warmup"] + self.spec["duration"]
        per_user = max(1, int(rate * seconds / len(self.users)))
        self.prepared = {u: [f"{u}-{k}" for k in range(per_user)] for u in self.users}
        shoppers = [s for names in self.prepared.values() for s in names]
        for start in range(0, len(shoppers), 20_000):
            chunk = shoppers[start : start + 20_000]
            lines = [self.lines() for _ in chunk]
            width = len(lines[0])
            async with self.pool.acquire() as conn:
                await ensure_users(conn, chunk)
                await conn.execute(
                    "INSERT INTO cart_items (user_id, product_id, quantity, added_at)"
                    " SELECT u, p, 1, now() FROM unnest($1::text[], $2::uuid[]) AS t(u, p)",
                    [s for s in chunk for _ in range(width)],
                    [p for line in lines for p in line],
                )

    async def discard_prepared(self) -> None:
        """Empty the prepared carts left over, so that later scenarios do not carry them."""
        left = [s for names in self.prepared.values() for s in names]
        await self.pool.execute("DELETE FROM cart_items WHERE user_id = ANY($1::text[])", left)
        self.prepared = {}

    async def next_cart(self, user: str) -> str:
        """The shopper whose cart the user checks out next: a prepared one while they last,
        then the user's own, refilled (not timed)."""
        if self.prepared.get(user):
            return self.prepared[user].pop()
        await self.refill(user)
        return user


async def run_checkout(spec: dict[str, Any]) -> dict[str, Any]:
    url = urlsplit(spec["url"])
    pool = await asyncpg.create_pool(spec["database_url"], min_size=4, max_size=8)
    shoppers = Shoppers(spec, pool)
    await shoppers.setup()
    body = json.dumps({"query": CHECKOUT_MUTATION}).encode()

    def user_loop(user: str) -> Callable[[Recorder, Callable[[], bool]], Awaitable[None]]:
        token = issue_token(JWT_SECRET, user, f"{user}@bench.test", ttl_seconds=7200)
        request = http_post(
            url.netloc,
            "/graphql",
            body,
            {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )

        def placed(status: int, answer: bytes) -> bool:
            return status == 200 and b'"orderId":"' in answer and b'"userErrors":[]' in answer

        async def loop(recorder: Recorder, running: Callable[[], bool]) -> None:
            pace = pacer(spec)
            async with Caller(url) as caller:
                while running():
                    await pace()
                    if await caller.call(request, recorder, placed):
                        await shoppers.refill(user)

        return loop

    try:
        return await drive([user_loop(u) for u in shoppers.users], spec["warmup"], spec["duration"])
    finally:
        await pool.close()


CEILING_MAX_CONNECTIONS = 50
# Carts prepared for the checkout ceilings: more checkouts a second than this machine's
# PostgreSQL reaches (about 2,200 with carts prepared).
CEILING_PREPARED_RATE = 5_000


async def ceiling_pool(spec: dict[str, Any]) -> asyncpg.Pool:
    """One connection per virtual user, up to 50: PostgreSQL here allows 100 connections in
    all, shared with whoever else uses the server; above 50 the virtual users queue for one
    (timed: the wait is part of the latency), as the service's requests queue for its pool."""
    size = min(spec["concurrency"], CEILING_MAX_CONNECTIONS)
    pool: asyncpg.Pool = await asyncpg.create_pool(
        spec["database_url"], min_size=size, max_size=size
    )
    return pool


CHECKOUT_SQL = {
    "clear": "DELETE FROM cart_items WHERE user_id = $1 RETURNING product_id, quantity",
    "reserve": (
        "UPDATE products AS p SET stock = p.stock - c.q, updated_at = now()"
        " FROM (SELECT * FROM unnest($1::uuid[], $2::int[]) AS t(id, q) ORDER BY id) AS c"
        " WHERE p.id = c.id AND p.active AND p.stock >= c.q RETURNING p.id, p.name, p.price"
    ),
    "order": (
        "INSERT INTO orders (id, user_id, status, payment_status, version, currency, total,"
        " subtotal, discount, shipping_cost, tax, amount_refunded, is_locked, expires_at,"
        " created_at, updated_at)"
        " VALUES ($1, $2, 'pending_payment', 'pending', 1, 'USD', $3, $3, 0, 0, 0, 0, false,"
        " now() + interval '31 minutes', now(), now())"
    ),
    "lines": (
        "INSERT INTO order_items (order_id, product_id, product_name, unit_price, quantity)"
        " SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::int[], $5::int[])"
    ),
}


async def run_checkout_sql(spec: dict[str, Any]) -> dict[str, Any]:
    """The ceiling: checkout's transaction with asyncpg, one connection per virtual user.

    BEGIN; DELETE the cart RETURNING its lines (reads and clears it, locking its rows);
    one conditional UPDATE ... RETURNING reserving every line (rows in id order); one order
    INSERT; one multi-row line INSERT; COMMIT. The carts are filled before the window
    (`Shoppers.prepare`), so that the loop measures the database alone.
    """
    pool = await asyncpg.create_pool(spec["database_url"], min_size=4, max_size=8)
    shoppers = Shoppers(spec, pool)
    await shoppers.setup()
    await shoppers.prepare(CEILING_PREPARED_RATE)
    work = await ceiling_pool(spec)

    def user_loop(user: str) -> Callable[[Recorder, Callable[[], bool]], Awaitable[None]]:
        async def loop(recorder: Recorder, running: Callable[[], bool]) -> None:
            while running():
                shopper = await shoppers.next_cart(user)
                started = time.perf_counter()
                detail = ""
                async with work.acquire() as conn:
                    try:
                        async with conn.transaction():
                            cart = await conn.fetch(CHECKOUT_SQL["clear"], shopper)
                            if not cart:
                                raise BadAnswer("empty cart")
                            ids = [r["product_id"] for r in cart]
                            qty = [r["quantity"] for r in cart]
                            reserved = await conn.fetch(CHECKOUT_SQL["reserve"], ids, qty)
                            if len(reserved) != len(cart):
                                raise BadAnswer("out of stock")
                            price = {r["id"]: (r["name"], r["price"]) for r in reserved}
                            total = sum(price[i][1] * q for i, q in zip(ids, qty, strict=True))
                            order_id = uuid.uuid4()
                            await conn.execute(CHECKOUT_SQL["order"], order_id, shopper, total)
                            await conn.execute(
                                CHECKOUT_SQL["lines"],
                                order_id,
                                ids,
                                [price[i][0] for i in ids],
                                [price[i][1] for i in ids],
                                qty,
                            )
                        ok = True
                    except (BadAnswer, asyncpg.PostgresError) as exc:
                        ok, detail = False, repr(exc)
                recorder.add(started, time.perf_counter(), ok, detail)

        return loop

    try:
        return await drive([user_loop(u) for u in shoppers.users], spec["warmup"], spec["duration"])
    finally:
        await work.close()
        await shoppers.discard_prepared()
        await pool.close()


# -------------------------------------------------------------------------- webhook


def completed_event(order: asyncpg.Record) -> str:
    """`checkout.session.completed` for a seeded order, as the emulator renders it."""
    now = int(time.time())
    session = _session_skeleton()
    session_id = order["stripe_checkout_session_id"]
    session.update(
        {
            "id": session_id,
            "amount_subtotal": order["total"],
            "amount_total": order["total"],
            "client_reference_id": str(order["id"]),
            "client_secret": f"{session_id}_secret_bench",
            "created": now,
            "currency": "usd",
            "customer_email": f"{order['user_id']}@bench.test",
            "expires_at": now + 1860,
            "metadata": {"order_id": str(order["id"]), "user_id": order["user_id"]},
            "mode": "payment",
            "payment_intent": f"pi_{uuid.uuid4().hex}",
            "payment_status": "paid",
            "redirect_on_completion": "always",
            "return_url": f"http://shop.test/order-success/{order['id']}",
            "shipping_address_collection": {"allowed_countries": ["US"]},
            "status": "complete",
            "ui_mode": "embedded_page",
            "collected_information": {
                "business_name": None,
                "individual_name": None,
                "shipping_details": copy.deepcopy(DEFAULT_SHIPPING),
            },
            "customer_details": {
                "address": DEFAULT_SHIPPING["address"],
                "business_name": None,
                "email": f"{order['user_id']}@bench.test",
                "individual_name": None,
                "name": DEFAULT_SHIPPING["name"],
                "phone": None,
                "tax_exempt": "none",
                "tax_ids": [],
            },
        }
    )
    event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "api_version": DEFAULT_API_VERSION,
        "created": now,
        "data": {"object": session},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": "checkout.session.completed",
    }
    return json.dumps(event, indent=2)


async def webhook_pool(database_url: str, count: int) -> collections.deque[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT id, user_id, total, stripe_checkout_session_id FROM orders"
            " WHERE status = 'pending_payment' AND stripe_checkout_session_id LIKE 'cs_bench_%'"
            " LIMIT $1",
            count,
        )
    finally:
        await conn.close()
    return collections.deque(completed_event(r) for r in rows)


def signature(payload: str) -> str:
    header: str = stripe.WebhookSignature.generate_signature_header(payload, WEBHOOK_SECRET)
    return header


async def run_webhook(spec: dict[str, Any]) -> dict[str, Any]:
    url = urlsplit(spec["url"])
    payloads = await webhook_pool(spec["database_url"], spec["pool"])

    def applied(status: int, answer: bytes) -> bool:
        return status == 200 and b'"applied"' in answer

    async def loop(recorder: Recorder, running: Callable[[], bool]) -> None:
        pace = pacer(spec)
        async with Caller(url) as caller:
            while running():
                await pace()
                if not payloads:
                    recorder.exhausted_at = recorder.exhausted_at or time.perf_counter()
                    return
                payload = payloads.popleft()
                request = http_post(
                    url.netloc,
                    "/webhooks/stripe",
                    payload.encode(),
                    {
                        "Content-Type": "application/json; charset=utf-8",
                        "Stripe-Signature": signature(payload),
                    },
                )
                await caller.call(request, recorder, applied)

    return await drive([loop] * spec["concurrency"], spec["warmup"], spec["duration"])


WEBHOOK_SQL = {
    "dedupe": (
        "INSERT INTO processed_stripe_events (event_id, type, received) VALUES ($1, $2, now())"
        " ON CONFLICT DO NOTHING"
    ),
    "update": (
        "UPDATE orders SET status = 'payment_confirmed', payment_status = 'paid',"
        " version = version + 1, updated_at = now(), paid_at = now(), is_locked = true,"
        " stripe_checkout_session_id = $2, stripe_payment_intent_id = $3, customer_email = $4,"
        " shipping_address = $5::jsonb"
        " WHERE id = $1 AND status = $9 AND payment_status = $10"
        " AND user_id = $6 AND total = $7 AND currency = $8"
        " AND (stripe_checkout_session_id IS NULL OR stripe_checkout_session_id = $2)"
        " RETURNING version, user_id, total"
    ),
    "history": (
        "INSERT INTO order_status_changes (order_id, status, payment_status, reason, actor, at)"
        " VALUES ($1, 'payment_confirmed', 'paid', 'payment received', $2, now())"
    ),
    "tracker": (
        "INSERT INTO payment_trackers (order_id, provider, session_id, payment_intent_id, amount,"
        " currency, status, created) VALUES ($1, 'stripe', $2, $3, $4, $5, 'paid', now())"
    ),
    "lines": (
        "SELECT product_name, quantity, unit_price FROM order_items WHERE order_id = $1 ORDER BY id"
    ),
    "outbox": (
        "INSERT INTO outbox_emails (dedupe_key, order_id, recipient, subject, text_body,"
        " html_body, status, attempts, next_attempt_at, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, now() + interval '1 day', now())"
        " ON CONFLICT (dedupe_key) DO NOTHING"
    ),
}


async def run_webhook_sql(spec: dict[str, Any]) -> dict[str, Any]:
    """The ceiling: verify the signature and parse, then in one transaction: record the event
    id (dedupe), confirm the order with one conditional UPDATE ... RETURNING, its history row,
    the payment tracker, read the lines and queue the receipt in the outbox. (The receipt is
    due tomorrow, so that the idle service's mail sender does not spend the ceiling's CPU
    sending it.)"""
    concurrency = spec["concurrency"]
    payloads = await webhook_pool(spec["database_url"], spec["pool"])
    work = await ceiling_pool(spec)

    async def loop(recorder: Recorder, running: Callable[[], bool]) -> None:
        while running():
            if not payloads:
                recorder.exhausted_at = recorder.exhausted_at or time.perf_counter()
                return
            payload = payloads.popleft()
            header = signature(payload)
            raw = payload.encode()
            started = time.perf_counter()
            detail = ""
            async with work.acquire() as conn:
                try:
                    stripe.WebhookSignature.verify_header(raw.decode(), header, WEBHOOK_SECRET, 300)
                    event = json.loads(raw)
                    session = event["data"]["object"]
                    order_id = uuid.UUID(session["metadata"]["order_id"])
                    shipping = session["collected_information"]["shipping_details"]
                    email = session["customer_details"]["email"]
                    async with conn.transaction():
                        fresh = await conn.execute(
                            WEBHOOK_SQL["dedupe"], event["id"], event["type"]
                        )
                        if fresh.endswith(" 0"):
                            raise BadAnswer("duplicate")
                        row = await conn.fetchrow(
                            WEBHOOK_SQL["update"],
                            order_id,
                            session["id"],
                            session["payment_intent"],
                            email,
                            json.dumps({"name": shipping["name"], **shipping["address"]}),
                            session["metadata"]["user_id"],
                            session["amount_total"],
                            session["currency"].upper(),
                            # Parameters, not literals: with `status = 'pending_payment'` in
                            # the text, PostgreSQL's generic plan for this prepared statement
                            # scans the (status, expires_at) index instead of the primary key.
                            "pending_payment",
                            "pending",
                        )
                        if row is None:
                            raise BadAnswer("order not pending")
                        actor = f"stripe:{event['id']}"
                        await conn.execute(WEBHOOK_SQL["history"], order_id, actor)
                        await conn.execute(
                            WEBHOOK_SQL["tracker"],
                            order_id,
                            session["id"],
                            session["payment_intent"],
                            row["total"],
                            "USD",
                        )
                        lines = await conn.fetch(WEBHOOK_SQL["lines"], order_id)
                        text = "\n".join(
                            f"{r['quantity']} x {r['product_name']}: {r['unit_price']}"
                            for r in lines
                        )
                        await conn.execute(
                            WEBHOOK_SQL["outbox"],
                            f"receipt:{order_id}",
                            order_id,
                            email,
                            f"Your receipt for order {order_id}",
                            text,
                            f"<pre>{text}</pre>",
                        )
                    ok = True
                except (BadAnswer, asyncpg.PostgresError, stripe.SignatureVerificationError) as e:
                    ok, detail = False, repr(e)
                recorder.add(started, time.perf_counter(), ok, detail)

    try:
        return await drive([loop] * concurrency, spec["warmup"], spec["duration"])
    finally:
        await work.close()


# --------------------------------------------------------------------------- reads


async def read_pool(database_url: str, tag: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT id, user_id FROM orders WHERE stripe_checkout_session_id LIKE $1",
            f"cs_bench_{tag}_%",
        )
    finally:
        await conn.close()
    return [(str(r["id"]), r["user_id"]) for r in rows]


async def run_read(spec: dict[str, Any], *, bare: bool) -> dict[str, Any]:
    url = urlsplit(spec["url"])
    pool = await read_pool(spec["database_url"], spec["tag"])
    if not pool:
        raise RuntimeError("no orders to read")
    requests = []
    for order_id, user in pool:
        token = issue_token(JWT_SECRET, user, f"{user}@bench.test", ttl_seconds=7200)
        if bare:
            body = json.dumps({"id": order_id}).encode()
            path = "/order"
        else:
            body = json.dumps({"query": ORDER_QUERY, "variables": {"id": order_id}}).encode()
            path = "/graphql"
        requests.append(
            http_post(
                url.netloc,
                path,
                body,
                {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            )
        )
    rng = random.Random(spec.get("seed", 1))

    def whole_order(status: int, answer: bytes) -> bool:
        return (
            status == 200
            and b'"errors"' not in answer
            and b'"lines":[{' in answer
            and b'"history":[{' in answer
        )

    async def loop(recorder: Recorder, running: Callable[[], bool]) -> None:
        async with Caller(url) as caller:
            while running():
                await caller.call(requests[rng.randrange(len(requests))], recorder, whole_order)

    return await drive([loop] * spec["concurrency"], spec["warmup"], spec["duration"])


RUNNERS: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "checkout": run_checkout,
    "checkout_sql": run_checkout_sql,
    "webhook": run_webhook,
    "webhook_sql": run_webhook_sql,
    "order": lambda spec: run_read(spec, bare=False),
    "bare": lambda spec: run_read(spec, bare=True),
}


def main() -> None:
    spec_path, result_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(RUNNERS[spec["kind"]](spec))
    result["spec"] = {k: v for k, v in spec.items() if k != "database_url"}
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
