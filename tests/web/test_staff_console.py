"""The reference staff console in a real browser (Debian's Chromium, driven by Playwright).

As for the success page, the console is served by a real `ordergraph serve` process, here with
`STAFF_CONSOLE=true` (and `SUCCESS_PAGE=true`, for the shopper's side of the story), sharing the
test database and the Stripe emulator. Events are per process with `memory://`, so whatever
should reach the console live (the checkout, Stripe's webhook, the shopper's page) goes through
that process.

Without /usr/bin/chromium the browser tests skip, except with CI=true, where they fail.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Page,
    WebSocket,
    expect,
)

from ordergraph.models import (
    DeliveryStatus,
    Order,
    OrderNote,
    OrderReturn,
    OrderStatus,
    Product,
    ReturnStatus,
    WebhookDelivery,
    WebhookEndpoint,
)
from ordergraph.stripe_emulator import StripeEmulator
from tests.conftest import METRICS_TOKEN, OUTPUT_DIR, Harness, SmtpServer, service_env
from tests.utils.helpers import checked_out_order, make_product, stock_of
from tests.utils.live import ServerProcess, eventually, unique
from tests.utils.receivers import receiving

SCREENSHOT = OUTPUT_DIR / "staff-console.png"
PHONE_SCREENSHOT = OUTPUT_DIR / "staff-console-phone.png"
WEBHOOKS_SCREENSHOT = OUTPUT_DIR / "staff-console-webhooks.png"
WEBHOOKS_PHONE_SCREENSHOT = OUTPUT_DIR / "staff-console-webhooks-phone.png"
SECRET_SCREENSHOT = OUTPUT_DIR / "staff-console-webhooks-secret.png"
TIMEOUT_MS = 10_000
TRACKING = "1Z999AA10123456784"
CANCEL = "mutation($id: ID!) { cancelOrder(orderId: $id) { order { status } userErrors { code } } }"
# The console writes "2 \u00d7 $25.00" (a multiplication sign).
TIMES = "\u00d7"


async def _listening(app: Harness, shop: ServerProcess) -> None:
    """Until the shop serves the console's subscription, the only one open.

    The console shows "live" when the server acknowledges its socket, a moment before the
    `orderChanges` subscription it then asks for is listening. A change committed in between
    comes with the feed's opening catch-up rather than as a push of its own: a test that
    counts on a push waits for this first."""

    async def count() -> float:
        response = await app.http.get(
            f"{shop.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
        found = re.search(r"^ordergraph_active_subscriptions (\S+)$", response.text, re.M)
        return float(found.group(1)) if found else 0.0

    async def one() -> bool:
        return await count() == 1

    assert await eventually(one), f"the shop serves {await count()} subscriptions, not 1"


@pytest.fixture(scope="module")
async def shop(
    harness: Harness,
    database_url: str,
    stripe_server: tuple[StripeEmulator, str],
    smtp: SmtpServer,
) -> AsyncIterator[ServerProcess]:
    """The service with the staff console (and the success page) on, at its own origin."""
    process = ServerProcess(
        service_env(
            database_url,
            stripe_server[1],
            smtp.port,
            STAFF_CONSOLE="true",
            SUCCESS_PAGE="true",
            SWEEP_INTERVAL_SECONDS="0",
        ),
        "staff-console",
    )
    # The port is known only now: the pages' origin is the process's own address.
    process.env.update(FRONTEND_URL=process.url, ALLOWED_ORIGINS=process.url)
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


@dataclass
class Watch:
    """What a page pushed over its WebSocket, and what went wrong in it."""

    pushed: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # Every frame and close of every socket, for a failure's report.
    frames: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on("websocket", self._websocket)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))

    def _websocket(self, socket: WebSocket) -> None:
        def received(payload: str | bytes) -> None:
            message = json.loads(payload)
            self.frames.append(f"<- {str(payload)[:300]}")
            if message.get("type") == "next":
                self.pushed.append(message["payload"])

        socket.on("framereceived", received)
        socket.on("framesent", lambda payload: self.frames.append(f"-> {str(payload)[:120]}"))
        socket.on("close", lambda _: self.frames.append("closed"))

    def report(self, shop: ServerProcess) -> str:
        log = shop.log.read_text(errors="replace")[-4000:]
        return "\n".join(["frames:", *self.frames, "problems:", *self.problems, "shop's log:", log])

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text}")

    def changes(self, order_id: str) -> list[tuple[str, str]]:
        """(status, payment status) of each copy of the order `orderChanges` pushed."""
        return [
            (order["status"], order["paymentStatus"])
            for payload in self.pushed
            if (order := (payload.get("data") or {}).get("orderChanges"))
            and order["id"] == order_id
        ]


async def _new_page(browser: Browser, width: int = 1280, height: int = 900) -> tuple[Page, Watch]:
    context = await browser.new_context(
        locale="en-US", timezone_id="UTC", viewport={"width": width, "height": height}
    )
    page = await context.new_page()
    watch = Watch()
    watch.attach(page)
    return page, watch


async def _sign_in(page: Page, url: str, token: str) -> None:
    response = await page.goto(f"{url}/staff")
    assert response is not None and response.status == 200
    policy = response.headers["content-security-policy"]
    assert "script-src 'sha256-" in policy and "'unsafe-inline'" not in policy, policy
    await page.get_by_test_id("token").fill(token)
    await page.get_by_test_id("sign-in").click()


async def test_staff_see_an_order_arrive_and_get_paid_live_then_ship_it(
    browser: Browser, shop: ServerProcess, app: Harness
) -> None:
    """A staff member signs in; a shopper checks out and pays while the console is open: the
    order appears at the top and turns PAYMENT_CONFIRMED without a reload, pushed by
    `orderChanges`. Staff find it by the shopper's email, open it, pack and ship it with a
    tracking number (a blank one is refused with the API's own words), add a note, and the
    shopper's success page, open in another browser context, shows SHIPPED as it happens."""
    at_shop = dataclasses.replace(app, url=shop.url)
    # Stripe's webhooks go to the shop too: the expiry that the shop's cancelOrder asks for sends
    # `checkout.session.expired`, and the test's own service, whose subscribers the console does
    # not hear, sometimes applied it first, so the shop found the order already cancelled and
    # announced nothing (the console's row stayed PENDING_PAYMENT).
    with app.stripe_webhooks_to(shop.url):
        product = await make_product(unique("TEE"), price=2500, stock=10, name="Organic cotton tee")
        # Someone else's earlier order: listed at first, left out by the search.
        other = app.token(unique("other"))
        other_id = (await checked_out_order(at_shop, other, product))["orderId"]
        staff = app.token(unique("sam"), staff=True)

        console, watch = await _new_page(browser)
        try:
            await _sign_in(console, shop.url, staff)
            await expect(console.get_by_test_id("live")).to_have_text("live", timeout=TIMEOUT_MS)
            await _listening(app, shop)
            rows = console.get_by_test_id("orders").locator("li[data-order-id]")
            await expect(rows).to_have_count(1)
            await expect(console.get_by_test_id("count")).to_have_text("1 order")
            await expect(console.get_by_test_id("signed-in-as")).to_contain_text("@example.com")
            # Kept for this tab only, and never in the address.
            assert (
                await console.evaluate("sessionStorage.getItem('ordergraph.staffToken')") == staff
            )
            assert staff not in console.url
            await console.evaluate("window.__noReload = true")

            # The other shopper gives up: their row turns where it stands, pushed by orderChanges.
            body = await at_shop.gql(CANCEL, {"id": other_id}, token=other)
            assert body["data"]["cancelOrder"]["userErrors"] == [], body
            other_row = console.locator(f'li[data-order-id="{other_id}"]')
            await expect(other_row.get_by_test_id("row-status")).to_have_text(
                "CANCELLED", timeout=TIMEOUT_MS
            )
            await expect(other_row.get_by_test_id("row-payment")).to_have_text("EXPIRED")

            # A shopper checks out: the console shows the new order, newest first.
            shopper_id = unique("shopper")
            shopper = app.token(shopper_id)
            email = f"{shopper_id}@example.com"
            placed = await checked_out_order(at_shop, shopper, product, 2)
            order_id = placed["orderId"]
            row = console.locator(f'li[data-order-id="{order_id}"]')
            await expect(row.get_by_test_id("row-status")).to_have_text(
                "PENDING_PAYMENT", timeout=TIMEOUT_MS
            )
            await expect(rows).to_have_count(2)
            await expect(rows.first).to_have_attribute("data-order-id", order_id)
            await expect(row.get_by_test_id("row-email")).to_have_text(email)
            await expect(console.get_by_test_id("count")).to_have_text("2 orders")

            # The shopper's success page, in a browser context of its own.
            success, success_watch = await _new_page(browser, 760, 800)
            await success.goto(f"{shop.url}/order-success/{order_id}#token={shopper}")
            shopper_status = success.get_by_test_id("status")
            await expect(shopper_status).to_have_text("PENDING_PAYMENT", timeout=TIMEOUT_MS)
            await expect(success.get_by_test_id("live")).to_have_text("live", timeout=TIMEOUT_MS)

            # Stripe's webhook: the payment lands, and the console's row turns without a reload.
            order = await Order.get(id=order_id)
            assert order.stripe_checkout_session_id is not None
            delivery = await app.emulator.complete_session(order.stripe_checkout_session_id)
            assert delivery.status_code == 200, delivery.body
            await expect(row.get_by_test_id("row-status")).to_have_text(
                "PAYMENT_CONFIRMED", timeout=TIMEOUT_MS
            )
            await expect(row.get_by_test_id("row-payment")).to_have_text("PAID")
            await expect(row.get_by_test_id("row-total")).to_have_text("$50.00")
            assert ("PAYMENT_CONFIRMED", "PAID") in watch.changes(order_id), watch.pushed
            await expect(shopper_status).to_have_text("PAYMENT_CONFIRMED", timeout=TIMEOUT_MS)

            # Found by the shopper's email: only their order is left.
            await console.get_by_test_id("search").fill(email)
            await expect(rows).to_have_count(1, timeout=TIMEOUT_MS)
            await expect(rows.first).to_have_attribute("data-order-id", order_id)
            await expect(console.get_by_test_id("count")).to_have_text("1 order")

            # Opened: what was bought, the money, where it goes, who did what.
            await row.get_by_role("button").click()
            detail = console.get_by_test_id("detail")
            await expect(detail.get_by_test_id("detail-status")).to_have_text(
                "PAYMENT_CONFIRMED", timeout=TIMEOUT_MS
            )
            assert f"#order={order_id}" in console.url and staff not in console.url
            await expect(detail.get_by_test_id("detail-email")).to_have_text(email)
            await expect(detail.get_by_test_id("detail-id")).to_have_text(order_id)
            await expect(detail.get_by_test_id("detail-lines").locator("li")).to_have_count(1)
            await expect(detail.get_by_test_id("detail-lines")).to_contain_text(
                "Organic cotton tee"
            )
            await expect(detail.get_by_test_id("detail-lines")).to_contain_text(f"2 {TIMES} $25.00")
            await expect(detail.get_by_test_id("money-subtotal")).to_have_text("$50.00")
            await expect(detail.get_by_test_id("money-total")).to_have_text("$50.00")
            await expect(detail.get_by_test_id("money-refunded")).to_have_text("$0.00")
            await expect(detail.get_by_test_id("detail-address")).to_contain_text("Jenny Rosen")
            history = detail.get_by_test_id("history").locator("li")
            await expect(history).to_have_count(2)
            await expect(history.first).to_contain_text("PAYMENT_CONFIRMED · PAID")

            # Packed; a blank tracking number is refused, as the API says; then shipped.
            await detail.get_by_test_id("mark-awaiting-shipment").click()
            await expect(detail.get_by_test_id("detail-status")).to_have_text(
                "AWAITING_SHIPMENT", timeout=TIMEOUT_MS
            )
            await expect(detail.get_by_test_id("toast")).to_have_text(
                "Marked as awaiting shipment."
            )
            await detail.get_by_test_id("tracking-number").fill("   ")
            await detail.get_by_test_id("mark-shipped").click()
            error = detail.get_by_test_id("fulfilment-error")
            await expect(error).to_contain_text("tracking number", timeout=TIMEOUT_MS)
            await expect(error).to_contain_text("INVALID_INPUT · trackingNumber")
            await expect(detail.get_by_test_id("detail-status")).to_have_text("AWAITING_SHIPMENT")
            await detail.get_by_test_id("tracking-number").fill(TRACKING)
            await detail.get_by_test_id("carrier").fill("UPS")
            await detail.get_by_test_id("mark-shipped").click()
            await expect(detail.get_by_test_id("detail-status")).to_have_text(
                "SHIPPED", timeout=TIMEOUT_MS
            )
            await expect(error).to_be_hidden()
            await expect(detail.get_by_test_id("detail-tracking")).to_have_text(f"UPS · {TRACKING}")
            await expect(row.get_by_test_id("row-status")).to_have_text("SHIPPED")
            await expect(detail.get_by_test_id("mark-delivered")).to_be_visible()

            # A note, for staff only.
            note = "Left with the neighbour at no. 12 <b>not bold</b>"
            await detail.get_by_test_id("note-body").fill(note)
            await detail.get_by_test_id("add-note").click()
            notes = detail.get_by_test_id("notes").locator("li")
            await expect(notes).to_have_count(1, timeout=TIMEOUT_MS)
            await expect(notes.first).to_contain_text(note)  # as text: shop data is never HTML
            await expect(detail.get_by_test_id("note-body")).to_have_value("")
            assert await detail.get_by_test_id("notes").locator("b").count() == 0

            # The shopper sees it shipped, pushed to their page.
            await expect(shopper_status).to_have_text("SHIPPED", timeout=TIMEOUT_MS)
            await expect(success.get_by_test_id("tracking")).to_have_text(f"UPS · {TRACKING}")

            shipped = await Order.get(id=order_id)
            assert (shipped.status, shipped.tracking_number, shipped.carrier) == (
                OrderStatus.SHIPPED,
                TRACKING,
                "UPS",
            )
            assert [n.body for n in await OrderNote.filter(order_id=order_id)] == [note]
            assert await console.evaluate("window.__noReload") is True
            assert watch.problems == []
            assert success_watch.problems == []

            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            await console.screenshot(path=SCREENSHOT, full_page=True)
            print(f"screenshot: {SCREENSHOT}")

            # Phone-sized: one column, the order in place of the list, nothing wider than the
            # screen.
            await console.set_viewport_size({"width": 390, "height": 844})
            await expect(console.get_by_test_id("orders")).to_be_hidden()
            overflow = await console.evaluate("document.documentElement.scrollWidth - innerWidth")
            assert overflow <= 0, overflow
            await console.screenshot(path=PHONE_SCREENSHOT, full_page=True)
            print(f"screenshot: {PHONE_SCREENSHOT}")
            await detail.get_by_test_id("back").click()
            await expect(console.get_by_test_id("orders")).to_be_visible()
            await expect(detail).to_be_hidden()
            overflow = await console.evaluate("document.documentElement.scrollWidth - innerWidth")
            assert overflow <= 0, overflow
            await success.context.close()
        except AssertionError as failure:
            # A push the console never showed: say what it received, and what the shop did.
            raise AssertionError(f"{failure}\n{watch.report(shop)}") from failure
        finally:
            await console.context.close()


async def test_a_token_that_is_not_staff_is_refused_with_a_clear_error(
    browser: Browser, shop: ServerProcess, app: Harness
) -> None:
    """A shopper's token is told it is not a staff token; a token that is not valid is told
    so too. Neither is kept, and no order shows."""
    product = await make_product(unique("MUG"), price=1200, name="Stoneware mug")
    await checked_out_order(dataclasses.replace(app, url=shop.url), app.token("x"), product)

    page, watch = await _new_page(browser)
    try:
        await _sign_in(page, shop.url, app.token(unique("mallory")))
        error = page.get_by_test_id("signin-error")
        await expect(error).to_contain_text("not belong to a staff member", timeout=TIMEOUT_MS)
        await expect(error).to_contain_text("FORBIDDEN")
        await expect(page.get_by_test_id("orders")).to_be_hidden()
        await expect(page.get_by_test_id("live")).to_have_text("offline")
        assert await page.evaluate("sessionStorage.getItem('ordergraph.staffToken')") is None
        assert await page.locator("li[data-order-id]").count() == 0
        assert "Stoneware mug" not in await page.locator("body").inner_text()

        await page.get_by_test_id("token").fill("not-a-token")
        await page.get_by_test_id("sign-in").click()
        await expect(error).to_contain_text("not valid", timeout=TIMEOUT_MS)
        await expect(error).to_contain_text("UNAUTHENTICATED")
        assert await page.evaluate("sessionStorage.getItem('ordergraph.staffToken')") is None
        assert watch.problems == [], watch.problems
    finally:
        await page.context.close()


STAFF_ACTION = "mutation($id: ID!) { %s(orderId: $id) { order { status } userErrors { code } } }"
SHIP = """mutation($id: ID!) {
  markOrderShipped(orderId: $id, trackingNumber: "1Z999", carrier: "UPS") {
    order { status } userErrors { code }
  }
}"""
REQUEST_WITHDRAWAL = """mutation($id: ID!, $lines: [ReturnLineInput!]) {
  requestWithdrawal(orderId: $id, lines: $lines) {
    orderReturn { id status } userErrors { code message }
  }
}"""
CONFIRM_WITHDRAWAL = """mutation($id: ID!) {
  confirmWithdrawal(returnId: $id) { orderReturn { id status } userErrors { code message } }
}"""


async def _delivered_order_with_returns(
    app: Harness, shop: ServerProcess, product: Product
) -> tuple[str, str, str]:
    """A paid order of two units, delivered, from which the shopper withdrew one unit
    (confirmed: the goods are on their way back) and asked to withdraw the other (not
    confirmed). Returns (order id, confirmed return id, requested return id)."""
    at_shop = dataclasses.replace(app, url=shop.url)
    shopper = app.token(unique("shopper"))
    placed = await checked_out_order(at_shop, shopper, product, 2)
    order_id = placed["orderId"]
    order = await Order.get(id=order_id)
    assert order.stripe_checkout_session_id is not None
    with app.stripe_webhooks_to(shop.url):
        delivery = await app.emulator.complete_session(order.stripe_checkout_session_id)
    assert delivery.status_code == 200, delivery.body
    staff = app.token("sam", staff=True)
    for action in (
        STAFF_ACTION % "markOrderAwaitingShipment",
        SHIP,
        STAFF_ACTION % "markOrderDelivered",
    ):
        body = await at_shop.gql(action, {"id": order_id}, token=staff)
        assert [p["userErrors"] for p in body["data"].values()] == [[]], body
    one = [{"productId": str(product.id), "quantity": 1}]
    returned = []
    for confirm in (True, False):
        body = await at_shop.gql(REQUEST_WITHDRAWAL, {"id": order_id, "lines": one}, token=shopper)
        payload = body["data"]["requestWithdrawal"]
        assert payload["userErrors"] == [], body
        return_id = payload["orderReturn"]["id"]
        if confirm:
            body = await at_shop.gql(CONFIRM_WITHDRAWAL, {"id": return_id}, token=shopper)
            assert body["data"]["confirmWithdrawal"]["userErrors"] == [], body
        returned.append(return_id)
    return order_id, returned[0], returned[1]


async def test_staff_settle_returns_refund_and_adjust_stock_with_clear_errors(
    browser: Browser, shop: ServerProcess, app: Harness
) -> None:
    """On a delivered order with two withdrawals (one confirmed, one only asked for), found by
    the first 8 characters of its id: staff decline the unconfirmed one (a reason is required,
    and the console says so), receive the goods of the other (refunded and restocked), refund
    an amount (too much is refused with the API's words first), and adjust the product's
    stock (not below zero), seeing its movements."""
    product = await make_product(unique("TEE"), price=2500, stock=10, name="Organic cotton tee")
    order_id, confirmed_id, requested_id = await _delivered_order_with_returns(app, shop, product)

    page, watch = await _new_page(browser)
    try:
        await _sign_in(page, shop.url, app.token(unique("sam"), staff=True))
        await expect(page.get_by_test_id("live")).to_have_text("live", timeout=TIMEOUT_MS)
        await page.get_by_test_id("search").fill(order_id[:8].upper())
        rows = page.get_by_test_id("orders").locator("li[data-order-id]")
        await expect(rows).to_have_count(1, timeout=TIMEOUT_MS)
        await rows.first.get_by_role("button").click()
        detail = page.get_by_test_id("detail")
        await expect(detail.get_by_test_id("detail-status")).to_have_text(
            "DELIVERED", timeout=TIMEOUT_MS
        )
        await expect(detail.get_by_test_id("returns").locator("li")).to_have_count(2)
        confirmed = detail.locator(f'li[data-return-id="{confirmed_id}"]')
        requested = detail.locator(f'li[data-return-id="{requested_id}"]')
        await expect(confirmed.get_by_test_id("return-status")).to_have_text("CONFIRMED")
        await expect(requested.get_by_test_id("return-status")).to_have_text("REQUESTED")
        await expect(requested.get_by_test_id("receive-return")).to_be_hidden()

        # Declining needs a reason, which the shopper is mailed.
        await requested.get_by_test_id("reject-return").click()
        error = requested.get_by_test_id("return-error")
        await expect(error).to_contain_text("Say why", timeout=TIMEOUT_MS)
        await expect(error).to_contain_text("INVALID_INPUT · reason")
        await requested.get_by_test_id("reject-reason").fill("Asked after the goods came back")
        await requested.get_by_test_id("reject-return").click()
        await expect(requested.get_by_test_id("return-status")).to_have_text(
            "REJECTED", timeout=TIMEOUT_MS
        )
        # The API keeps why in the order's history (OrderReturn.reason is the shopper's).
        await expect(detail.get_by_test_id("history").locator("li").first).to_contain_text(
            "return declined: Asked after the goods came back · by staff:"
        )
        await expect(error).to_be_hidden()

        # The goods of the confirmed withdrawal arrive: refunded, back in stock.
        await confirmed.get_by_test_id("receive-return").click()
        await expect(confirmed.get_by_test_id("return-status")).to_have_text(
            "REFUNDED", timeout=TIMEOUT_MS
        )
        await expect(confirmed.get_by_test_id("return-text")).to_contain_text("refunded $25.00")
        await expect(detail.get_by_test_id("money-refunded")).to_have_text("$25.00")
        await expect(detail.get_by_test_id("detail-payment")).to_have_text("PARTIALLY_REFUNDED")
        await expect(detail.get_by_test_id("detail-lines")).to_contain_text("1 refunded")

        # An amount: too much is refused (in the API's words), then $5.00 goes back.
        await detail.get_by_test_id("refund-mode-amount").check()
        await detail.get_by_test_id("refund-amount").fill("100")
        await detail.get_by_test_id("refund").click()
        await expect(detail.get_by_test_id("refund-question")).to_have_text(
            "Refund $100.00 of this order?"
        )
        await detail.get_by_test_id("confirm-refund").click()
        refund_error = detail.get_by_test_id("refund-error")
        await expect(refund_error).to_contain_text("between 1 and 2500", timeout=TIMEOUT_MS)
        await expect(refund_error).to_contain_text("INVALID_INPUT · amount")
        await detail.get_by_test_id("refund-amount").fill("5")
        await detail.get_by_test_id("refund").click()
        await expect(detail.get_by_test_id("refund-question")).to_have_text(
            "Refund $5.00 of this order?"
        )
        await detail.get_by_test_id("confirm-refund").click()
        await expect(detail.get_by_test_id("money-refunded")).to_have_text(
            "$30.00", timeout=TIMEOUT_MS
        )
        await expect(refund_error).to_be_hidden()
        await expect(detail.get_by_test_id("refund-left")).to_have_text(
            "$20.00 of $50.00 can still be refunded."
        )

        # Stock: the return's restock is a movement; too much out is refused; 5 in.
        await detail.get_by_test_id("line-stock").click()
        stock = detail.get_by_test_id("stock")
        await expect(stock.get_by_test_id("stock-level")).to_have_text(
            "9 in stock", timeout=TIMEOUT_MS
        )
        movements = stock.get_by_test_id("stock-movements").locator("tr")
        await expect(movements).to_have_count(1)
        await expect(movements.first).to_contain_text("+1")
        await stock.get_by_test_id("stock-delta").fill("-100")
        await stock.get_by_test_id("stock-reason").fill("Stocktake")
        await stock.get_by_test_id("adjust-stock").click()
        stock_error = stock.get_by_test_id("stock-error")
        await expect(stock_error).to_contain_text(
            "Only 9 of Organic cotton tee", timeout=TIMEOUT_MS
        )
        await expect(stock_error).to_contain_text("INVALID_INPUT · delta")
        await stock.get_by_test_id("stock-delta").fill("5")
        await stock.get_by_test_id("stock-reason").fill("Found a box in the back")
        await stock.get_by_test_id("adjust-stock").click()
        await expect(stock.get_by_test_id("stock-level")).to_have_text(
            "14 in stock", timeout=TIMEOUT_MS
        )
        await expect(movements).to_have_count(2)
        await expect(movements.first).to_contain_text("+5")
        await expect(movements.first).to_contain_text("Found a box in the back")
        await expect(movements.first).to_contain_text("staff:")
        await expect(stock_error).to_be_hidden()

        order = await Order.get(id=order_id)
        assert order.amount_refunded == 3000
        assert sorted(r["amount"] for r in app.emulator.refunds.values()) == [500, 2500]
        statuses = {str(r.id): r.status for r in await OrderReturn.filter(order_id=order_id)}
        assert statuses == {
            confirmed_id: ReturnStatus.REFUNDED,
            requested_id: ReturnStatus.REJECTED,
        }
        assert await stock_of(product) == 14
        assert watch.problems == [], watch.problems
    except AssertionError as failure:
        # CI once saw the decline not take (the status stayed REQUESTED): say what the page
        # received and showed, and what the shop did.
        shown = await page.get_by_test_id("detail").inner_text()
        raise AssertionError(f"{failure}\npage:\n{shown}\n{watch.report(shop)}") from failure
    finally:
        await page.context.close()


async def test_the_list_pages_filters_and_places_live_orders_by_the_filter(
    browser: Browser, shop: ServerProcess, app: Harness
) -> None:
    """26 orders: the console lists 25 and loads the 26th on "Load more". Filtered on
    PAYMENT_CONFIRMED, it shows the one paid order; a new order pushed while still unpaid stays
    out of the filtered list, and comes in, at the top, when its payment lands."""
    product = await make_product(unique("SOCKS"), price=1200, stock=100, name="Wool socks")
    placed = [
        (await checked_out_order(app, app.token(unique("shopper")), product))["orderId"]
        for _ in range(26)
    ]
    paid = await Order.get(id=placed[0])
    assert paid.stripe_checkout_session_id is not None
    delivery = await app.emulator.complete_session(paid.stripe_checkout_session_id)
    assert delivery.status_code == 200, delivery.body

    page, watch = await _new_page(browser, 390, 844)  # phone-sized all along
    try:
        await _sign_in(page, shop.url, app.token(unique("sam"), staff=True))
        rows = page.get_by_test_id("orders").locator("li[data-order-id]")
        await expect(rows).to_have_count(25, timeout=TIMEOUT_MS)
        await expect(page.get_by_test_id("count")).to_have_text("25 of 26 orders")
        await expect(rows.first).to_have_attribute("data-order-id", placed[-1])  # newest first
        await page.get_by_test_id("load-more").click()
        await expect(rows).to_have_count(26, timeout=TIMEOUT_MS)
        await expect(rows.last).to_have_attribute("data-order-id", placed[0])
        await expect(page.get_by_test_id("count")).to_have_text("26 orders")
        await expect(page.get_by_test_id("load-more")).to_be_hidden()

        await page.get_by_test_id("status-filter").select_option("PAYMENT_CONFIRMED")
        await expect(rows).to_have_count(1, timeout=TIMEOUT_MS)
        await expect(rows.first).to_have_attribute("data-order-id", placed[0])
        await expect(page.get_by_test_id("live")).to_have_text("live", timeout=TIMEOUT_MS)
        await _listening(app, shop)

        # Unpaid: pushed, but not what the list is filtered on.
        at_shop = dataclasses.replace(app, url=shop.url)
        late = (await checked_out_order(at_shop, app.token(unique("late")), product))["orderId"]
        await _until_pushed(watch, late, "PENDING_PAYMENT")
        await expect(rows).to_have_count(1)

        order = await Order.get(id=late)
        assert order.stripe_checkout_session_id is not None
        with app.stripe_webhooks_to(shop.url):
            delivery = await app.emulator.complete_session(order.stripe_checkout_session_id)
        assert delivery.status_code == 200, delivery.body
        await expect(rows).to_have_count(2, timeout=TIMEOUT_MS)
        await expect(rows.first).to_have_attribute("data-order-id", late)
        await expect(rows.first.get_by_test_id("row-status")).to_have_text("PAYMENT_CONFIRMED")
        await expect(page.get_by_test_id("count")).to_have_text("2 orders")
        overflow = await page.evaluate("document.documentElement.scrollWidth - innerWidth")
        assert overflow <= 0, overflow
        assert watch.problems == [], watch.problems
    finally:
        await page.context.close()


async def _until_pushed(watch: Watch, order_id: str, status: str) -> None:
    async def pushed() -> bool:
        return any(s == status for s, _ in watch.changes(order_id))

    assert await eventually(pushed), watch.pushed


async def test_staff_register_a_webhook_see_it_delivered_replay_it_and_pause_it(
    browser: Browser, shop: ServerProcess, app: Harness
) -> None:
    """In the Webhooks view (#webhooks), staff register an endpoint on a real loopback receiver
    (a URL the API refuses first, in its own words), and are shown its signing secret once. A
    shopper places an order: the delivery shows up DELIVERED without a click (the list
    refreshes itself when `orderChanges` pushes an order, and while a delivery is pending),
    and the receiver's copy verifies with the secret the page showed. Replayed, it is sent
    again (attempts 2); the endpoint is paused, then deleted after a confirmation."""
    at_shop = dataclasses.replace(app, url=shop.url)
    product = await make_product(unique("CAP"), price=1800, stock=10, name="Canvas cap")

    async with receiving() as receiver:
        page, watch = await _new_page(browser)
        try:
            await _sign_in(page, shop.url, app.token(unique("sam"), staff=True))
            await expect(page.get_by_test_id("live")).to_have_text("live", timeout=TIMEOUT_MS)
            await page.get_by_test_id("tab-webhooks").click()
            assert page.url.endswith("#webhooks")
            view = page.get_by_test_id("webhooks")
            await expect(view).to_be_visible()
            await expect(page.get_by_test_id("orders")).to_be_hidden()
            await expect(page.get_by_test_id("tab-webhooks")).to_have_attribute(
                "aria-current", "page"
            )
            await expect(view.get_by_test_id("endpoints-empty")).to_be_visible(timeout=TIMEOUT_MS)
            await expect(view.get_by_test_id("deliveries-empty")).to_be_visible()

            # Refused, next to the form, with the API's words, code and field.
            await view.get_by_test_id("endpoint-url").fill("ftp://hooks.example/in")
            await view.get_by_test_id("event-order.created").check()
            await view.get_by_test_id("register-endpoint").click()
            form_error = view.get_by_test_id("endpoint-form-error")
            await expect(form_error).to_contain_text("must start with https://", timeout=TIMEOUT_MS)
            await expect(form_error).to_contain_text("INVALID_INPUT · url")
            await expect(view.get_by_test_id("secret-panel")).to_be_hidden()

            # "All events" stands for every kind: the single ones step aside while it is on.
            await view.get_by_test_id("event-all").check()
            await expect(view.get_by_test_id("event-order.paid")).to_be_disabled()
            await view.get_by_test_id("event-all").uncheck()
            await expect(view.get_by_test_id("event-order.paid")).to_be_enabled()

            await view.get_by_test_id("endpoint-url").fill(receiver.url)
            await view.get_by_test_id("event-order.paid").check()
            await view.get_by_test_id("register-endpoint").click()
            panel = view.get_by_test_id("secret-panel")
            await expect(panel).to_be_visible(timeout=TIMEOUT_MS)
            await expect(form_error).to_be_hidden()
            await expect(panel.get_by_test_id("secret-note")).to_have_text(
                "Copy it now: it will not be shown again."
            )
            await expect(panel.get_by_test_id("secret-url")).to_have_text(receiver.url)
            secret = await panel.get_by_test_id("webhook-secret").inner_text()
            assert len(secret) >= 32, secret
            endpoint_row = view.get_by_test_id("endpoints").locator("li[data-endpoint-id]")
            await expect(endpoint_row).to_have_count(1)
            await expect(endpoint_row.get_by_test_id("endpoint-url-text")).to_have_text(
                receiver.url
            )
            await expect(endpoint_row.get_by_test_id("endpoint-events")).to_have_text(
                "Events: order.created, order.paid"
            )
            await expect(endpoint_row.get_by_test_id("endpoint-status")).to_have_text("ACTIVE")
            await expect(endpoint_row.get_by_test_id("endpoint-created")).to_contain_text(
                "Registered"
            )
            await expect(view.get_by_test_id("endpoint-url")).to_have_value("")
            endpoint_id = await endpoint_row.get_attribute("data-endpoint-id")
            stored = await WebhookEndpoint.get(id=endpoint_id)
            assert stored.secret == secret and stored.events == ["order.created", "order.paid"]

            SECRET_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            await panel.screenshot(path=SECRET_SCREENSHOT)
            print(f"screenshot: {SECRET_SCREENSHOT}")

            # Once: dismissed, the secret is nowhere in the page any more.
            await panel.get_by_test_id("secret-done").click()
            await expect(panel).to_be_hidden()
            assert secret not in await page.content()

            # A shopper places an order (through the console's process, which pushes it):
            # its order.created delivery shows up DELIVERED, without a click.
            placed = await checked_out_order(at_shop, app.token(unique("shopper")), product)
            deliveries = view.get_by_test_id("deliveries").locator("li[data-delivery-id]")
            await expect(deliveries).to_have_count(1, timeout=TIMEOUT_MS)
            delivery = deliveries.first
            await expect(delivery.get_by_test_id("delivery-status")).to_have_text(
                "DELIVERED", timeout=TIMEOUT_MS
            )
            await expect(delivery.get_by_test_id("delivery-event")).to_have_text("order.created")
            await expect(delivery.get_by_test_id("delivery-attempts")).to_have_text("1")
            await expect(delivery.get_by_test_id("delivery-response")).to_have_text("HTTP 200")
            await expect(delivery.get_by_test_id("delivery-last-error")).to_be_hidden()
            delivery_id = await delivery.get_attribute("data-delivery-id")
            assert delivery_id is not None
            await expect(delivery.get_by_test_id("delivery-endpoint")).to_have_text(
                f"Delivery {delivery_id} to {receiver.url}"
            )

            received = await receiver.wait_for(lambda got: len(got) >= 1)
            first = received[0]
            assert first.verifies(secret), first.headers
            assert not first.verifies(secret + "x")
            assert first.delivery == (delivery_id, 1)
            assert first.event["type"] == "order.created"
            assert placed["orderId"] in first.body

            # Replayed: sent again, a second attempt, signed with the same secret.
            await delivery.get_by_test_id("replay-delivery").click()
            await expect(view.get_by_test_id("webhooks-toast")).to_have_text("Sending it again.")
            await expect(delivery.get_by_test_id("delivery-attempts")).to_have_text(
                "2", timeout=TIMEOUT_MS
            )
            await expect(delivery.get_by_test_id("delivery-status")).to_have_text("DELIVERED")
            received = await receiver.wait_for(lambda got: len(got) >= 2)
            assert received[1].delivery == (delivery_id, 2)
            assert received[1].verifies(secret)
            assert received[1].body == first.body
            stored_delivery = await WebhookDelivery.get(id=int(delivery_id))
            assert (stored_delivery.status, stored_delivery.attempts) == (
                DeliveryStatus.DELIVERED,
                2,
            )

            # Paused: marked so, and kept so.
            await endpoint_row.get_by_test_id("toggle-endpoint").click()
            await expect(endpoint_row.get_by_test_id("endpoint-status")).to_have_text(
                "PAUSED", timeout=TIMEOUT_MS
            )
            await expect(endpoint_row.get_by_test_id("toggle-endpoint")).to_have_text("Resume")
            await expect(view.get_by_test_id("webhooks-toast")).to_contain_text("paused")
            assert (await WebhookEndpoint.get(id=endpoint_id)).active is False

            # The deliveries filtered by status: none is DEAD; the DELIVERED one is listed.
            await view.get_by_test_id("delivery-status-filter").select_option("DEAD")
            await expect(deliveries).to_have_count(0, timeout=TIMEOUT_MS)
            await expect(view.get_by_test_id("deliveries-empty")).to_have_text(
                "No deliveries match."
            )
            await view.get_by_test_id("delivery-status-filter").select_option("DELIVERED")
            await expect(deliveries).to_have_count(1, timeout=TIMEOUT_MS)

            await page.screenshot(path=WEBHOOKS_SCREENSHOT, full_page=True)
            print(f"screenshot: {WEBHOOKS_SCREENSHOT}")
            await page.set_viewport_size({"width": 390, "height": 844})
            overflow = await page.evaluate("document.documentElement.scrollWidth - innerWidth")
            assert overflow <= 0, overflow
            await page.screenshot(path=WEBHOOKS_PHONE_SCREENSHOT, full_page=True)
            print(f"screenshot: {WEBHOOKS_PHONE_SCREENSHOT}")

            # Deleting asks first; cancelled, nothing happens; confirmed, it is gone.
            await endpoint_row.get_by_test_id("delete-endpoint").click()
            confirm = endpoint_row.get_by_test_id("delete-confirm")
            await expect(confirm).to_be_visible()
            await expect(confirm).to_contain_text(f"Delete {receiver.url}?")
            await confirm.get_by_test_id("cancel-delete").click()
            await expect(confirm).to_be_hidden()
            assert await WebhookEndpoint.filter(id=endpoint_id).exists()
            await endpoint_row.get_by_test_id("delete-endpoint").click()
            await confirm.get_by_test_id("confirm-delete").click()
            await expect(endpoint_row).to_have_count(0, timeout=TIMEOUT_MS)
            await expect(view.get_by_test_id("endpoints-empty")).to_be_visible()
            await expect(deliveries).to_have_count(0, timeout=TIMEOUT_MS)
            assert not await WebhookEndpoint.filter(id=endpoint_id).exists()
            assert not await WebhookDelivery.filter(endpoint_id=endpoint_id).exists()

            # Back to the orders: the shopper's order is there.
            await page.get_by_test_id("tab-orders").click()
            await expect(view).to_be_hidden()
            await expect(page.locator(f'li[data-order-id="{placed["orderId"]}"]')).to_be_visible(
                timeout=TIMEOUT_MS
            )
            assert len(receiver.received) == 2
            assert watch.problems == [], watch.problems
        finally:
            await page.context.close()
