"""The lifecycle property test's after-payment stories: partial refunds, returns, withdrawals.

Each story starts from a paid order and goes on through the public API, staff fulfilling and
refunding, the shopper (or whoever holds the order's link) withdrawing. Its calls run in order,
interleaved at random with the other orders' calls; some are sent twice, one after the other
or both at once, as a retried or double-clicked request is. A call the story cannot take (more
than what is left, a return already finished) must answer a userError, never an error.

Also here: the money half of the test's invariants (`refunds_hold`).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ordergraph.auth import issue_order_token
from ordergraph.models import Order, OrderItem, OrderRefund
from tests.conftest import JWT_SECRET, Harness

API_SCENARIOS = (
    "refund_line",
    "refund_amount",
    "withdraw_early",
    "withdraw_late",
    "refund_all_lines",
)
PAYLOAD = "userErrors { code message }"
MUTATIONS = {
    "awaiting": "mutation($id: ID!) { markOrderAwaitingShipment(orderId: $id) { %s } }",
    "shipped": 'mutation($id: ID!) { markOrderShipped(orderId: $id, trackingNumber: "1Z") { %s } }',
    "delivered": "mutation($id: ID!) { markOrderDelivered(orderId: $id) { %s } }",
    "refund": """mutation($id: ID!, $amount: Int, $lines: [ReturnLineInput!], $restock: Boolean,
      $reason: String) {
      refundOrder(orderId: $id, amount: $amount, lines: $lines, restock: $restock, reason: $reason)
      { %s } }""",
    "request": """mutation($id: ID!, $lines: [ReturnLineInput!], $token: String) {
      requestWithdrawal(orderId: $id, lines: $lines, accessToken: $token) {
      orderReturn { id } %s } }""",
    "confirm": """mutation($rid: ID!, $token: String) {
      confirmWithdrawal(returnId: $rid, accessToken: $token) { %s } }""",
    "receive": """mutation($rid: ID!, $restock: Boolean) {
      receiveReturn(returnId: $rid, restock: $restock) { %s } }""",
    "reject": 'mutation($rid: ID!) { rejectReturn(returnId: $rid, reason: "worn") { %s } }',
}
FULFIL = ("awaiting", "shipped", "delivered")
# Where an order stands after the first n fulfilment steps.
STATUS_AFTER = ("payment_confirmed", "awaiting_shipment", "shipped", "delivered")


@dataclass(frozen=True)
class Call:
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    refused: bool = False  # a step the story cannot take: a userError


@dataclass
class Plan:
    order_id: str
    user_id: str
    calls: list[Call]
    expected: tuple[str, str]  # (status, payment status) at the end
    guest: bool = False  # the shopper withdraws through the mail's link, not signed in
    return_id: str | None = None


def _units(product_id: str, quantity: int) -> list[dict[str, Any]]:
    return [{"productId": product_id, "quantity": quantity}]


def _plan_calls(
    scenario: str, total: int, lines: list[tuple[str, int]], rnd: random.Random
) -> tuple[list[Call], tuple[str, str]]:
    """The story's calls, its last one a step it cannot take, and where it ends."""
    product, quantity = rnd.choice(lines)
    units = rnd.randint(1, quantity)
    every_unit = len(lines) == 1 and units == quantity
    too_many = _units(product, quantity - units + 1)
    whole = rnd.random() < 0.5  # a withdrawal naming no lines: every unit
    withdrawn = {} if whole else {"lines": _units(product, units)}
    payment = "partially_refunded"
    if scenario == "refund_line":
        steps = rnd.randrange(4)
        calls = [Call("refund", {"lines": _units(product, units), "restock": rnd.random() < 0.5})]
        over = Call("refund", {"lines": too_many, "reason": "more"}, refused=True)
        done = every_unit
    elif scenario == "refund_amount":
        steps = rnd.choice((0, 3))
        amount = rnd.choice((total, rnd.randint(1, total)))
        calls = [Call("refund", {"amount": amount})] * rnd.randint(1, 2)  # twice: a retry
        over = Call("refund", {"amount": total - amount + 1, "reason": "more"}, refused=True)
        done = amount == total
    elif scenario == "withdraw_early":
        steps = rnd.randrange(2)
        calls = [Call("request", withdrawn), Call("confirm")]
        over = Call("request", {} if whole else {"lines": too_many}, refused=True)
        done = whole or every_unit
    elif scenario == "withdraw_late":
        steps = 3
        finish = rnd.choice(("receive", "reject", "reject unconfirmed"))
        calls = [Call("request", withdrawn), Call("confirm")]
        if finish == "receive":
            calls.append(Call("receive", {"restock": rnd.random() < 0.5}))
            over = Call("reject", refused=True)
        elif finish == "reject":
            calls.append(Call("reject"))
            over = Call("receive", {"restock": True}, refused=True)
        else:  # declined before the shopper confirmed: too late to confirm
            calls[1:] = [Call("reject")]
            over = Call("confirm", refused=True)
        done = finish == "receive" and (whole or every_unit)
        payment = "partially_refunded" if finish == "receive" else "paid"
    else:  # refund_all_lines: line by line, a line in one go or unit by unit
        steps = rnd.randrange(3)
        calls = []
        for n, (product, quantity) in enumerate(lines):
            parts = [1] * quantity if rnd.random() < 0.5 else [quantity]
            for k, part in enumerate(parts):
                restock = rnd.random() < 0.5
                reason = f"line {n} part {k}"  # the same units again on purpose: another reason
                args = {"lines": _units(product, part), "restock": restock, "reason": reason}
                calls.append(Call("refund", args))
        over = Call("refund", {"lines": _units(lines[0][0], 1), "reason": "more"}, refused=True)
        done = True
    if not done and rnd.random() < 0.3:  # staff refund what is left
        calls.append(Call("refund", {"reason": "the rest"}))
        done = True
    calls = [Call(name) for name in FULFIL[:steps]] + calls + [over]
    return calls, ("refunded", "refunded") if done else (STATUS_AFTER[steps], payment)


async def plan_after_payment(order_id: str, scenario: str, rnd: random.Random) -> Plan:
    order = await Order.get(id=order_id)
    assert (order.status.value, order.payment_status.value) == ("payment_confirmed", "paid")
    items = await OrderItem.filter(order_id=order_id).order_by("id")
    lines = [(str(item.product_id), item.quantity) for item in items]
    calls, expected = _plan_calls(scenario, order.total, lines, rnd)
    return Plan(order_id, order.user_id, calls, expected, guest=rnd.random() < 0.5)


async def _send(app: Harness, plan: Plan, call: Call) -> list[dict[str, Any]]:
    """One call through the API: its userErrors (a GraphQL error fails the test)."""
    query = MUTATIONS[call.name] % PAYLOAD
    token: str | None = app.token("staff", staff=True)
    variables: dict[str, Any] = {"id": plan.order_id, "rid": plan.return_id, **call.args}
    if call.name in ("request", "confirm"):
        if plan.guest:
            token, variables["token"] = None, issue_order_token(JWT_SECRET, plan.order_id)
        else:
            token = app.token(plan.user_id)
    variables = {k: v for k, v in variables.items() if f"${k}:" in query}
    body = await app.gql(query, variables, token=token)
    assert "errors" not in body, (call, body)
    (payload,) = body["data"].values()
    if call.name == "request" and not payload["userErrors"] and plan.return_id is None:
        plan.return_id = payload["orderReturn"]["id"]
    errors: list[dict[str, Any]] = payload["userErrors"]
    return errors


# A batch: the calls sent at once (one, or a request and its double), and whether it is the
# story's own step (its answer known) rather than a retry sent later (any answer will do).
Batch = tuple[list[Call], bool]


def _batches(plan: Plan, rnd: random.Random) -> list[Batch]:
    together: set[int] = set()
    later: defaultdict[int, list[Call]] = defaultdict(list)
    for _ in range(rnd.choice((0, 1, 1, 2, 3))):
        i = rnd.randrange(len(plan.calls))
        if rnd.random() < 0.4:
            together.add(i)
        else:  # a fulfilment step again at once (later it would be a step of its own)
            fulfil = plan.calls[i].name in FULFIL
            later[i if fulfil else rnd.randrange(i, len(plan.calls))].append(plan.calls[i])
    batches: list[Batch] = []
    for i, call in enumerate(plan.calls):
        batches.append(([call, call] if i in together else [call], True))
        batches += [([again], False) for again in later[i]]
    return batches


async def _send_batch(app: Harness, plan: Plan, batch: Batch) -> None:
    calls, own = batch
    answers = await asyncio.gather(*(_send(app, plan, call) for call in calls))
    if not own:
        return
    ok = [not errors for errors in answers]
    call = calls[0]
    if call.refused:
        assert not any(ok), (call, answers)
    elif call.name in FULFIL:  # two at once: one moves the order, the other is refused
        assert ok.count(True) == 1, (call, answers)
    else:  # the same request twice is the same answer
        assert all(ok), (call, answers)


async def run_after_payment(
    app: Harness, plans: list[Plan], rnd: random.Random, check: Callable[[], Awaitable[None]]
) -> None:
    """Every story's calls, in its own order, the stories interleaved; `check` after each."""
    queues = [(plan, _batches(plan, rnd)) for plan in plans]
    while queues:
        plan, batches = rnd.choice(queues)
        await _send_batch(app, plan, batches.pop(0))
        await check()
        queues = [(p, b) for p, b in queues if b]


async def refunds_hold(app: Harness, orders: dict[str, Order]) -> None:
    """Never refunded more than charged, here or at Stripe; one Stripe refund per request."""
    rows = await OrderRefund.all()
    keys = Counter(row.request_key for row in rows)
    assert all(n == 1 for n in keys.values()), keys
    stripe: defaultdict[str, list[int]] = defaultdict(list)
    for refund in app.emulator.refunds.values():
        stripe[refund["payment_intent"]].append(refund["amount"])
    for intent, amounts in stripe.items():
        assert sum(amounts) <= app.emulator.payment_intents[intent]["amount"], (intent, amounts)
    requested: defaultdict[str, list[int]] = defaultdict(list)
    for row in rows:
        requested[str(row.order_id)].append(row.amount)
    for order_id, order in orders.items():
        assert 0 <= order.amount_refunded <= order.total, (order_id, order.amount_refunded)
        made = sorted(stripe.get(order.stripe_payment_intent_id or "", []))
        if order_id in requested:  # refunded by refundOrder and returns only
            asked = sorted(amount for amount in requested[order_id] if amount > 0)
            assert made == asked, (order_id, made, asked)
            assert sum(asked) == order.amount_refunded, (order_id, asked, order.amount_refunded)
        else:  # refused or late payments: given back once
            assert all(n == 1 for n in Counter(made).values()), (order_id, made)
