"""An order's access token: handed to its owner and staff, linked from every order mail, and
opening that one order (read and follow, over both WebSocket protocols) to whoever holds it,
and nothing else."""

from __future__ import annotations

import re
import time
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote

import jwt
import pytest

from ordergraph.auth import ORDER_ACCESS_AUDIENCE, issue_order_token
from ordergraph.models import Order
from tests.conftest import JWT_SECRET, Harness, Mailbox
from tests.utils.helpers import checked_out_order, make_product
from tests.utils.live import PROTOCOLS, Follower

START = 'mutation { startGuestSession(email: "gina@example.com") { token } }'
ORDER = """query($o: ID!, $a: String) {
  order(id: $o, accessToken: $a) { id status email accessToken }
}"""
LINK = re.compile(r"http://shop\.test/order-success/([0-9a-f-]{36})\?access=([^\s\"<]+)")


def link_in(mail: EmailMessage) -> tuple[str, str]:
    body = mail.get_body(preferencelist=("plain",))
    assert body is not None
    found = LINK.search(body.get_content())
    assert found, body.get_content()
    return found.group(1), unquote(found.group(2))


async def read(app: Harness, order_id: str, access: str | None, token: str | None = None) -> Any:
    return await app.gql(ORDER, {"o": order_id, "a": access}, token=token)


async def paid_guest_order(app: Harness) -> tuple[str, str]:
    """A guest's paid order: (its id, the guest's token)."""
    token = (await app.gql(START))["data"]["startGuestSession"]["token"]
    tee = await make_product("TEE", price=2500, stock=5)
    order_id = (await checked_out_order(app, token, tee, 1))["orderId"]
    session_id = (await Order.get(id=order_id)).stripe_checkout_session_id
    assert session_id
    delivery = await app.emulator.complete_session(session_id)
    assert delivery.status_code == 200, delivery.body
    return order_id, token


async def test_the_receipts_link_opens_the_order_without_signing_in(
    app: Harness, mailbox: Mailbox
) -> None:
    order_id, guest = await paid_guest_order(app)
    mails = await mailbox.wait_for(1)
    assert len(mails) == 1 and mails[0]["X-Envelope-To"] == "gina@example.com"
    linked_id, access = link_in(mails[0])
    assert linked_id == order_id
    html = mails[0].get_body(preferencelist=("html",))
    assert html is not None and f"/order-success/{order_id}?access=" in html.get_content()

    body = await read(app, order_id, access)
    # The holder reads the order, but is given no token of its own.
    assert body == {
        "data": {
            "order": {
                "id": order_id,
                "status": "PAYMENT_CONFIRMED",
                "email": "gina@example.com",
                "accessToken": None,
            }
        }
    }, body
    # And follows it live, over both protocols, with no bearer token.
    for protocol in PROTOCOLS:
        async with Follower(app.url, None, order_id, protocol, access_token=access) as follower:
            first = await follower.next()
            assert (first["id"], first["status"]) == (order_id, "PAYMENT_CONFIRMED")
    # The owner still reads it with its own token; the access token changes nothing for it.
    owned = await read(app, order_id, None, guest)
    assert owned["data"]["order"]["accessToken"], owned


async def test_an_access_token_opens_only_its_order(app: Harness) -> None:
    tee = await make_product("TEE", price=2500, stock=5)
    owner = app.token("olive")
    first = (await checked_out_order(app, owner, tee, 1))["orderId"]
    second = (await checked_out_order(app, owner, tee, 1))["orderId"]
    access_first = (await read(app, first, None, owner))["data"]["order"]["accessToken"]
    assert access_first

    assert (await read(app, first, access_first))["data"]["order"]["id"] == first
    assert await read(app, second, access_first) == {"data": {"order": None}}
    # A stranger signed in, holding another order's token, reads nothing either.
    stranger = app.token("mallory")
    assert await read(app, second, access_first, stranger) == {"data": {"order": None}}
    for protocol in PROTOCOLS:
        async with Follower(app.url, None, second, protocol, access_token=access_first) as f:
            refused = await f.refused()
            assert refused.get("extensions", {}).get("code") == "NOT_FOUND", refused


def _forged(order_id: str, **override: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": f"order:{order_id}",
        "aud": ORDER_ACCESS_AUDIENCE,
        "typ": "order-access",
        "iat": now,
        "exp": now + 3600,
        **override,
    }
    key = claims.pop("key", JWT_SECRET)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm="HS256")


FORGERIES = {
    "wrong key": lambda o: _forged(o, key="another-secret-" + "z" * 32),
    "expired": lambda o: _forged(o, exp=int(time.time()) - 60),
    "no audience": lambda o: _forged(o, aud=None),
    "another audience": lambda o: _forged(o, aud="ordergraph"),
    "no type": lambda o: _forged(o, typ=None),
    "a user's sub": lambda o: _forged(o, sub="olive"),
    "garbage": lambda o: "not.a.token",
    "empty": lambda o: "",
}


@pytest.mark.parametrize("make", FORGERIES.values(), ids=list(FORGERIES))
async def test_forged_access_tokens_read_nothing(app: Harness, make: Any) -> None:
    tee = await make_product("TEE", price=2500, stock=5)
    order_id = (await checked_out_order(app, app.token("olive"), tee, 1))["orderId"]
    assert await read(app, order_id, make(order_id)) == {"data": {"order": None}}


async def test_an_access_token_is_no_bearer_token(app: Harness) -> None:
    tee = await make_product("TEE", price=2500, stock=5)
    order_id = (await checked_out_order(app, app.token("olive"), tee, 1))["orderId"]
    access = issue_order_token(JWT_SECRET, order_id)
    for document, variables in (
        ("{ cart { itemCount } }", {}),
        ("query($o: ID!) { order(id: $o) { id } }", {"o": order_id}),
        ("{ products { edges { node { id } } } }", {}),
    ):
        body = await app.gql(document, variables, token=access)
        assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAUTHENTICATED"], body
    # Nor a token for anything else: without an access token, no bearer token, no order.
    body = await read(app, order_id, None)
    assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAUTHENTICATED"], body


async def test_the_access_token_is_for_the_owner_and_staff_only(app: Harness) -> None:
    tee = await make_product("TEE", price=2500, stock=5)
    order_id = (await checked_out_order(app, app.token("olive"), tee, 1))["orderId"]
    staff = await read(app, order_id, None, app.token("clerk", staff=True))
    token = staff["data"]["order"]["accessToken"]
    assert token and (await read(app, order_id, token))["data"]["order"]["id"] == order_id
    listed = await app.gql(
        "{ myOrders { edges { node { id accessToken } } } }", token=app.token("olive")
    )
    assert listed["data"]["myOrders"]["edges"][0]["node"]["accessToken"]
