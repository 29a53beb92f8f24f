"""`Subscription.orderChanges`: every order of the shop for staff, live, on one process (the
embedded `memory://` transport) and across two `ordergraph serve` processes with PostgreSQL and
with Redis events; and staff notes as they reach (or never reach) the subscribers of an order.

The feed opens with the orders changed in the last moments (30 s) and then sends only what
changes, so a test first makes sure it is being served: it writes notes on a probe order until
the feed shows one (`ready`). Messages of other orders are skipped by `Live.order`, which also
checks that what is sent of one order only ever gets newer.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from ordergraph import events
from ordergraph.auth import issue_token
from ordergraph.db import transaction
from ordergraph.domain.order_state import change_order, lock_order
from ordergraph.models import Order, OrderStatus, PaymentStatus
from ordergraph.resolvers import staff_feed, subscriptions
from ordergraph.web.token_expiry import EXPIRED_CLOSE_CODE
from tests.conftest import JWT_SECRET, Harness, postgres_only
from tests.utils.helpers import checked_out_order, make_product
from tests.utils.live import (
    GRAPHQL_WS,
    PROTOCOLS,
    REDIS_CHANNEL,
    TRANSPORT_WS,
    Cluster,
    Follower,
    Live,
    RawSocket,
    eventually,
    kill_postgres_listeners,
    kill_redis_listeners,
    redis_events_url,
    two_processes,
    unique,
)
from tests.utils.live import (
    ORDER_CHANGES as FEED,
)

__all__ = ["redis_events_url"]  # a fixture, used by name

STAFF_FOLLOW = """subscription($id: ID!) {
  orderStatusChanged(orderId: $id) { id status paymentStatus history { status } notes { body } }
}"""
ADD_NOTE = """mutation($id: ID!, $body: String!) {
  addOrderNote(orderId: $id, body: $body) { userErrors { code message } }
}"""


async def _order(app: Harness, owner: str) -> str:
    product = await make_product(unique("TEE"), stock=10)
    order_id: str = (await checked_out_order(app, app.token(owner), product))["orderId"]
    return order_id


async def _pay(app: Harness, order_id: str) -> None:
    """Stripe's signed `checkout.session.completed`, delivered to the service at `app.url`."""
    order = await Order.get(id=order_id)
    assert order.stripe_checkout_session_id
    app.emulator.webhook_url = f"{app.url}/webhooks/stripe"
    delivery = await app.emulator.complete_session(order.stripe_checkout_session_id)
    assert delivery.status_code == 200


async def _note(app: Harness, order_id: str, body: str, staff: str) -> None:
    answer = await app.gql(ADD_NOTE, {"id": order_id, "body": body}, token=staff)
    assert answer["data"]["addOrderNote"]["userErrors"] == [], answer


async def ready(feed: Live, app: Harness, staff: str) -> str:
    """Write notes on a probe order until `feed` shows one: from then on it is served."""
    probe = await _order(app, unique("probe"))
    for attempt in range(50):
        await _note(app, probe, f"probe {attempt}", staff)
        try:
            await feed.order(probe, lambda m: bool(m["notes"]), timeout=0.3)
        except TimeoutError:
            continue
        return probe
    raise AssertionError("the feed never showed the probe order")


def _status(status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda message: message["status"] == status


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_staff_see_a_new_order_then_its_payment_then_a_note(
    app: Harness, protocol: str
) -> None:
    staff = app.token("clerk", staff=True)
    async with Live(app.url, staff, protocol=protocol) as feed:
        await ready(feed, app, staff)

        order_id = await _order(app, "bob")
        new = await feed.order(order_id, _status("PENDING_PAYMENT"))
        assert (new["paymentStatus"], new["history"], new["notes"]) == (
            "PENDING",
            [{"status": "PENDING_PAYMENT"}],
            [],
        )

        await _pay(app, order_id)
        paid = await feed.order(order_id, _status("PAYMENT_CONFIRMED"))
        assert paid["paymentStatus"] == "PAID"

        await _note(app, order_id, "Gift wrap, please", staff)
        noted = await feed.order(order_id, lambda m: bool(m["notes"]))
        assert noted["notes"] == [{"body": "Gift wrap, please", "author": "staff:clerk"}]
        assert (noted["status"], noted["history"]) == ("PAYMENT_CONFIRMED", paid["history"])
        assert await feed.quiet()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_only_staff_may_follow_the_whole_shop(app: Harness, protocol: str) -> None:
    for token, code in ((app.token("alice"), "FORBIDDEN"), (None, "UNAUTHENTICATED")):
        async with Live(app.url, token, protocol=protocol) as feed:
            assert (await feed.refused())["extensions"]["code"] == code

    answer = await app.gql(FEED, token=app.token("clerk", staff=True))
    assert answer["data"] is None
    assert answer["errors"][0]["extensions"]["code"] == "INVALID_INPUT"
    assert "WebSocket" in answer["errors"][0]["message"]


async def test_a_note_reaches_staff_following_the_order_and_never_its_shopper(
    app: Harness,
) -> None:
    order_id = await _order(app, "alice")
    staff = app.token("clerk", staff=True)
    access = await _access_token(app, order_id)
    async with (
        Follower(app.url, app.token("alice"), order_id, TRANSPORT_WS) as owner,
        Follower(app.url, None, order_id, GRAPHQL_WS, access_token=access) as by_link,
        Live(app.url, staff, STAFF_FOLLOW, {"id": order_id}) as clerk,
    ):
        for follower in (owner, by_link, clerk):
            assert (await follower.next())["status"] == "PENDING_PAYMENT"

        body = f"Fraud check {unique('secret')}"
        await _note(app, order_id, body, staff)
        assert (await clerk.order(order_id, lambda m: bool(m["notes"])))["notes"] == [
            {"body": body}
        ]
        # The shopper's subscriptions are not woken by a note: not even a re-send.
        assert await owner.quiet(1.0) and await by_link.quiet(0.1)

        await _pay(app, order_id)
        for follower in (owner, by_link):
            confirmed = (await follower.until("PAYMENT_CONFIRMED"))[-1]
            assert body not in str(confirmed)
        assert (await clerk.order(order_id, _status("PAYMENT_CONFIRMED")))["notes"] == [
            {"body": body}
        ]


async def _access_token(app: Harness, order_id: str) -> str:
    answer = await app.gql(
        "query($id: ID!) { order(id: $id) { accessToken } }",
        {"id": order_id},
        token=app.token("alice"),
    )
    token: str = answer["data"]["order"]["accessToken"]
    return token


async def test_a_feed_opens_with_the_orders_changed_just_before(app: Harness) -> None:
    """A console reads its first page when its socket is acknowledged and subscribes at the
    same moment: a change committed between the two is sent when the feed opens, not at the
    order's next change (which may never come)."""
    order_id = await _order(app, unique("alice"))
    async with transaction():
        order = await lock_order(order_id)
        assert order is not None
        await change_order(order, status=OrderStatus.CANCELLED, reason="gave up", actor="t")
    async with Live(app.url, app.token(unique("clerk"), staff=True)) as feed:
        opened = await feed.order(order_id, _status("CANCELLED"), timeout=5)
    assert [change["status"] for change in opened["history"]][-1] == "CANCELLED", opened


async def test_stale_repeated_and_rolled_back_changes_send_nothing(app: Harness) -> None:
    staff = app.token("clerk", staff=True)
    async with Live(app.url, staff) as feed:
        await ready(feed, app, staff)
        order_id = await _order(app, "alice")
        await feed.order(order_id, _status("PENDING_PAYMENT"))

        with pytest.raises(RuntimeError):
            async with transaction():
                order = await lock_order(order_id)
                assert order is not None
                await change_order(order, status=OrderStatus.CANCELLED, reason="oops", actor="t")
                raise RuntimeError("roll back")
        transport = events.current_transport()
        for event in (
            events.OrderEvent(order_id, 1),
            events.OrderEvent(order_id, 1),
            events.OrderEvent(order_id, events.CATCH_UP),
            events.OrderEvent(str(uuid.uuid4()), 3),  # an order that does not exist
        ):
            await transport.publish(event)
        assert await feed.quiet()

        async with transaction():
            order = await lock_order(order_id)
            assert order is not None
            await change_order(
                order, payment_status=PaymentStatus.PROCESSING, reason="t", actor="t"
            )
        processing = await feed.order(order_id, lambda m: m["paymentStatus"] == "PROCESSING")
        assert processing["status"] == "PENDING_PAYMENT"


async def test_a_burst_of_hints_is_coalesced_per_order() -> None:
    shop = events.ShopSubscriber()
    received = time.monotonic()
    for version in range(1, 100):
        shop.offer(events.Hint(events.OrderEvent("o1", version), received + version))
    shop.offer(events.Hint(events.OrderEvent("o2", 4), received))
    shop.offer(events.Hint(events.OrderEvent("o1", 7, note=12), received))
    assert len(shop) == 2
    news = await anext(shop)
    assert news.missed_since is None
    assert news.hints == {
        "o1": events.Hint(events.OrderEvent("o1", 99, note=12), received + 99),
        "o2": events.Hint(events.OrderEvent("o2", 4), received),
    }
    assert len(shop) == 0
    shop.missed(200.0)
    shop.missed(100.0)
    assert await anext(shop) == events.ShopNews({}, 100.0)


def test_what_a_feed_remembers_is_bounded() -> None:
    sent = staff_feed.SentMarks(limit=3)
    for index in range(5):
        assert sent.record(f"o{index}", (1, 0))
    assert len(sent) == 3 and sent.get("o0") is None and sent.get("o4") == (1, 0)
    assert not sent.record("o4", (1, 0))
    assert sent.record("o2", (1, 1))  # a note: newer, and now the most recently sent
    assert sent.record("o5", (1, 0))
    assert sent.get("o3") is None and sent.get("o2") == (1, 1)


async def test_a_feed_too_slow_to_read_is_disconnected(app: Harness) -> None:
    assert await eventually(_quiescent)
    staff = app.token("clerk", staff=True)
    async with await RawSocket.open(app.url, TRANSPORT_WS) as raw:
        await raw.init(staff)
        await raw.send({"type": "subscribe", "id": "feed", "payload": {"query": FEED}})
        fanout = events.current_transport().fanout
        assert await eventually(lambda: _serving(fanout))  # the feed is the only subscriber
        # More orders waiting than a feed may hold, faster than it can read them.
        for _ in range(events.SHOP_PENDING_LIMIT + 1):
            fanout.deliver(events.OrderEvent(str(uuid.uuid4()), 2))
        received = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                received.append(await raw.recv())
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == subscriptions.SLOW_CLIENT_CLOSE_CODE
        assert all("errors" not in m.get("payload", {}) for m in received), received
    assert await eventually(_quiescent)


async def _serving(fanout: events.Fanout) -> bool:
    return len(fanout) > 0


async def _quiescent() -> bool:
    """No subscriber left in this process, no read and no catch-up query still running."""
    transport = events.current_transport()
    return len(transport.fanout) == 0 and len(subscriptions.reads) == 0 and not staff_feed._missed


async def test_a_feed_re_reads_what_changed_while_its_transport_was_away(
    app: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    staff = app.token("clerk", staff=True)
    transport = events.current_transport()
    async with Live(app.url, staff) as feed:
        await ready(feed, app, staff)
        order_id = await _order(app, "alice")
        await feed.order(order_id, _status("PENDING_PAYMENT"))

        # The payment's event is lost, as it is when a listener's connection drops.
        lost: list[events.OrderEvent] = []

        async def lose(event: events.OrderEvent) -> None:
            lost.append(event)

        with monkeypatch.context() as patch:
            patch.setattr(transport, "publish", lose)
            await _pay(app, order_id)
        assert [e.order_id for e in lost] == [order_id]
        assert await feed.quiet()

        transport.reconnected()
        paid = await feed.order(order_id, _status("PAYMENT_CONFIRMED"))
        assert paid["paymentStatus"] == "PAID"
        assert await feed.quiet()  # the other orders re-read were sent already
    assert await eventually(_quiescent)


async def test_a_staff_feed_ends_when_its_token_expires(app: Harness) -> None:
    token = issue_token(JWT_SECRET, "clerk", "clerk@example.com", staff=True, ttl_seconds=2)
    async with await RawSocket.open(app.url, GRAPHQL_WS) as raw:
        assert (await raw.init(token))["type"] == "connection_ack"
        await raw.send({"type": "start", "id": "feed", "payload": {"query": FEED}})
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await raw.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == EXPIRED_CLOSE_CODE
    assert await eventually(_quiescent)


# Across processes: two `ordergraph serve` sharing the test's PostgreSQL database.


cluster = two_processes("feed-")


@postgres_only
async def test_changes_made_on_a_reach_staff_on_b(cluster: Cluster, app: Harness) -> None:
    on_a = dataclasses.replace(app, url=cluster.a.url)
    clerk = unique("clerk")
    staff = app.token(clerk, staff=True)
    async with Live(cluster.b.url, staff) as feed:
        await ready(feed, on_a, staff)

        order_id = await _order(on_a, unique("bob"))
        assert (await feed.order(order_id, _status("PENDING_PAYMENT")))["notes"] == []

        await _pay(on_a, order_id)
        assert (await feed.order(order_id, _status("PAYMENT_CONFIRMED")))["paymentStatus"] == "PAID"

        await _note(on_a, order_id, "Ship with the next pickup", staff)
        noted = await feed.order(order_id, lambda m: bool(m["notes"]))
        assert noted["notes"] == [{"body": "Ship with the next pickup", "author": f"staff:{clerk}"}]
        assert noted["status"] == "PAYMENT_CONFIRMED"


@postgres_only
async def test_a_note_on_a_reaches_staff_on_b_and_not_the_shopper_on_b(
    cluster: Cluster, app: Harness
) -> None:
    on_a = dataclasses.replace(app, url=cluster.a.url)
    owner, staff = unique("alice"), app.token(unique("clerk"), staff=True)
    order_id = await _order(on_a, owner)
    async with (
        Follower(cluster.b.url, app.token(owner), order_id, TRANSPORT_WS) as shopper,
        Live(cluster.b.url, staff, STAFF_FOLLOW, {"id": order_id}) as clerk,
    ):
        assert (await shopper.next())["status"] == "PENDING_PAYMENT"
        assert (await clerk.next())["notes"] == []
        await _note(on_a, order_id, "Customer asked for an invoice", staff)
        assert (await clerk.next())["notes"] == [{"body": "Customer asked for an invoice"}]
        assert await shopper.quiet(1.0)


@postgres_only
async def test_a_feed_loses_no_change_when_the_listeners_drop(
    cluster: Cluster, app: Harness, database_url: str
) -> None:
    on_b = dataclasses.replace(app, url=cluster.b.url)
    staff = app.token(unique("clerk"), staff=True)
    async with Live(cluster.a.url, staff) as feed:
        await ready(feed, on_b, staff)
        order_id = await _order(on_b, unique("alice"))
        await feed.order(order_id, _status("PENDING_PAYMENT"))

        # Both processes lose their listener; the payment lands while they reconnect.
        if cluster.transport == "redis":
            assert await kill_redis_listeners(REDIS_CHANNEL) == 2
        else:
            assert await kill_postgres_listeners(database_url) == 2
        await _pay(on_b, order_id)

        paid = await feed.order(order_id, _status("PAYMENT_CONFIRMED"), timeout=25)
        assert paid["paymentStatus"] == "PAID"
