"""`ordergraph demo`'s second purchase: a guest's, with a shipping rate, a promotion code and
automatic tax.

Staff set up what the checkout offers (two shipping rates, a 20 % code); a guest starts a
session with an email, fills a cart and checks out; the emulator completes the session as the
shopper would, picking Express, typing the code and a German address (taxed at the emulator's
19 %); the receipt reaches the guest's email with the figures, and its link's access token (no
bearer token) reads the order with what Stripe charged; with the same link the guest withdraws
from one unit in two steps, refunded at once since nothing has shipped.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import httpx

from ordergraph.demo.steps import Client, Stack, StepFailed, Timeline, money, next_mail

GUEST_EMAIL = "guest@example.com"
CODE = "DEMO20"
RATES = [("Standard", 500, 3, 5), ("Express", 1500, 1, 2)]
PICKED_RATE = "Express"
TAX_COUNTRY = "DE"
ADDRESS = {"line1": "Unter den Linden 1", "city": "Berlin", "postal_code": "10117"}

MONEY = "amount currency"
FIGURES = """id status paymentStatus email promotionCode
  subtotal { %(m)s } discount { %(m)s } shippingCost { %(m)s } tax { %(m)s } total { %(m)s }
  shippingMethod { name amount { %(m)s } }""" % {"m": MONEY}
UPSERT_RATE = """mutation($input: ShippingRateInput!) { upsertShippingRate(input: $input) {
  shippingRate { id name amount { amount currency } } userErrors { code message } } }"""
CREATE_CODE = """mutation($input: PromotionCodeInput!) { createPromotionCode(input: $input) {
  promotionCode { id code percentOff } userErrors { code message } } }"""
START_GUEST = """mutation($email: String) { startGuestSession(email: $email) {
  token userErrors { code message } } }"""
ADD_TO_CART = """mutation($p: ID!, $q: Int!) { addToCart(productId: $p, quantity: $q) {
  cart { itemCount total { amount currency } } userErrors { code message } } }"""
PRODUCTS = "{ products(first: 10) { edges { node { id name } } } }"
CHECKOUT = "mutation { checkout { orderId clientSecret userErrors { code message } } }"
ORDER = "query($id: ID!) { order(id: $id) { %s } }" % FIGURES
WITHDRAW = """mutation($id: ID!, $lines: [ReturnLineInput!], $access: String) {
  requestWithdrawal(orderId: $id, lines: $lines, accessToken: $access) {
    orderReturn { id status } userErrors { code message } } }"""
CONFIRM = """mutation($id: ID!, $access: String) {
  confirmWithdrawal(returnId: $id, accessToken: $access) {
  orderReturn { status confirmedAt refunded { %(m)s } } order { status paymentStatus }
  userErrors { code message } } }""" % {"m": MONEY}
ORDER_WITH_ACCESS = (
    "query($id: ID!, $access: String) { order(id: $id, accessToken: $access) { %s } }" % (FIGURES)
)


def figures(order: dict[str, Any]) -> str:
    """Subtotal, discount, shipping, tax and total, as the receipt says them."""
    currency = order["total"]["currency"]

    def shown(key: str, sign: int = 1) -> str:
        return money(sign * order[key]["amount"], currency)

    method = (order.get("shippingMethod") or {}).get("name")
    return (
        f"subtotal {shown('subtotal')}, discount ({order['promotionCode']}) "
        f"{shown('discount', -1)}, shipping ({method}) {shown('shippingCost')}, "
        f"tax {shown('tax')}, total {shown('total')}"
    )


async def guest_purchase(stack: Stack, timeline: Timeline, staff_token: str) -> dict[str, Any]:
    """The guest's purchase, step by step on `timeline`; what it found, for the summary."""
    state: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=10.0) as http:
        staff = Client(http, stack.url, staff_token)

        async def offers() -> str:
            shown = []
            for name, amount, fastest, slowest in RATES:
                values = {
                    "name": name,
                    "amount": amount,
                    "minDeliveryDays": fastest,
                    "maxDeliveryDays": slowest,
                }
                rate = (await staff(UPSERT_RATE, {"input": values}))["upsertShippingRate"]
                price = rate["shippingRate"]["amount"]
                shown.append(f"{name} {money(price['amount'], price['currency'])}")
            made = await staff(CREATE_CODE, {"input": {"code": CODE, "percentOff": 20}})
            code = made["createPromotionCode"]["promotionCode"]
            off = f"{code['percentOff']:g} % off"
            return f"shipping rates {', '.join(shown)}; code {code['code']} ({off})"

        async def start_session() -> str:
            answer = await Client(http, stack.url, None)(START_GUEST, {"email": GUEST_EMAIL})
            token = answer["startGuestSession"]["token"]
            if not token:
                raise StepFailed("startGuestSession returned no token")
            state["guest"] = Client(http, stack.url, token)
            timeline.status = "-"
            return f"guest bearer token for {GUEST_EMAIL}"

        async def fill_cart() -> str:
            guest = state["guest"]
            product = (await guest(PRODUCTS))["products"]["edges"][0]["node"]
            state["product_id"] = product["id"]
            cart = (await guest(ADD_TO_CART, {"p": product["id"], "q": 2}))["addToCart"]["cart"]
            total = cart["total"]
            return (
                f"2 x {product['name']}; {cart['itemCount']} items, "
                f"{money(total['amount'], total['currency'])}"
            )

        async def checkout() -> str:
            guest = state["guest"]
            result = (await guest(CHECKOUT))["checkout"]
            if not result["clientSecret"]:
                raise StepFailed("checkout returned no client secret")
            state["order_id"] = result["orderId"]
            state["session_id"] = result["clientSecret"].split("_secret_")[0]
            order = (await guest(ORDER, {"id": state["order_id"]}))["order"]
            timeline.status = f"{order['status']}/{order['paymentStatus']}"
            return f"order {state['order_id']} created, Stripe session opened"

        async def pay() -> str:
            rate_id = await _offered_rate(http, stack, state["session_id"], PICKED_RATE)
            response = await http.post(
                f"{stack.emulator_url}/_emulator/checkout/sessions/{state['session_id']}/complete",
                json={
                    "shipping_rate": rate_id,
                    "promotion_code": CODE.lower(),
                    "country": TAX_COUNTRY,
                    "shipping": {
                        "name": "Gina Guest",
                        "address": {**ADDRESS, "country": TAX_COUNTRY},
                    },
                },
            )
            if response.status_code != 200:
                raise StepFailed(f"the emulator answered {response.status_code}: {response.text}")
            webhook = response.json()
            if webhook["webhook_status"] != 200:
                raise StepFailed(
                    f"the service answered the webhook with {webhook['webhook_status']}: "
                    f"{webhook['webhook_body']}"
                )
            session = webhook["event"]["data"]["object"]
            order = (await state["guest"](ORDER, {"id": state["order_id"]}))["order"]
            timeline.status = f"{order['status']}/{order['paymentStatus']}"
            state["charged"] = session["amount_total"]
            state["charged_text"] = money(session["amount_total"], session["currency"].upper())
            return (
                f"{PICKED_RATE}, code {CODE.lower()}, tax country {TAX_COUNTRY}; "
                f"charged {state['charged_text']}"
            )

        async def receipt() -> str:
            _, message = await next_mail(stack, GUEST_EMAIL, "receipt")
            body = message.get_body(preferencelist=("plain",))
            text = body.get_content() if body is not None else ""
            if f"Total paid: {state['charged_text']}" not in text:
                raise StepFailed(f"the receipt does not say {state['charged_text']}: {text!r}")
            link = re.search(
                re.escape(f"{stack.url}/order-success/{state['order_id']}?access=") + r"(\S+)",
                text,
            )
            if not link:
                raise StepFailed(f"the receipt has no link to the order: {text!r}")
            state["access"] = unquote(link.group(1))
            rows = [
                line.strip()
                for line in text.splitlines()
                if line.strip().startswith(("Subtotal", "Discount", "Shipping (", "Tax", "Total"))
            ]
            return f"to {message['To']}: {'; '.join(rows)}"

        async def read_with_access() -> str:
            variables = {"id": state["order_id"], "access": state["access"]}
            order = (await Client(http, stack.url, None)(ORDER_WITH_ACCESS, variables))["order"]
            if order is None:
                raise StepFailed("the access token did not open the order")
            timeline.status = f"{order['status']}/{order['paymentStatus']}"
            amounts = {
                k: order[k]["amount"] for k in ("subtotal", "discount", "shippingCost", "tax")
            }
            total = order["total"]["amount"]
            if total != state["charged"]:
                raise StepFailed(f"the order's total {total} is not the {state['charged']} charged")
            added = (
                amounts["subtotal"] - amounts["discount"] + amounts["shippingCost"] + amounts["tax"]
            )
            if added != total or 0 in (amounts["discount"], amounts["tax"]):
                raise StepFailed(f"the figures do not add up to the total: {order}")
            state["final"] = order
            return f"no bearer token; {figures(order)}"

        async def withdraw() -> str:
            anonymous = Client(http, stack.url, None)
            lines = [{"productId": state["product_id"], "quantity": 1}]
            asked = await anonymous(
                WITHDRAW, {"id": state["order_id"], "lines": lines, "access": state["access"]}
            )
            requested = asked["requestWithdrawal"]
            if requested["userErrors"]:
                raise StepFailed(f"requestWithdrawal refused: {requested['userErrors']}")
            return_id = requested["orderReturn"]["id"]
            done = await anonymous(CONFIRM, {"id": return_id, "access": state["access"]})
            confirmed = done["confirmWithdrawal"]
            if confirmed["userErrors"] or confirmed["orderReturn"]["status"] != "REFUNDED":
                raise StepFailed(f"confirmWithdrawal: {confirmed}")
            order = confirmed["order"]
            timeline.status = f"{order['status']}/{order['paymentStatus']}"
            subjects = {(await next_mail(stack, GUEST_EMAIL))[1]["Subject"] for _ in range(2)}
            if not any(s.startswith("Withdrawal confirmed") for s in subjects):
                raise StepFailed(f"no acknowledgement among the mails: {subjects}")
            refunded = confirmed["orderReturn"]["refunded"]
            state["final"] = {**state["final"], **order}
            state["withdrawn"] = money(refunded["amount"], refunded["currency"])
            return (
                f"1 unit, confirmed {confirmed['orderReturn']['confirmedAt']}, refunded "
                f"{state['withdrawn']} at once (not shipped yet); "
                "acknowledgement mailed"
            )

        await timeline.step("staff: shipping rates and a promotion code", offers)
        await timeline.step("guest: start a session", start_session)
        await timeline.step("guest: fill the cart", fill_cart)
        await timeline.step("guest: checkout", checkout)
        await timeline.step("guest: pay (rate, code, country)", pay)
        await timeline.step("guest: receipt read from the SMTP sink", receipt)
        await timeline.step("read the order with the receipt's access token", read_with_access)
        await timeline.step("guest: withdraw one unit through the link, in two steps", withdraw)
    return state


async def _offered_rate(http: httpx.AsyncClient, stack: Stack, session_id: str, name: str) -> str:
    """The id of the shipping rate Stripe made of the session's option called `name`."""
    listing = (await http.get(f"{stack.emulator_url}/_emulator/checkout/sessions")).json()
    [session] = [s for s in listing["data"] if s["id"] == session_id]
    for option in session.get("shipping_options") or []:
        rate = await http.get(
            f"{stack.emulator_url}/v1/shipping_rates/{option['shipping_rate']}",
            headers={"Authorization": f"Bearer {stack.settings.stripe_secret_key}"},
        )
        if rate.json().get("display_name") == name:
            return str(option["shipping_rate"])
    raise StepFailed(f"the session offers no shipping rate called {name}")
