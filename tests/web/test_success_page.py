"""The reference success page in a real browser (Debian's Chromium, driven by Playwright).

The page is served by a real `ordergraph serve` process with `SUCCESS_PAGE=true`, whose
`FRONTEND_URL` and allowed origin are its own address (the WebSocket origin check must admit
the page). A second app cannot run inside the test process: the ORM's state is per process, and
the session harness already owns it. The process shares the test database and the Stripe
emulator; Stripe's webhook is pointed at it for the payment.

Without /usr/bin/chromium the browser tests skip, except with CI=true, where they fail.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Page,
    Request,
    WebSocket,
    expect,
)

from ordergraph.models import Order, OrderItem, OrderReturn, Product, ReturnStatus
from ordergraph.stripe_emulator import StripeEmulator
from tests.conftest import OUTPUT_DIR, Harness, Mailbox, SmtpServer, service_env
from tests.utils.helpers import checked_out_order, make_product, stock_of
from tests.utils.live import ServerProcess, eventually, unique
from tests.utils.shop import create_code, offered_rate, upsert_rate

SCREENSHOT = OUTPUT_DIR / "success-page-confirmed.png"
WITHDRAWAL_SCREENSHOT = OUTPUT_DIR / "success-page-withdrawal-phone.png"
TIMEOUT_MS = 10_000


@asynccontextmanager
async def _page_server(
    database_url: str, emulator_url: str, smtp: SmtpServer, name: str, **env: str
) -> AsyncIterator[ServerProcess]:
    """The service with the success page on, serving the page from its own origin."""
    process = ServerProcess(
        service_env(
            database_url,
            emulator_url,
            smtp.port,
            SUCCESS_PAGE="true",
            SWEEP_INTERVAL_SECONDS="0",
            **env,
        ),
        name,
    )
    # The port is known only now: the page's origin is the process's own address.
    process.env.update(FRONTEND_URL=process.url, ALLOWED_ORIGINS=process.url)
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


@pytest.fixture(scope="module")
async def shop(
    harness: Harness,
    database_url: str,
    stripe_server: tuple[StripeEmulator, str],
    smtp: SmtpServer,
) -> AsyncIterator[ServerProcess]:
    async with _page_server(database_url, stripe_server[1], smtp, "success-page") as process:
        yield process


@pytest.fixture(scope="module")
async def taxed_shop(
    harness: Harness,
    database_url: str,
    stripe_server: tuple[StripeEmulator, str],
    smtp: SmtpServer,
) -> AsyncIterator[ServerProcess]:
    """The same with automatic tax on (`AUTOMATIC_TAX=true`)."""
    async with _page_server(
        database_url, stripe_server[1], smtp, "success-page-tax", AUTOMATIC_TAX="true"
    ) as process:
        yield process


@dataclass
class Watch:
    """What the page did on the network and in its console."""

    queries: int = 0
    sync_calls: int = 0
    sockets: list[str] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on("request", self._request)
        page.on("websocket", self._websocket)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))

    def _request(self, request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/graphql"):
            self.queries += 1
            if _is_sync(request):
                self.sync_calls += 1

    def _websocket(self, socket: WebSocket) -> None:
        self.sockets.append(socket.url)
        socket.on("framereceived", lambda payload: self.received.append(json.loads(payload)))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text}")

    def pushed_statuses(self) -> list[str]:
        """The statuses the subscription delivered, in order."""
        return [
            m["payload"]["data"]["orderStatusChanged"]["status"]
            for m in self.received
            if m.get("type") == "next"
        ]


def _is_sync(request: Request) -> bool:
    return request.url.endswith("/graphql") and "syncOrderPayment" in (request.post_data or "")


async def _new_page(browser: Browser) -> tuple[Page, Watch]:
    context = await browser.new_context(
        locale="en-US", timezone_id="UTC", viewport={"width": 760, "height": 600}
    )
    page = await context.new_page()
    watch = Watch()
    watch.attach(page)
    return page, watch


async def test_the_page_shows_the_payment_as_it_lands_without_a_reload(
    browser: Browser, shop: ServerProcess, app: Harness
) -> None:
    """Stripe returns the shopper before its webhook lands: the page must show the pending
    order, then the confirmed one when the webhook arrives, pushed over its subscription (no
    reload, no polling), and ask Stripe through syncOrderPayment exactly once."""
    shopper = app.token(unique("shopper"))
    product = await make_product(unique("TEE"), price=2500, name="Organic cotton tee")
    placed = await checked_out_order(dataclasses.replace(app, url=shop.url), shopper, product, 2)
    order = await Order.get(id=placed["orderId"])
    session_id = order.stripe_checkout_session_id
    assert session_id is not None
    # Where Stripe sends the shopper back: FRONTEND_URL/order-success/{id}?session_id=...
    return_url = app.emulator.sessions[session_id]["return_url"]
    return_url = return_url.replace("{CHECKOUT_SESSION_ID}", session_id)
    assert return_url.startswith(f"{shop.url}/order-success/{order.id}?session_id=cs_")

    page, watch = await _new_page(browser)
    try:
        async with page.expect_response(lambda r: _is_sync(r.request)) as synced:
            response = await page.goto(f"{return_url}#token={shopper}")
        assert response is not None and response.status == 200
        assert "script-src 'sha256-" in response.headers["content-security-policy"]
        assert (await synced.value).ok

        status = page.get_by_test_id("status")
        await expect(status).to_have_text("PENDING_PAYMENT", timeout=TIMEOUT_MS)
        await expect(page.get_by_test_id("live")).to_have_text("live", timeout=TIMEOUT_MS)
        await page.evaluate("window.__noReload = true")
        assert "token" not in page.url, "the token must leave the address bar"

        with app.stripe_webhooks_to(shop.url):
            delivery = await app.emulator.complete_session(session_id)
        assert delivery.status_code == 200, delivery.body

        await expect(status).to_have_text("PAYMENT_CONFIRMED", timeout=TIMEOUT_MS)
        await expect(page.get_by_test_id("payment-status")).to_have_text("PAID")
        await expect(page.get_by_test_id("status-message")).to_have_text(
            "Payment received — we're preparing your order."
        )
        await expect(page.get_by_test_id("total")).to_have_text("$50.00")
        for figure in ("subtotal", "discount", "shipping", "tax"):  # the lines say it all
            await expect(page.get_by_test_id(figure)).to_be_hidden()
        await expect(page.locator("#lines tr")).to_have_text(["Organic cotton tee2$25.00$50.00"])
        address = page.get_by_test_id("shipping-address")
        assert (await address.inner_text()).splitlines() == [
            "Jenny Rosen",
            "510 Townsend St",
            "San Francisco, CA 94103",
            "US",
        ]
        await expect(page.get_by_test_id("history").locator("li")).to_have_count(2)
        await expect(page.get_by_test_id("live")).to_have_text("live")

        # The copies race (query, syncOrderPayment, subscription); a late, older one must not
        # undo the newer. The race cannot be forced from outside: hand the page a stale copy.
        pending = next(m for m in watch.received if m.get("type") == "next")
        await page.evaluate("message => accept(message.payload.data.orderStatusChanged)", pending)
        await expect(status).to_have_text("PAYMENT_CONFIRMED")

        assert await page.evaluate("window.__noReload") is True
        assert watch.pushed_statuses()[-1] == "PAYMENT_CONFIRMED", watch.received
        assert watch.sync_calls == 1
        assert len(watch.sockets) == 1, watch.sockets
        assert watch.problems == []

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=SCREENSHOT, full_page=True)
        print(f"screenshot: {SCREENSHOT}")
    finally:
        await page.context.close()


async def test_a_stranger_and_a_missing_token_see_no_order(
    browser: Browser, shop: ServerProcess, app: Harness
) -> None:
    """Someone else's token on the shopper's link must show nothing of the order, only that it
    was not found (as the API answers: the order is not theirs to know of); no token at all asks
    the visitor to sign in."""
    owner = app.token(unique("owner"))
    product = await make_product(unique("LAMP"), price=4200, name="Brass desk lamp")
    placed = await checked_out_order(dataclasses.replace(app, url=shop.url), owner, product)
    page_url = f"{shop.url}/order-success/{placed['orderId']}"

    page, watch = await _new_page(browser)
    try:
        await page.goto(f"{page_url}#token={app.token(unique('mallory'))}")
        error = page.get_by_test_id("error")
        await expect(error).to_contain_text("couldn't find this order", timeout=TIMEOUT_MS)
        await expect(error).to_contain_text("NOT_FOUND")
        await expect(page.get_by_test_id("live")).to_have_text("offline")
        await expect(page.get_by_test_id("status")).to_be_hidden()
        assert await page.get_by_test_id("status").text_content() == ""
        assert await page.locator("#lines tr").count() == 0
        assert "Brass desk lamp" not in await page.locator("body").inner_text()
        assert watch.problems == []
    finally:
        await page.context.close()

    page, _ = await _new_page(browser)
    try:
        await page.goto(page_url)
        error = page.get_by_test_id("error")
        await expect(error).to_contain_text("sign in", timeout=TIMEOUT_MS)
        await expect(error).to_contain_text("UNAUTHENTICATED")
        await expect(page.get_by_test_id("status")).to_be_hidden()
    finally:
        await page.context.close()


async def test_a_mails_link_opens_the_order_without_signing_in(
    browser: Browser, shop: ServerProcess, app: Harness
) -> None:
    """A mail's link carries the order's access token (?access=...): the page reads and follows
    that order with it, with no bearer token, and leaves syncing the payment to the shopper."""
    owner = app.token(unique("owner"))
    product = await make_product(unique("MUG"), price=1200, name="Stoneware mug")
    at_shop = dataclasses.replace(app, url=shop.url)
    placed = await checked_out_order(at_shop, owner, product)
    body = await at_shop.gql(
        "query($o: ID!) { order(id: $o) { accessToken } }", {"o": placed["orderId"]}, token=owner
    )
    access = body["data"]["order"]["accessToken"]
    assert access, body

    page, watch = await _new_page(browser)
    try:
        response = await page.goto(f"{shop.url}/order-success/{placed['orderId']}?access={access}")
        assert response is not None and response.status == 200
        await expect(page.get_by_test_id("status")).to_have_text(
            "PENDING_PAYMENT", timeout=TIMEOUT_MS
        )
        await expect(page.get_by_test_id("live")).to_have_text("live", timeout=TIMEOUT_MS)
        await expect(page.locator("#lines tr")).to_have_count(1)
        assert watch.pushed_statuses() == ["PENDING_PAYMENT"], watch.received
        assert watch.sync_calls == 0
        assert watch.problems == []
    finally:
        await page.context.close()


async def test_a_guests_link_shows_shipping_discount_and_tax(
    browser: Browser, taxed_shop: ServerProcess, app: Harness, mailbox: Mailbox
) -> None:
    """A guest pays with a shipping rate, a promotion code and tax (Germany, 19 %): the
    receipt's link (?access=..., no bearer token) opens the confirmed order with what Stripe
    charged, line by line as the receipt says it."""
    at_shop = dataclasses.replace(app, url=taxed_shop.url)
    code = unique("save20").upper()
    assert (await create_code(app, code=code, percentOff=20))["userErrors"] == []
    for name, amount in (("Standard", 500), ("Express", 1500)):
        assert (await upsert_rate(app, name=name, amount=amount))["userErrors"] == []
    app.emulator.set_tax_rates({"US": 0, "DE": 1900, "FR": 2000, "GB": 2000})
    email = f"{unique('gina')}@example.com"
    started = await at_shop.gql(
        "mutation($e: String) { startGuestSession(email: $e) { token } }", {"e": email}
    )
    guest = started["data"]["startGuestSession"]["token"]
    assert guest, started
    product = await make_product(unique("TEE"), price=2500, name="Organic cotton tee")
    placed = await checked_out_order(at_shop, guest, product, 2)
    order = await Order.get(id=placed["orderId"])
    session_id = order.stripe_checkout_session_id
    assert session_id is not None

    with app.stripe_webhooks_to(taxed_shop.url):
        delivery = await app.emulator.complete_session(
            session_id,
            shipping_rate=offered_rate(app, session_id, "Express"),
            promotion_code=code.lower(),
            country="DE",
            shipping={
                "name": "Gina Guest",
                "address": {"line1": "Unter den Linden 1", "city": "Berlin",
                            "postal_code": "10117", "country": "DE"},
            },
        )  # fmt: skip
    assert delivery.status_code == 200, delivery.body
    # 2 x 25.00 = 50.00; 20 % off: 10.00; Express 15.00; tax 19 % of 40.00 and of 15.00.
    assert app.emulator.sessions[session_id]["amount_total"] == 6545

    [receipt] = [m for m in await mailbox.wait_for(1) if m["X-Envelope-To"] == email]
    body = receipt.get_body(preferencelist=("plain",))
    assert body is not None
    link = re.search(r"/order-success/([0-9a-f-]{36})\?access=([^\s\"<]+)", body.get_content())
    assert link and link.group(1) == str(order.id), body.get_content()

    page, watch = await _new_page(browser)
    try:
        response = await page.goto(f"{taxed_shop.url}{link.group(0)}")
        assert response is not None and response.status == 200
        await expect(page.get_by_test_id("status")).to_have_text(
            "PAYMENT_CONFIRMED", timeout=TIMEOUT_MS
        )
        await expect(page.get_by_test_id("payment-status")).to_have_text("PAID")
        await expect(page.locator("#lines tr")).to_have_text(["Organic cotton tee2$25.00$50.00"])
        await expect(page.get_by_test_id("subtotal")).to_have_text("$50.00")
        await expect(page.get_by_test_id("discount-label")).to_have_text(f"Discount ({code})")
        await expect(page.get_by_test_id("discount")).to_have_text("-$10.00")
        await expect(page.get_by_test_id("shipping-label")).to_have_text("Shipping (Express)")
        await expect(page.get_by_test_id("shipping")).to_have_text("$15.00")
        await expect(page.get_by_test_id("tax")).to_have_text("$10.45")
        await expect(page.get_by_test_id("total")).to_have_text("$65.45")
        address = page.get_by_test_id("shipping-address")
        await expect(address).to_contain_text("Berlin")
        await expect(page.get_by_test_id("live")).to_have_text("live", timeout=TIMEOUT_MS)
        assert watch.sync_calls == 0  # no bearer token: the payment is not the page's to sync
        assert watch.problems == []  # the Content-Security-Policy admitted the page's script
    finally:
        await page.context.close()


async def test_the_page_is_not_served_unless_enabled(harness: Harness) -> None:
    """A production shop serves its own success page: by default this one does not exist."""
    response = await harness.http.get(f"{harness.url}/order-success/x")
    assert response.status_code == 404


async def test_after_a_lost_connection_the_first_message_brings_what_was_missed(
    browser: Browser, shop: ServerProcess, app: Harness
) -> None:
    """The payment lands while the page's server is down (the webhook reaches another
    instance): the page must say it is reconnecting, come back on its own, and show the change
    from the new subscription's first message, without querying again."""
    shopper = app.token(unique("shopper"))
    product = await make_product(unique("MUG"), price=1200, name="Stoneware mug")
    placed = await checked_out_order(dataclasses.replace(app, url=shop.url), shopper, product)
    order = await Order.get(id=placed["orderId"])
    assert order.stripe_checkout_session_id is not None

    page, watch = await _new_page(browser)
    try:
        async with page.expect_response(lambda r: _is_sync(r.request)):
            await page.goto(f"{shop.url}/order-success/{order.id}#token={shopper}")
        status, live = page.get_by_test_id("status"), page.get_by_test_id("live")
        await expect(status).to_have_text("PENDING_PAYMENT", timeout=TIMEOUT_MS)
        await expect(live).to_have_text("live", timeout=TIMEOUT_MS)

        await shop.stop()
        await expect(live).to_have_text("reconnecting…", timeout=TIMEOUT_MS)
        delivery = await app.emulator.complete_session(order.stripe_checkout_session_id)
        assert delivery.status_code == 200, delivery.body  # applied by the harness's instance
        await shop.start()
        # The page's next try may be up to 15 s away (backoff); a browser that regains its
        # network says so, and the page tries at once.
        await page.evaluate("window.dispatchEvent(new Event('online'))")

        await expect(status).to_have_text("PAYMENT_CONFIRMED", timeout=TIMEOUT_MS)
        await expect(live).to_have_text("live")
        assert len(watch.sockets) >= 2, watch.sockets
        assert (watch.queries, watch.sync_calls) == (2, 1)  # the order query and the sync only
    finally:
        await page.context.close()


# ---------------------------------------------------------------- withdrawal (EU, two steps)

STAFF_ACTION = "mutation($id: ID!) { %s(orderId: $id) { order { status } userErrors { code } } }"
SHIP = """mutation($id: ID!) {
  markOrderShipped(orderId: $id, trackingNumber: "1Z999", carrier: "UPS") {
    order { status } userErrors { code }
  }
}"""
RECEIVE = """mutation($id: ID!) {
  receiveReturn(returnId: $id) { orderReturn { status } userErrors { code message } }
}"""
ORDER_LINK = re.compile(r"/order-success/([0-9a-f-]{36})\?access=([^\s\"<]+)")
# The page writes "2 \u00d7 Stoneware mug" (a multiplication sign).
TIMES = "\u00d7"
# A time as en-US writes it ("Nov 26, 2026, 2:29 PM"), whatever space precedes the PM.
SHOWN_TIME = re.compile(r"^[A-Z][a-z]{2} \d{1,2}, \d{4}, \d{1,2}:\d{2}\s?[AP]M$")


async def _paid_order(
    app: Harness, shop: ServerProcess, mailbox: Mailbox, product: Product, quantity: int
) -> tuple[str, str, str]:
    """A shopper's order paid at Stripe: (order id, shopper's token, the receipt's link path)."""
    shopper = app.token(unique("shopper"))
    placed = await checked_out_order(
        dataclasses.replace(app, url=shop.url), shopper, product, quantity
    )
    order = await Order.get(id=placed["orderId"])
    assert order.stripe_checkout_session_id is not None
    delivery = await app.emulator.complete_session(order.stripe_checkout_session_id)
    assert delivery.status_code == 200, delivery.body
    receipt = await _mail(mailbox, f"Your receipt for order {str(order.id)[:8]}")
    link = ORDER_LINK.search(_text(receipt))
    assert link and link.group(1) == str(order.id), _text(receipt)
    return str(order.id), shopper, link.group(0)


async def _deliver(app: Harness, order_id: str) -> None:
    """Staff pack, ship and deliver the order through the API."""
    staff = app.token("sam", staff=True)
    for action in (
        STAFF_ACTION % "markOrderAwaitingShipment",
        SHIP,
        STAFF_ACTION % "markOrderDelivered",
    ):
        body = await app.gql(action, {"id": order_id}, token=staff)
        assert [p["userErrors"] for p in body["data"].values()] == [[]], body


async def _mail(mailbox: Mailbox, subject: str) -> EmailMessage:
    async def find() -> EmailMessage | None:
        return next((m for m in mailbox.messages if m["Subject"] == subject), None)

    found: EmailMessage | None = await eventually(find)
    assert found is not None, (subject, [m["Subject"] for m in mailbox.messages])
    return found


def _text(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    content: str = body.get_content()
    return content


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def _only_return(order_id: str) -> OrderReturn:
    [order_return] = await OrderReturn.filter(order_id=order_id)
    return order_return


async def test_a_shopper_withdraws_on_the_success_page_and_sees_the_acknowledgement(
    browser: Browser, shop: ServerProcess, app: Harness, mailbox: Mailbox
) -> None:
    """Before the order ships, the receipt's link (?access=..., no bearer token) opens the
    order; "Withdraw" asks for the withdrawal of everything, "Confirm withdrawal" makes it: the
    page acknowledges it with its time, and the shop refunds at once (Stripe), restocks, records
    the return as refunded and mails the acknowledgement."""
    product = await make_product(unique("MUG"), price=1200, stock=10, name="Stoneware mug")
    order_id, _, link = await _paid_order(app, shop, mailbox, product, 2)
    assert await stock_of(product) == 8

    page, watch = await _new_page(browser)
    try:
        response = await page.goto(f"{shop.url}{link}")
        assert response is not None and response.status == 200
        await expect(page.get_by_test_id("status")).to_have_text(
            "PAYMENT_CONFIRMED", timeout=TIMEOUT_MS
        )
        await expect(page.get_by_test_id("live")).to_have_text("live", timeout=TIMEOUT_MS)
        await expect(page.get_by_test_id("returns")).to_be_hidden()

        # Step 1: the request binds nothing yet, and says so.
        await page.get_by_test_id("withdraw").click()
        confirm = page.get_by_test_id("confirm-withdrawal")
        await expect(confirm).to_be_visible(timeout=TIMEOUT_MS)
        await expect(confirm).to_be_focused()
        await expect(page.get_by_test_id("confirm-lines").locator("li")).to_have_text(
            [f"2 {TIMES} Stoneware mug"]
        )
        returns = page.get_by_test_id("returns").locator("li[data-status]")
        await expect(returns).to_have_count(1)
        await expect(returns.get_by_test_id("return-status")).to_have_text("REQUESTED")
        await expect(returns.get_by_test_id("return-text")).to_have_text(
            "Waiting for your confirmation."
        )
        requested = await _only_return(order_id)
        assert requested.status == ReturnStatus.REQUESTED and requested.confirmed_at is None
        assert await stock_of(product) == 8

        # Put off, then taken up again: the same request, not a second one.
        await page.get_by_test_id("cancel-withdrawal").click()
        await expect(confirm).to_be_hidden()
        await expect(page.get_by_test_id("withdraw")).to_be_focused()
        await page.get_by_test_id("withdraw").click()
        await expect(confirm).to_be_visible()
        assert (await _only_return(order_id)).id == requested.id

        # Step 2: confirmed, and (nothing shipped yet) refunded at once.
        await confirm.click()
        ack = page.get_by_test_id("withdrawal-ack")
        await expect(ack).to_be_visible(timeout=TIMEOUT_MS)
        await expect(ack).to_be_focused()
        await expect(ack).to_contain_text("Withdrawal confirmed")
        # Inside a live region that was there before it appeared: screen readers announce it.
        assert await page.locator("[aria-live] [data-testid=withdrawal-ack]").count() == 1
        await expect(page.get_by_test_id("withdrawal-lines").locator("li")).to_have_text(
            [f"2 {TIMES} Stoneware mug"]
        )
        await expect(page.get_by_test_id("withdrawal-outcome")).to_contain_text(
            "We have refunded $24.00"
        )
        await expect(returns.get_by_test_id("return-status")).to_have_text("REFUNDED")
        await expect(returns.get_by_test_id("return-text")).to_have_text("Refunded $24.00.")
        await expect(page.get_by_test_id("payment-status")).to_have_text("REFUNDED")
        await expect(page.get_by_test_id("withdraw")).to_be_hidden()  # nothing left to withdraw
        await expect(page.get_by_test_id("withdrawal-error")).to_be_hidden()

        refunded = await _only_return(order_id)
        assert refunded.id == requested.id
        assert refunded.status == ReturnStatus.REFUNDED
        assert refunded.is_withdrawal
        assert refunded.refunded_amount == 2400
        assert refunded.confirmed_at is not None
        assert [(str(line["product_id"]), line["quantity"]) for line in refunded.lines] == [
            (str(product.id), 2)
        ]
        # The time on the page is the one the shop recorded, in the reader's format.
        shown = page.get_by_test_id("withdrawal-time")
        stamp = await shown.get_attribute("datetime")
        assert stamp and datetime.fromisoformat(stamp) == _utc(refunded.confirmed_at), stamp
        assert SHOWN_TIME.match((await shown.inner_text()).strip()), await shown.inner_text()

        assert await stock_of(product) == 10  # never left the shop: back on the shelf
        [item] = await OrderItem.filter(order_id=order_id)
        assert item.quantity_refunded == 2
        order = await Order.get(id=order_id)
        assert order.amount_refunded == 2400
        assert [(r["amount"], r["payment_intent"]) for r in app.emulator.refunds.values()] == [
            (2400, order.stripe_payment_intent_id)
        ]

        mail = await _mail(mailbox, f"Withdrawal confirmed for order {order_id[:8]}")
        text = _text(mail)
        assert order_id in text and str(refunded.id) in text, text
        assert "Stoneware mug" in text, text
        assert refunded.confirmed_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") in text, text

        # Phone-sized: everything fits the width.
        await page.set_viewport_size({"width": 375, "height": 740})
        overflow = await page.evaluate("document.documentElement.scrollWidth - innerWidth")
        assert overflow <= 0, overflow
        WITHDRAWAL_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=WITHDRAWAL_SCREENSHOT, full_page=True)
        assert watch.sync_calls == 0
        assert watch.problems == []
    finally:
        await page.context.close()


async def test_after_delivery_a_withdrawal_of_some_units_waits_for_the_goods(
    browser: Browser, shop: ServerProcess, app: Harness, mailbox: Mailbox
) -> None:
    """Delivered: the shopper (signed in) withdraws from one of two units. The page shows the
    deadline, the confirmed return (the shop refunds once the goods arrive) and still offers
    the unit left; nothing is refunded or restocked yet. When staff receive the goods, the page
    shows the refund as it happens, pushed over its subscription."""
    product = await make_product(unique("TEE"), price=2500, stock=10, name="Organic cotton tee")
    order_id, shopper, _ = await _paid_order(app, shop, mailbox, product, 2)
    await _deliver(app, order_id)
    delivered_at = (await Order.get(id=order_id)).delivered_at
    assert delivered_at is not None

    page, watch = await _new_page(browser)
    try:
        await page.goto(f"{shop.url}/order-success/{order_id}#token={shopper}")
        await expect(page.get_by_test_id("status")).to_have_text("DELIVERED", timeout=TIMEOUT_MS)
        deadline = page.get_by_test_id("withdrawal-terms").locator("time")
        stamp = await deadline.get_attribute("datetime")
        assert stamp and datetime.fromisoformat(stamp) == _utc(delivered_at) + timedelta(days=14)

        await page.get_by_text("Only some items?").click()
        await page.get_by_label("How many of Organic cotton tee").fill("1")
        await page.get_by_test_id("withdraw").click()
        await expect(page.get_by_test_id("confirm-lines").locator("li")).to_have_text(
            [f"1 {TIMES} Organic cotton tee"], timeout=TIMEOUT_MS
        )
        await page.get_by_test_id("confirm-withdrawal").click()

        ack = page.get_by_test_id("withdrawal-ack")
        await expect(ack).to_be_visible(timeout=TIMEOUT_MS)
        await expect(ack).to_contain_text("Withdrawal confirmed")
        await expect(page.get_by_test_id("withdrawal-outcome")).to_contain_text(
            "please send the items back"
        )
        returns = page.get_by_test_id("returns").locator("li[data-status]")
        await expect(returns.get_by_test_id("return-status")).to_have_text("CONFIRMED")
        await expect(returns.get_by_test_id("return-text")).to_contain_text(
            "please send the items back"
        )
        await expect(page.get_by_test_id("payment-status")).to_have_text("PAID")
        await expect(page.get_by_test_id("withdraw")).to_be_visible()  # one unit is left

        confirmed = await _only_return(order_id)
        assert confirmed.status == ReturnStatus.CONFIRMED
        assert confirmed.refunded_amount is None and confirmed.confirmed_at is not None
        assert [line["quantity"] for line in confirmed.lines] == [1]
        [item] = await OrderItem.filter(order_id=order_id)
        assert (item.quantity_refunded, item.quantity_returning) == (0, 1)
        assert await stock_of(product) == 8  # still with the shopper
        assert app.emulator.refunds == {}
        mail = await _mail(mailbox, f"Withdrawal confirmed for order {order_id[:8]}")
        assert "Organic cotton tee" in _text(mail)

        # The goods arrive; staff act on the page's own server (events are per process here).
        await page.evaluate("window.__noReload = true")
        staff = app.token("sam", staff=True)
        at_shop = dataclasses.replace(app, url=shop.url)
        body = await at_shop.gql(RECEIVE, {"id": str(confirmed.id)}, token=staff)
        assert body["data"]["receiveReturn"]["userErrors"] == [], body
        await expect(returns.get_by_test_id("return-status")).to_have_text(
            "REFUNDED", timeout=TIMEOUT_MS
        )
        await expect(returns.get_by_test_id("return-text")).to_have_text("Refunded $25.00.")
        await expect(page.get_by_test_id("payment-status")).to_have_text("PARTIALLY_REFUNDED")
        await expect(page.get_by_test_id("withdraw")).to_be_visible()
        assert await page.evaluate("window.__noReload") is True
        pushed = [
            r["status"]
            for m in watch.received
            if m.get("type") == "next"
            for r in m["payload"]["data"]["orderStatusChanged"]["returns"]
        ]
        assert pushed[-1:] == ["REFUNDED"], watch.received
        assert await stock_of(product) == 9
        assert watch.problems == []
    finally:
        await page.context.close()


async def test_a_withdrawal_after_the_period_is_refused_on_the_page(
    browser: Browser, shop: ServerProcess, app: Harness, mailbox: Mailbox
) -> None:
    """The period ends while the page is open: "Withdraw" answers that the period is over,
    the button goes, and no return is recorded."""
    product = await make_product(unique("LAMP"), price=4200, name="Brass desk lamp")
    order_id, _, link = await _paid_order(app, shop, mailbox, product, 1)
    await _deliver(app, order_id)

    page, watch = await _new_page(browser)
    try:
        await page.goto(f"{shop.url}{link}")
        await expect(page.get_by_test_id("status")).to_have_text("DELIVERED", timeout=TIMEOUT_MS)
        withdraw = page.get_by_test_id("withdraw")
        await expect(withdraw).to_be_visible()
        # The subscription's first message (the order as it is) must land before the period
        # ends, or the page would learn of it from there and take the button away first.
        await expect(page.get_by_test_id("live")).to_have_text("live", timeout=TIMEOUT_MS)
        long_ago = datetime.now(UTC) - timedelta(days=15)
        await Order.filter(id=order_id).update(delivered_at=long_ago)

        await withdraw.click()
        error = page.get_by_test_id("withdrawal-error")
        await expect(error).to_contain_text("The withdrawal period is over.", timeout=TIMEOUT_MS)
        await expect(error).to_contain_text("WITHDRAWAL_PERIOD_OVER")
        await expect(page.get_by_test_id("confirm-withdrawal")).to_be_hidden()
        await expect(page.get_by_test_id("withdrawal-ack")).to_be_hidden()
        assert await OrderReturn.filter(order_id=order_id).count() == 0
        assert watch.problems == []
    finally:
        await page.context.close()
