"""Who may do what: every root field of the served schema (queries, mutations, the
subscription) for an anonymous caller, the owner of the order and cart, another shopper, staff,
a guest shopper (a guest token of its own) and an access-token caller (no bearer token, only the
order's accessToken where an argument takes one), on real data; and the bearer tokens that must
be refused.

The cases are generated from the schema that the service builds, and each root field must have
an entry in `OPERATIONS`: an operation added without saying who may use it fails here.
A refused request must change nothing at all (orders, their history, stock, carts, payments,
mail, calls to Stripe) and must not show the order it was refused.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from websockets.exceptions import ConnectionClosed

from ordergraph.auth import decode_token, forget_known_users, issue_token
from ordergraph.models import (
    CartItem,
    DeliveryStatus,
    GuestSession,
    Order,
    OrderNote,
    OrderReturn,
    OutboxEmail,
    OutboxStatus,
    PaymentDiscrepancy,
    Product,
    PromotionCode,
    ShippingRate,
    StockMovement,
    User,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from ordergraph.outgoing_webhooks import endpoints
from ordergraph.schema import build_schema
from tests.conftest import JWT_SECRET, Harness
from tests.utils.dbstate import snapshot, user_ids, without_cart_of
from tests.utils.helpers import add_to_cart, checked_out_order, make_product, stock_of
from tests.utils.live import TRANSPORT_WS, Follower, Live, RawSocket

ROLES = ("anonymous", "owner", "stranger", "staff", "guest", "access-token")
USERS = {"owner": "olive", "stranger": "mallory", "staff": "clerk", "guest": "guest:matrix"}
# Roles that send no bearer token.
TOKENLESS = ("anonymous", "access-token")

# What a role gets from an operation.
ALLOWED = "allowed"  # done on the data the test set up (the owner's order or cart, any for staff)
OWN = "own"  # done, but on the caller's own cart or orders: the owner's are untouched
UNAUTHENTICATED = "UNAUTHENTICATED"  # GraphQL error with this extensions.code
FORBIDDEN_ERROR = "FORBIDDEN error"  # GraphQL error with extensions.code FORBIDDEN
FORBIDDEN = "FORBIDDEN"  # userErrors [FORBIDDEN]
NOT_FOUND = "NOT_FOUND"  # userErrors [NOT_FOUND] (a GraphQL error for the subscription)
ABSENT = "null"  # the field answers null, as for an order that does not exist

REFUSALS = {UNAUTHENTICATED, FORBIDDEN_ERROR, FORBIDDEN, NOT_FOUND, ABSENT}


@dataclass
class World:
    """A shop with two products, an order of the owner (2 TEE) at `stage`, and the owner's
    cart holding 1 MUG."""

    app: Harness
    tee: Product
    mug: Product
    order_id: str
    session_id: str
    dead_mail_id: int
    access_token: str
    promo_id: str = ""
    return_id: str = ""
    webhook_endpoint_id: str = ""
    webhook_delivery_id: str = ""

    def token(self, role: str) -> str | None:
        if role in TOKENLESS:
            return None
        if role == "guest":
            return issue_token(JWT_SECRET, USERS[role], "guest@example.com", guest=True)
        return self.app.token(USERS[role], staff=role == "staff")

    def variables(self, operation: Operation, role: str) -> dict[str, Any]:
        """The operation's variables; the order's accessToken for the access-token caller."""
        variables = operation.variables(self)
        if role == "access-token" and "$a: String" in operation.document:
            variables["a"] = self.access_token
        return variables


STAGES = ("pending", "completed", "paid", "awaiting", "shipped", "requested", "returning")

FEED = "subscription { orderChanges { id status notes { body } } }"
ORDER_MUTATION = (
    "mutation($o: ID!) { %s(orderId: $o) { order { id status } userErrors { code message } } }"
)
SHIP = """mutation($o: ID!) {
  markOrderShipped(orderId: $o, trackingNumber: "1Z999", carrier: "UPS") {
    order { id status trackingNumber } userErrors { code message }
  }
}"""


CREATE_CODE = """mutation { createPromotionCode(input: {code: "%s", percentOff: 10}) {
  promotionCode { id code percentOff active timesRedeemed } userErrors { code message } } }"""


async def build_world(app: Harness, stage: str) -> World:
    assert stage in STAGES
    tee = await make_product("TEE", price=2500, stock=10)
    mug = await make_product("MUG", price=1000, stock=5)
    owner = app.token(USERS["owner"])
    order_id = (await checked_out_order(app, owner, tee, 2))["orderId"]
    await add_to_cart(app, owner, mug, 1)
    session_id = (await Order.get(id=order_id)).stripe_checkout_session_id
    assert session_id
    if stage == "completed":  # paid at Stripe, the webhook not (yet) here
        await app.emulator.complete_session(session_id, deliver=False)
    elif stage in ("paid", "awaiting", "shipped", "requested", "returning"):
        delivery = await app.emulator.complete_session(session_id)
        assert delivery.status_code == 200, delivery.body
    staff = app.token(USERS["staff"], staff=True)
    if stage in ("awaiting", "shipped", "returning"):
        body = await app.gql(
            ORDER_MUTATION % "markOrderAwaitingShipment", {"o": order_id}, token=staff
        )
        assert body["data"]["markOrderAwaitingShipment"]["userErrors"] == [], body
    if stage in ("shipped", "returning"):
        body = await app.gql(SHIP, {"o": order_id}, token=staff)
        assert body["data"]["markOrderShipped"]["userErrors"] == [], body
    return_id = await _withdrawn(app, order_id, owner, stage) if stage in RETURNS else ""
    # A receipt that could not be delivered, for the staff's mail operations.
    dead = await OutboxEmail.create(
        dedupe_key=f"test-dead:{order_id}",
        order_id=order_id,
        recipient="olive@bounce.test",
        subject="Your order",
        text_body="Thank you",
        html_body="<p>Thank you</p>",
        status=OutboxStatus.DEAD,
        attempts=5,
        last_error="550 5.1.1 No such user",
        next_attempt_at=datetime.now(UTC),
    )
    # A finding left for staff, for the staff's payment queries.
    await PaymentDiscrepancy.create(
        dedupe_key=f"NOT_PAID_AT_STRIPE:{session_id}",
        order_id=order_id,
        checkout_session_id=session_id,
        kind="NOT_PAID_AT_STRIPE",
        detail="test",
        action="left for staff",
    )
    await app.emulator.drain()
    body = await app.gql(
        "query($o: ID!) { order(id: $o) { accessToken } }", {"o": order_id}, token=owner
    )
    access_token = body["data"]["order"]["accessToken"]
    assert access_token, body
    # What the shop offers (after the order, whose session is as before): a rate, an archived
    # one, a promotion code at Stripe.
    await ShippingRate.create(name="Standard", amount=500)
    await ShippingRate.create(name="Archived", amount=900, active=False)
    body = await app.gql(CREATE_CODE % "MATRIX10", token=staff)
    promo = body["data"]["createPromotionCode"]
    assert promo["userErrors"] == [], body
    await app.emulator.drain()
    endpoint_id, delivery_id = await _webhook_endpoint_with_a_dead_delivery(app, order_id)
    return World(
        app,
        tee,
        mug,
        order_id,
        session_id,
        dead.id,
        access_token,
        promo["promotionCode"]["id"],
        return_id,
        webhook_endpoint_id=endpoint_id,
        webhook_delivery_id=delivery_id,
    )


# Never sent to: the world's endpoint is paused, and what a test registers hears only of
# payments, which come before.
NOWHERE = "http://127.0.0.1:9/matrix"


async def _webhook_endpoint_with_a_dead_delivery(app: Harness, order_id: str) -> tuple[str, str]:
    """A paused webhook endpoint (registered after the order, so it has heard of nothing) and
    a delivery of it that gave up, for the staff's webhook operations. Paused, it sends nothing:
    not what a replay makes due again, nor what the operations tried here write."""
    endpoint, _ = await endpoints.create_endpoint(
        NOWHERE, ["*"], actor="staff:setup", settings=app.settings
    )
    await WebhookEndpoint.filter(id=endpoint.id).update(active=False)
    now = datetime.now(UTC)
    event = await WebhookEvent.create(
        type="order.created", order_id=order_id, body="{}", created_at=now
    )
    delivery = await WebhookDelivery.create(
        endpoint_id=endpoint.id,
        event_id=event.id,
        order_id=order_id,
        event_type="order.created",
        status=DeliveryStatus.DEAD,
        attempts=7,
        response_status=503,
        last_error="HTTP 503",
        next_attempt_at=now,
        created_at=now,
    )
    return str(endpoint.id), str(delivery.id)


# Stages with a withdrawal of the owner's: requested (before shipping), or confirmed after
# delivery (a return on its way back to the shop).
RETURNS = ("requested", "returning")
REQUEST = """mutation($o: ID!, $a: String) {
  requestWithdrawal(orderId: $o, accessToken: $a) {
    orderReturn { id status lines { productId quantity } } order { id status }
    userErrors { code message }
  }
}"""
CONFIRM = """mutation($r: ID!, $a: String) {
  confirmWithdrawal(returnId: $r, accessToken: $a) {
    orderReturn { id status refunded { amount } } order { id status paymentStatus }
    userErrors { code message }
  }
}"""


async def _withdrawn(app: Harness, order_id: str, owner: str, stage: str) -> str:
    if stage == "returning":
        body = await app.gql(
            ORDER_MUTATION % "markOrderDelivered",
            {"o": order_id},
            token=app.token(USERS["staff"], staff=True),
        )
        assert body["data"]["markOrderDelivered"]["userErrors"] == [], body
    body = await app.gql(REQUEST, {"o": order_id}, token=owner)
    assert body["data"]["requestWithdrawal"]["userErrors"] == [], body
    return_id: str = body["data"]["requestWithdrawal"]["orderReturn"]["id"]
    if stage == "returning":
        body = await app.gql(CONFIRM, {"r": return_id}, token=owner)
        assert body["data"]["confirmWithdrawal"]["orderReturn"]["status"] == "CONFIRMED", body
    return return_id


Effect = Callable[[World, str, Any], Awaitable[None]]


@dataclass(frozen=True)
class Operation:
    kind: str  # "query", "mutation" or "subscription"
    document: str
    expect: dict[str, str]  # role -> outcome
    effect: Effect  # what ALLOWED / OWN must have done (given the field's answer)
    stage: str = "pending"
    variables: Callable[[World], dict[str, Any]] = field(default=lambda world: {})

    def __post_init__(self) -> None:
        assert set(self.expect) == set(ROLES), self.expect


def _roles(
    anonymous: str,
    owner: str,
    stranger: str,
    staff: str,
    guest: str | None = None,
    access: str | None = None,
) -> dict[str, str]:
    """Who gets what. A guest is a shopper like the stranger unless told otherwise; an
    access-token caller sends no bearer token, so it is anonymous unless told otherwise."""
    return {
        "anonymous": anonymous,
        "owner": owner,
        "stranger": stranger,
        "staff": staff,
        "guest": stranger if guest is None else guest,
        "access-token": anonymous if access is None else access,
    }


def _order_var(world: World) -> dict[str, Any]:
    return {"o": world.order_id}


def _mug_var(world: World) -> dict[str, Any]:
    return {"p": str(world.mug.id)}


async def _cart_of(role: str) -> list[tuple[str, int]]:
    return [
        (str(c.product_id), c.quantity)
        for c in await CartItem.filter(user_id=USERS[role]).order_by("id")
    ]


async def _order_status(world: World) -> tuple[str, str]:
    order = await Order.get(id=world.order_id)
    return order.status.value, order.payment_status.value


def _stripe_calls(world: World, method: str, prefix: str) -> list[str]:
    return [r.path for r in world.app.emulator.requests if r.method == method and prefix in r.path]


# Effects of the allowed cases


async def _lists_the_catalogue(world: World, role: str, answer: Any) -> None:
    assert {e["node"]["sku"] for e in answer["edges"]} == {"TEE", "MUG"}


async def _shows_the_product(world: World, role: str, answer: Any) -> None:
    assert answer == {"id": str(world.mug.id), "sku": "MUG", "stock": 5}


async def _shows_the_callers_cart(world: World, role: str, answer: Any) -> None:
    if role == "owner":
        assert answer["lines"] == [{"quantity": 1, "product": {"id": str(world.mug.id)}}]
    else:
        assert answer == {"itemCount": 0, "lines": []}


async def _shows_the_order(world: World, role: str, answer: Any) -> None:
    assert answer["id"] == world.order_id
    assert answer["lines"] == [{"productId": str(world.tee.id), "quantity": 2}]
    # The money breakdown and the mail address: no code, rate or tax at this shop's Stripe.
    assert {k: v for k, v in answer.items() if k not in ("id", "status", "lines")} == {
        "subtotal": {"amount": 5000, "currency": "USD"},
        "discount": {"amount": 0},
        "shippingCost": {"amount": 0},
        "tax": {"amount": 0},
        "total": {"amount": 5000},
        "amountRefunded": {"amount": 0},
        "promotionCode": None,
        "shippingMethod": None,
        "email": f"{USERS['owner']}@example.com",
    }


async def _lists_the_callers_orders(world: World, role: str, answer: Any) -> None:
    ids = [e["node"]["id"] for e in answer["edges"]]
    assert ids == ([world.order_id] if role == "owner" else [])


async def _lists_every_order(world: World, role: str, answer: Any) -> None:
    assert [e["node"]["id"] for e in answer["edges"]] == [world.order_id]


async def _added(world: World, role: str, answer: Any) -> None:
    assert answer["userErrors"] == []
    expected = 2 if role == "owner" else 1  # the owner had one already
    assert await _cart_of(role) == [(str(world.mug.id), expected)]
    assert answer["cart"]["itemCount"] == expected
    assert await stock_of(world.mug) == 5  # a cart reserves nothing


async def _set(world: World, role: str, answer: Any) -> None:
    assert answer["userErrors"] == []
    assert await _cart_of(role) == [(str(world.mug.id), 3)]
    assert answer["cart"]["itemCount"] == 3


async def _removed(world: World, role: str, answer: Any) -> None:
    assert answer["userErrors"] == []
    assert await _cart_of(role) == []
    assert answer["cart"] == {"itemCount": 0, "lines": []}


async def _checked_out(world: World, role: str, answer: Any) -> None:
    if role != "owner":  # the caller's own cart is empty; the owner's is not theirs to buy
        assert [e["code"] for e in answer["userErrors"]] == ["CART_EMPTY"], answer
        assert answer["orderId"] is None
        return
    assert answer["userErrors"] == []
    assert answer["orderId"] not in (None, world.order_id)
    new = await Order.get(id=answer["orderId"])
    assert new.user_id == USERS["owner"] and new.total == 1000
    assert await stock_of(world.mug) == 4
    assert await _cart_of("owner") == []


async def _cancelled(world: World, role: str, answer: Any) -> None:
    assert answer["userErrors"] == []
    assert answer["order"]["status"] == "CANCELLED"
    assert await _order_status(world) == ("cancelled", "expired")
    assert await stock_of(world.tee) == 10
    assert _stripe_calls(world, "POST", f"/v1/checkout/sessions/{world.session_id}/expire")


async def _synced(world: World, role: str, answer: Any) -> None:
    assert answer["userErrors"] == []
    assert answer["order"]["status"] == "PAYMENT_CONFIRMED"
    assert await _order_status(world) == ("payment_confirmed", "paid")


async def _upserted(world: World, role: str, answer: Any) -> None:
    assert answer["userErrors"] == []
    assert answer["product"]["sku"] == "NEW-1"
    product = await Product.get(sku="NEW-1")
    assert (product.price, product.stock) == (100, 3)


def _moved_to(status: str) -> Effect:
    async def moved(world: World, role: str, answer: Any) -> None:
        assert answer["userErrors"] == [], answer
        assert answer["order"]["status"] == status.upper()
        assert (await _order_status(world))[0] == status

    return moved


async def _refunded(world: World, role: str, answer: Any) -> None:
    await _moved_to("refunded")(world, role, answer)
    assert await _order_status(world) == ("refunded", "refunded")
    assert [r["amount"] for r in world.app.emulator.refunds.values()] == [5000]


async def _withdrawal_requested(world: World, role: str, answer: Any) -> None:
    assert answer["userErrors"] == [], answer
    assert answer["orderReturn"]["status"] == "REQUESTED"
    assert answer["orderReturn"]["lines"] == [{"productId": str(world.tee.id), "quantity": 2}]
    [row] = await OrderReturn.all()
    assert (str(row.order_id), row.status.value) == (world.order_id, "requested")


async def _withdrawal_confirmed(world: World, role: str, answer: Any) -> None:
    """Before shipping: refunded at once, the units released."""
    assert answer["userErrors"] == [], answer
    assert answer["orderReturn"]["status"] == "REFUNDED"
    assert answer["orderReturn"]["refunded"] == {"amount": 5000}
    assert await _order_status(world) == ("refunded", "refunded")
    assert await stock_of(world.tee) == 10
    assert [r["amount"] for r in world.app.emulator.refunds.values()] == [5000]


async def _return_received(world: World, role: str, answer: Any) -> None:
    assert answer["userErrors"] == [], answer
    assert answer["orderReturn"]["status"] == "REFUNDED"
    assert await _order_status(world) == ("refunded", "refunded")
    assert await stock_of(world.tee) == 10  # the goods are back on the shelf


async def _return_rejected(world: World, role: str, answer: Any) -> None:
    assert answer["userErrors"] == [], answer
    assert answer["orderReturn"]["status"] == "REJECTED"
    assert await _order_status(world) == ("delivered", "paid")
    assert world.app.emulator.refunds == {}


async def _stock_adjusted(world: World, role: str, answer: Any) -> None:
    assert answer["userErrors"] == [] and answer["product"]["stock"] == 7, answer
    assert await stock_of(world.mug) == 7
    [movement] = await StockMovement.filter(product_id=world.mug.id)
    assert (movement.delta, movement.stock_after, movement.actor) == (2, 7, f"staff:{USERS[role]}")


async def _note_added(world: World, role: str, answer: Any) -> None:
    assert answer["userErrors"] == [], answer
    assert [n["body"] for n in answer["order"]["notes"]] == ["Call before delivery"]
    [note] = await OrderNote.filter(order_id=world.order_id)
    assert (note.body, note.author) == ("Call before delivery", f"staff:{USERS[role]}")


async def _feeds_the_shop(world: World, role: str, answer: Any) -> None:
    assert answer["id"] == world.order_id and answer["status"] == "PENDING_PAYMENT"
    assert [n["body"] for n in answer["notes"]] == ["matrix"]


async def _lists_undelivered_mail(world: World, role: str, answer: Any) -> None:
    assert [(m["id"], m["status"], m["orderId"]) for m in answer] == [
        (str(world.dead_mail_id), "DEAD", world.order_id)
    ]


async def _lists_discrepancies(world: World, role: str, answer: Any) -> None:
    assert answer == [{"kind": "NOT_PAID_AT_STRIPE", "orderId": world.order_id, "resolvedAt": None}]


async def _lists_rates(world: World, role: str, answer: Any) -> None:
    expected = [{"name": "Standard", "active": True}]
    if role == "staff":
        expected.append({"name": "Archived", "active": False})
    assert answer == expected


async def _lists_codes(world: World, role: str, answer: Any) -> None:
    assert answer == [{"id": world.promo_id, "code": "MATRIX10", "timesRedeemed": 0}]


async def _rate_upserted(world: World, role: str, answer: Any) -> None:
    assert answer["userErrors"] == [], answer
    assert answer["shippingRate"]["name"] == "Express"
    assert await ShippingRate.filter(name="Express", amount=1500).count() == 1


async def _code_created(world: World, role: str, answer: Any) -> None:
    assert answer["userErrors"] == [], answer
    row = await PromotionCode.get(code="NEW20")
    assert world.app.emulator.promotion_codes[row.stripe_promotion_code_id]["code"] == "NEW20"


async def _code_deactivated(world: World, role: str, answer: Any) -> None:
    assert answer == {"promotionCode": {"id": world.promo_id, "active": False}, "userErrors": []}
    row = await PromotionCode.get(id=int(world.promo_id))
    assert not row.active
    assert not world.app.emulator.promotion_codes[row.stripe_promotion_code_id]["active"]


async def _lists_webhook_endpoints(world: World, role: str, answer: Any) -> None:
    assert answer == [
        {"id": world.webhook_endpoint_id, "url": NOWHERE, "events": ["*"], "active": False}
    ]


async def _lists_webhook_deliveries(world: World, role: str, answer: Any) -> None:
    assert answer == [
        {
            "id": world.webhook_delivery_id,
            "endpointId": world.webhook_endpoint_id,
            "eventType": "order.created",
            "status": "DEAD",
            "attempts": 7,
            "nextAttemptAt": None,
        }
    ]


async def _webhook_endpoint_created(world: World, role: str, answer: Any) -> None:
    assert answer["userErrors"] == [], answer
    assert answer["endpoint"]["url"] == NOWHERE and answer["endpoint"]["active"]
    row = await WebhookEndpoint.get(id=answer["endpoint"]["id"])
    assert (row.events, row.created_by) == (["order.paid"], f"staff:{USERS[role]}")
    assert answer["secret"] == row.secret and row.secret.startswith("whsec_")
    assert await WebhookEndpoint.all().count() == 2


async def _webhook_endpoint_resumed(world: World, role: str, answer: Any) -> None:
    assert answer == {
        "endpoint": {"id": world.webhook_endpoint_id, "active": True},
        "secret": None,
        "userErrors": [],
    }
    assert (await WebhookEndpoint.get(id=world.webhook_endpoint_id)).active


async def _webhook_endpoint_deleted(world: World, role: str, answer: Any) -> None:
    assert answer == {
        "endpoint": {"id": world.webhook_endpoint_id, "active": False},
        "secret": None,
        "userErrors": [],
    }
    assert await WebhookEndpoint.all().count() == 0
    assert await WebhookDelivery.all().count() == 0  # its deliveries went with it


async def _webhook_delivery_replayed(world: World, role: str, answer: Any) -> None:
    assert answer["userErrors"] == [], answer
    assert answer["delivery"]["id"] == world.webhook_delivery_id
    assert answer["delivery"]["status"] == "PENDING" and answer["delivery"]["nextAttemptAt"]
    row = await WebhookDelivery.get(id=int(world.webhook_delivery_id))
    # Due again, with a new retry window; its endpoint is paused, so it waits.
    assert (row.status, row.attempts, row.claim) == (DeliveryStatus.PENDING, 7, None)
    assert row.retry_until is not None and row.retry_until > datetime.now(UTC)


async def _mail_retried(world: World, role: str, answer: Any) -> None:
    assert answer["userErrors"] == []
    assert answer["email"] == {"id": str(world.dead_mail_id), "status": "PENDING"}
    mail = await OutboxEmail.get(id=world.dead_mail_id)
    assert mail.attempts < 5  # a fresh set of tries (the sender may have used one already)


async def _all_dead_mail_retried(world: World, role: str, answer: Any) -> None:
    assert answer == {"retried": 1, "userErrors": []}
    mail = await OutboxEmail.get(id=world.dead_mail_id)
    # A fresh set of tries: PENDING, or DEAD again at once (bounce.test refuses with a 550).
    assert mail.attempts < 5


async def _follows(world: World, role: str, answer: Any) -> None:
    assert answer["id"] == world.order_id
    assert answer["status"] == "PENDING_PAYMENT"


async def _guest_started(world: World, role: str, answer: Any) -> None:
    assert answer["userErrors"] == [] and answer["expiresAt"], answer
    identity = decode_token(JWT_SECRET, answer["token"])
    assert identity.user_id.startswith("guest:") and not identity.is_staff
    assert identity.email == "new-guest@example.com"
    assert [s.user_id for s in await GuestSession.all()] == [identity.user_id]


CART_SELECTION = "cart { itemCount lines { quantity product { id } } } userErrors { code message }"

# Every root field of the schema, who may use it and what it does. Keep it complete: the
# parametrisation below comes from the schema, so a field missing here fails its cases.
OPERATIONS: dict[str, Operation] = {
    # Queries
    "products": Operation(
        "query",
        "{ products(first: 10) { edges { node { id sku stock } } pageInfo { hasNextPage } } }",
        _roles(ALLOWED, ALLOWED, ALLOWED, ALLOWED),
        _lists_the_catalogue,
    ),
    "product": Operation(
        "query",
        "query($p: ID!) { product(id: $p) { id sku stock } }",
        _roles(ALLOWED, ALLOWED, ALLOWED, ALLOWED),
        _shows_the_product,
        variables=_mug_var,
    ),
    "cart": Operation(
        "query",
        "{ cart { itemCount lines { quantity product { id } } } }",
        _roles(UNAUTHENTICATED, ALLOWED, OWN, OWN),
        _shows_the_callers_cart,
    ),
    "order": Operation(
        "query",
        "query($o: ID!, $a: String) { order(id: $o, accessToken: $a) { "
        "id status lines { productId quantity } "
        "subtotal { amount currency } discount { amount } shippingCost { amount } "
        "tax { amount } total { amount } amountRefunded { amount } promotionCode "
        "shippingMethod { name amount { amount } } email } }",
        _roles(UNAUTHENTICATED, ALLOWED, ABSENT, ALLOWED, access=ALLOWED),
        _shows_the_order,
        variables=_order_var,
    ),
    "myOrders": Operation(
        "query",
        "{ myOrders { edges { node { id status } } } }",
        _roles(UNAUTHENTICATED, ALLOWED, OWN, OWN),
        _lists_the_callers_orders,
    ),
    "orders": Operation(
        "query",
        "{ orders { edges { node { id status } } } }",
        _roles(UNAUTHENTICATED, FORBIDDEN_ERROR, FORBIDDEN_ERROR, ALLOWED),
        _lists_every_order,
    ),
    "undeliveredEmails": Operation(
        "query",
        "{ undeliveredEmails { id status orderId recipient } }",
        _roles(UNAUTHENTICATED, FORBIDDEN_ERROR, FORBIDDEN_ERROR, ALLOWED),
        _lists_undelivered_mail,
    ),
    "paymentDiscrepancies": Operation(
        "query",
        "{ paymentDiscrepancies { kind orderId resolvedAt } }",
        _roles(UNAUTHENTICATED, FORBIDDEN_ERROR, FORBIDDEN_ERROR, ALLOWED),
        _lists_discrepancies,
    ),
    "shippingRates": Operation(
        "query",
        "{ shippingRates { name active } }",
        _roles(ALLOWED, ALLOWED, ALLOWED, ALLOWED, ALLOWED, ALLOWED),
        _lists_rates,
    ),
    "promotionCodes": Operation(
        "query",
        "{ promotionCodes { id code timesRedeemed } }",
        _roles(UNAUTHENTICATED, FORBIDDEN_ERROR, FORBIDDEN_ERROR, ALLOWED),
        _lists_codes,
    ),
    "webhookEndpoints": Operation(
        "query",
        "{ webhookEndpoints { id url events active } }",
        _roles(UNAUTHENTICATED, FORBIDDEN_ERROR, FORBIDDEN_ERROR, ALLOWED),
        _lists_webhook_endpoints,
    ),
    "webhookDeliveries": Operation(
        "query",
        """query($e: ID) { webhookDeliveries(endpointId: $e, status: "DEAD") {
             id endpointId eventType status attempts nextAttemptAt } }""",
        _roles(UNAUTHENTICATED, FORBIDDEN_ERROR, FORBIDDEN_ERROR, ALLOWED),
        _lists_webhook_deliveries,
        variables=lambda world: {"e": world.webhook_endpoint_id},
    ),
    # Mutations on the caller's own cart
    "addToCart": Operation(
        "mutation",
        """mutation($p: ID!) { addToCart(productId: $p, quantity: 1) {
             %s } }"""
        % CART_SELECTION,
        _roles(UNAUTHENTICATED, ALLOWED, OWN, OWN),
        _added,
        variables=_mug_var,
    ),
    "setCartQuantity": Operation(
        "mutation",
        """mutation($p: ID!) { setCartQuantity(productId: $p, quantity: 3) {
             %s } }"""
        % CART_SELECTION,
        _roles(UNAUTHENTICATED, ALLOWED, OWN, OWN),
        _set,
        variables=_mug_var,
    ),
    "removeFromCart": Operation(
        "mutation",
        """mutation($p: ID!) { removeFromCart(productId: $p) {
             %s } }"""
        % CART_SELECTION,
        _roles(UNAUTHENTICATED, ALLOWED, OWN, OWN),
        _removed,
        variables=_mug_var,
    ),
    "checkout": Operation(
        "mutation",
        "mutation { checkout { orderId order { id status } userErrors { code message } } }",
        _roles(UNAUTHENTICATED, ALLOWED, OWN, OWN),
        _checked_out,
    ),
    # Mutations on the owner's order
    "cancelOrder": Operation(
        "mutation",
        ORDER_MUTATION % "cancelOrder",
        # Staff too: cancelling is the shopper's own act (resolvers.cancel_order filters by
        # the caller), so a clerk's cancel reads as NOT_FOUND like anyone else's.
        _roles(UNAUTHENTICATED, ALLOWED, NOT_FOUND, NOT_FOUND),
        _cancelled,
        variables=_order_var,
    ),
    "syncOrderPayment": Operation(
        "mutation",
        ORDER_MUTATION % "syncOrderPayment",
        _roles(UNAUTHENTICATED, ALLOWED, NOT_FOUND, ALLOWED),
        _synced,
        stage="completed",
        variables=_order_var,
    ),
    # The shopper's withdrawal: the owner or the order's access token, nobody else
    "requestWithdrawal": Operation(
        "mutation",
        REQUEST,
        _roles(UNAUTHENTICATED, ALLOWED, NOT_FOUND, NOT_FOUND, access=ALLOWED),
        _withdrawal_requested,
        stage="paid",
        variables=_order_var,
    ),
    "confirmWithdrawal": Operation(
        "mutation",
        CONFIRM,
        _roles(UNAUTHENTICATED, ALLOWED, NOT_FOUND, NOT_FOUND, access=ALLOWED),
        _withdrawal_confirmed,
        stage="requested",
        variables=lambda world: {"r": world.return_id},
    ),
    # Anyone: a guest identity
    "startGuestSession": Operation(
        "mutation",
        """mutation { startGuestSession(email: "new-guest@example.com") {
             token expiresAt userErrors { code message } } }""",
        _roles(ALLOWED, ALLOWED, ALLOWED, ALLOWED, ALLOWED, ALLOWED),
        _guest_started,
    ),
    # Staff only
    "upsertProduct": Operation(
        "mutation",
        """mutation { upsertProduct(input: {sku: "NEW-1", name: "New", price: 100, stock: 3}) {
             product { id sku stock } userErrors { code message } } }""",
        _roles(UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, ALLOWED),
        _upserted,
    ),
    "upsertShippingRate": Operation(
        "mutation",
        """mutation { upsertShippingRate(input: {name: "Express", amount: 1500}) {
             shippingRate { id name } userErrors { code message } } }""",
        _roles(UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, ALLOWED),
        _rate_upserted,
    ),
    "createPromotionCode": Operation(
        "mutation",
        CREATE_CODE % "NEW20",
        _roles(UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, ALLOWED),
        _code_created,
    ),
    "setPromotionCodeActive": Operation(
        "mutation",
        """mutation($c: ID!) { setPromotionCodeActive(id: $c, active: false) {
             promotionCode { id active } userErrors { code message } } }""",
        _roles(UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, ALLOWED),
        _code_deactivated,
        variables=lambda world: {"c": world.promo_id},
    ),
    "createWebhookEndpoint": Operation(
        "mutation",
        """mutation($u: String!) { createWebhookEndpoint(url: $u, events: ["order.paid"]) {
             endpoint { id url active } secret userErrors { code message } } }""",
        _roles(UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, ALLOWED),
        _webhook_endpoint_created,
        variables=lambda world: {"u": NOWHERE},
    ),
    "setWebhookEndpointActive": Operation(
        "mutation",
        """mutation($w: ID!) { setWebhookEndpointActive(id: $w, active: true) {
             endpoint { id active } secret userErrors { code message } } }""",
        _roles(UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, ALLOWED),
        _webhook_endpoint_resumed,
        variables=lambda world: {"w": world.webhook_endpoint_id},
    ),
    "deleteWebhookEndpoint": Operation(
        "mutation",
        """mutation($w: ID!) { deleteWebhookEndpoint(id: $w) {
             endpoint { id active } secret userErrors { code message } } }""",
        _roles(UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, ALLOWED),
        _webhook_endpoint_deleted,
        variables=lambda world: {"w": world.webhook_endpoint_id},
    ),
    "replayWebhookDelivery": Operation(
        "mutation",
        """mutation($d: ID!) { replayWebhookDelivery(id: $d) {
             delivery { id status nextAttemptAt } userErrors { code message } } }""",
        _roles(UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, ALLOWED),
        _webhook_delivery_replayed,
        variables=lambda world: {"d": world.webhook_delivery_id},
    ),
    "adjustStock": Operation(
        "mutation",
        """mutation($p: ID!) { adjustStock(productId: $p, delta: 2, reason: "found two") {
             product { id stock } userErrors { code message } } }""",
        _roles(UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, ALLOWED),
        _stock_adjusted,
        variables=_mug_var,
    ),
    "addOrderNote": Operation(
        "mutation",
        """mutation($o: ID!) { addOrderNote(orderId: $o, body: "Call before delivery") {
             order { id notes { body author } } userErrors { code message } } }""",
        _roles(UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, ALLOWED),
        _note_added,
        variables=_order_var,
    ),
    "markOrderAwaitingShipment": Operation(
        "mutation",
        ORDER_MUTATION % "markOrderAwaitingShipment",
        _roles(UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, ALLOWED),
        _moved_to("awaiting_shipment"),
        stage="paid",
        variables=_order_var,
    ),
    "markOrderShipped": Operation(
        "mutation",
        SHIP,
        _roles(UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, ALLOWED),
        _moved_to("shipped"),
        stage="awaiting",
        variables=_order_var,
    ),
    "markOrderDelivered": Operation(
        "mutation",
        ORDER_MUTATION % "markOrderDelivered",
        _roles(UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, ALLOWED),
        _moved_to("delivered"),
        stage="shipped",
        variables=_order_var,
    ),
    "refundOrder": Operation(
        "mutation",
        ORDER_MUTATION % "refundOrder",
        _roles(UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, ALLOWED),
        _refunded,
        stage="paid",
        variables=_order_var,
    ),
    "receiveReturn": Operation(
        "mutation",
        """mutation($r: ID!) { receiveReturn(returnId: $r) {
             orderReturn { id status } order { id status } userErrors { code message } } }""",
        _roles(UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, ALLOWED),
        _return_received,
        stage="returning",
        variables=lambda world: {"r": world.return_id},
    ),
    "rejectReturn": Operation(
        "mutation",
        """mutation($r: ID!) { rejectReturn(returnId: $r, reason: "Worn") {
             orderReturn { id status } order { id status } userErrors { code message } } }""",
        _roles(UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, ALLOWED),
        _return_rejected,
        stage="returning",
        variables=lambda world: {"r": world.return_id},
    ),
    "retryEmail": Operation(
        "mutation",
        """mutation($m: ID!) { retryEmail(id: $m) {
             email { id status } userErrors { code message } } }""",
        _roles(UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, ALLOWED),
        _mail_retried,
        variables=lambda world: {"m": str(world.dead_mail_id)},
    ),
    "retryDeadEmails": Operation(
        "mutation",
        "mutation { retryDeadEmails { retried userErrors { code message } } }",
        _roles(UNAUTHENTICATED, FORBIDDEN, FORBIDDEN, ALLOWED),
        _all_dead_mail_retried,
    ),
    # Subscription
    "orderChanges": Operation(
        "subscription",
        FEED,
        _roles(UNAUTHENTICATED, FORBIDDEN_ERROR, FORBIDDEN_ERROR, ALLOWED),
        _feeds_the_shop,
    ),
    "orderStatusChanged": Operation(
        "subscription",
        "$a: String",  # sent by tests.utils.live.Follower (with the access token, if any)
        _roles(UNAUTHENTICATED, ALLOWED, NOT_FOUND, ALLOWED, access=ALLOWED),
        _follows,
        variables=_order_var,
    ),
}


def schema_root_fields() -> list[tuple[str, str]]:
    """(kind, field) for every root field of the schema the service serves."""
    schema = build_schema(debug=True)._schema
    roots = (
        ("query", schema.query_type),
        ("mutation", schema.mutation_type),
        ("subscription", schema.subscription_type),
    )
    return [(kind, name) for kind, root in roots if root is not None for name in root.fields]


ROOT_FIELDS = schema_root_fields()


def test_every_root_field_has_an_authorization_entry() -> None:
    served = {name: kind for kind, name in ROOT_FIELDS}
    assert len(served) == len(ROOT_FIELDS)
    missing = sorted(set(served) - set(OPERATIONS))
    assert missing == [], f"root fields with no authorization expectation: {missing}"
    stale = sorted(set(OPERATIONS) - set(served))
    assert stale == [], f"expectations for fields the schema no longer has: {stale}"
    assert {name: OPERATIONS[name].kind for name in served} == served
    assert {kind for kind, _ in ROOT_FIELDS} == {"query", "mutation", "subscription"}


async def _ask(app: Harness, document: str, variables: dict[str, Any], token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await app.http.post(
        f"{app.url}/graphql", json={"query": document, "variables": variables}, headers=headers
    )
    assert response.status_code == 200, response.text
    return response


async def _subscribe(world: World, name: str, role: str) -> tuple[str, Any]:
    """('next', the first message) or ('error', the one error), over graphql-transport-ws.
    The whole-shop feed opens with the orders changed in the last moments; its message taken
    here is the order with the staff note written meanwhile (the note is the feed's effect,
    not the caller's)."""
    refused = OPERATIONS[name].expect[role] in REFUSALS
    if name == "orderChanges":
        async with Live(world.app.url, world.token(role), FEED) as feed:
            if refused:
                return "error", await feed.refused()
            await asyncio.sleep(0.2)  # subscribed before the change
            note = await world.app.gql(
                """mutation($o: ID!) { addOrderNote(orderId: $o, body: "matrix") {
                     userErrors { code } } }""",
                {"o": world.order_id},
                token=world.app.token(USERS["staff"], staff=True),
            )
            assert note["data"]["addOrderNote"]["userErrors"] == [], note
            while True:  # each next() fails the test if nothing comes in time
                message = await feed.next()
                if message["id"] == world.order_id and message["notes"]:
                    return "next", message
    access = world.access_token if role == "access-token" else None
    async with Follower(
        world.app.url, world.token(role), world.order_id, TRANSPORT_WS, access_token=access
    ) as follower:
        if refused:
            return "error", await follower.refused()
        return "next", await follower.next()


@pytest.mark.parametrize(
    ("kind", "name", "role"),
    [
        pytest.param(kind, name, role, id=f"{kind}.{name}-{role}")
        for kind, name in ROOT_FIELDS
        for role in ROLES
    ],
)
async def test_authorization_matrix(app: Harness, kind: str, name: str, role: str) -> None:
    operation = OPERATIONS.get(name)
    if operation is None:
        pytest.fail(f"{kind} {name} has no entry in OPERATIONS: say who may use it")
    assert operation.kind == kind
    expected = operation.expect[role]
    world = await build_world(app, operation.stage)
    before = await snapshot(app.emulator)
    users_before = await user_ids()

    if kind == "subscription":
        what, answer = await _subscribe(world, name, role)
        text = json.dumps(answer)
        errors = [answer] if what == "error" else []
        payload = answer if what == "next" else None
    else:
        response = await _ask(
            app, operation.document, world.variables(operation, role), world.token(role)
        )
        text = response.text
        body = response.json()
        errors = body.get("errors") or []
        payload = (body.get("data") or {}).get(name)
    await app.emulator.drain()
    after = await snapshot(app.emulator)
    users_after = await user_ids()

    if expected in REFUSALS:
        if expected in (UNAUTHENTICATED, FORBIDDEN_ERROR) or (
            kind == "subscription" and expected == NOT_FOUND
        ):
            code = expected.split()[0]
            assert [e.get("extensions", {}).get("code") for e in errors] == [code], text
            if kind != "subscription":
                assert errors[0]["path"] == [name], text
                assert payload is None, text
        elif expected == ABSENT:
            assert errors == [] and payload is None, text
        else:  # a payload whose userErrors say why, and nothing else
            assert errors == [] and payload is not None, text
            assert [e["code"] for e in payload["userErrors"]] == [expected], text
            assert all(v is None for k, v in payload.items() if k != "userErrors"), text
        assert world.order_id not in text  # not even the id of what was refused
        assert after == before, "a refused request changed the stored state"
        if role in TOKENLESS:
            assert users_after == users_before  # no user row without a valid token
        else:
            assert users_after - users_before <= {USERS[role]}
        return

    assert errors == [], text
    await operation.effect(world, role, payload)
    if name == "orderChanges":  # the staff note that made the feed's first message
        after["notes"] = before["notes"]
    if kind != "mutation":
        assert after == before, "a read changed the stored state"
    elif expected == OWN:
        # Whatever the caller did to their own cart, the owner's order and cart are as they were.
        caller = USERS[role]
        assert without_cart_of(after, caller) == without_cart_of(before, caller)
    else:
        assert after != before


# Bearer tokens that must be refused


def _b64(part: dict[str, Any]) -> str:
    raw = json.dumps(part, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


DROP = object()
INTRUDER = "intruder"


def _claims(**override: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": INTRUDER,
        "email": "intruder@example.com",
        "roles": ["staff"],
        "iat": now,
        "exp": now + 3600,
    }
    for key, value in override.items():
        if value is DROP:
            claims.pop(key, None)
        else:
            claims[key] = value
    return claims


def _signed(claims: dict[str, Any], key: str = JWT_SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def _unsigned(alg: str) -> str:
    return f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64(_claims())}."


def _with_payload(token: str, claims: dict[str, Any]) -> str:
    """The token's header and signature around other claims."""
    header, _, signature = token.split(".")
    return f"{header}.{_b64(claims)}.{signature}"


BAD_TOKENS: dict[str, Callable[[], str]] = {
    "alg none": lambda: _unsigned("none"),
    "alg None": lambda: _unsigned("None"),
    "alg none with the real signature": lambda: (
        _b64({"alg": "none", "typ": "JWT"})
        + "."
        + _b64(_claims())
        + "."
        + _signed(_claims()).rsplit(".", 1)[1]
    ),
    "signature stripped": lambda: _signed(_claims()).rsplit(".", 1)[0] + ".",
    "HS512 with the right key": lambda: _signed(_claims(), algorithm="HS512"),
    "wrong key": lambda: _signed(_claims(), key="another-secret-" + "y" * 32),
    "expired": lambda: _signed(_claims(exp=int(time.time()) - 60)),
    "not yet valid": lambda: _signed(_claims(nbf=int(time.time()) + 3600)),
    "no sub and no exp": lambda: _signed(_claims(sub=DROP, exp=DROP)),
    "no sub": lambda: _signed(_claims(sub=DROP)),
    "no exp": lambda: _signed(_claims(exp=DROP)),
    "empty sub": lambda: _signed(_claims(sub="")),
    "sub not a string": lambda: _signed(_claims(sub=42)),
    "sub too long": lambda: _signed(_claims(sub="x" * 256)),
    "exp not a number": lambda: _signed(_claims(exp="never")),
    "not a JWT": lambda: "not.a.jwt",
    "payload tampered": lambda: _with_payload(_signed(_claims()), _claims(sub="someone-else")),
}

CART = "{ cart { itemCount } }"
PRODUCTS = "{ products { edges { node { sku } } } }"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # HS512, our key
@pytest.mark.parametrize("make_token", BAD_TOKENS.values(), ids=list(BAD_TOKENS))
async def test_bad_tokens_are_unauthenticated_and_create_no_user(
    app: Harness, make_token: Callable[[], str]
) -> None:
    token = make_token()
    response = await _ask(app, CART, {}, token)
    body = response.json()
    assert body["data"] is None, body
    assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAUTHENTICATED"], body
    staff_only = (await _ask(app, "{ orders { edges { node { id } } } }", {}, token)).json()
    assert [e["extensions"]["code"] for e in staff_only["errors"]] == ["UNAUTHENTICATED"]
    # Public fields too: served as anonymous, a client would never learn its token is bad.
    public = (await _ask(app, PRODUCTS, {}, token)).json()
    assert public["data"] is None, public
    assert [e["extensions"]["code"] for e in public["errors"]] == ["UNAUTHENTICATED"]
    assert await User.all().count() == 0

    # The same token in a WebSocket's connection_init refuses the connection.
    async with await RawSocket.open(app.url, TRANSPORT_WS) as raw:
        await raw.send({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
        with pytest.raises(ConnectionClosed) as closed:
            await raw.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    # And in the handshake's Authorization header, for clients that can set one.
    headers = {"Authorization": f"Bearer {token}"}
    async with await RawSocket.open(app.url, TRANSPORT_WS, headers=headers) as raw:
        await raw.send({"type": "connection_init", "payload": {}})
        with pytest.raises(ConnectionClosed) as closed:
            await raw.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    assert await User.all().count() == 0


@pytest.mark.parametrize(
    "header",
    ["Basic " + base64.b64encode(b"intruder:pw").decode(), "Bearer", "Bearer .", "Token abc"],
)
async def test_malformed_authorization_headers_are_unauthenticated(
    app: Harness, header: str
) -> None:
    response = await app.http.post(
        f"{app.url}/graphql", json={"query": CART}, headers={"Authorization": header}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAUTHENTICATED"], body
    assert await User.all().count() == 0


async def test_a_valid_token_is_accepted_and_creates_its_user(app: Harness) -> None:
    """The control for the refusals above: the same claims, properly signed, are let in."""
    token = _signed(_claims())
    body = (await _ask(app, CART, {}, token)).json()
    assert body == {"data": {"cart": {"itemCount": 0}}}
    staff = (await _ask(app, "{ orders { edges { node { id } } } }", {}, token)).json()
    assert staff == {"data": {"orders": {"edges": []}}}
    assert (await _ask(app, PRODUCTS, {}, token)).json() == {"data": {"products": {"edges": []}}}
    assert (await _ask(app, PRODUCTS, {}, None)).json() == {"data": {"products": {"edges": []}}}
    user = await User.get(id=INTRUDER)
    assert (user.email, user.is_staff) == ("intruder@example.com", True)


async def test_a_known_user_first_seen_by_this_process_takes_its_tokens_claims(
    app: Harness,
) -> None:
    """A user the database knows but this process has not seen (another worker made it, or a
    restart forgot it): its row follows the token's email and staff claim, and stays one row."""
    await User.create(id="returning", email="old@example.com", is_staff=False)
    forget_known_users()
    token = app.token("returning", email="new@example.com", staff=True)
    body = (await _ask(app, "{ orders { edges { node { id } } } }", {}, token)).json()
    assert body == {"data": {"orders": {"edges": []}}}
    user = await User.get(id="returning")
    assert (user.email, user.is_staff) == ("new@example.com", True)
    forget_known_users()
    body = (await _ask(app, CART, {}, app.token("returning", email="new@example.com"))).json()
    assert body == {"data": {"cart": {"itemCount": 0}}}
    assert [(u.email, u.is_staff) for u in await User.filter(id="returning")] == [
        ("new@example.com", False)
    ]
