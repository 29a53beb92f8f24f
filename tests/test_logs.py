"""Logs: with LOG_FORMAT=json every line is one JSON object carrying the request's id, the
order's id and the Stripe event's id where they apply; every response names its request id."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ordergraph.domain.expiry import sweep_overdue_orders
from ordergraph.logs import ContextFilter, make_formatter
from ordergraph.models import Order
from tests.conftest import Harness
from tests.utils.helpers import checked_out_order, make_product

CANCEL = "mutation($id: ID!) { cancelOrder(orderId: $id) { order { status } userErrors { code } } }"


class JsonCapture:
    """What the service logs meanwhile, through the JSON formatter and context filter that
    LOG_FORMAT=json installs."""

    def __enter__(self) -> JsonCapture:
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.setFormatter(make_formatter("json"))
        self.handler.addFilter(ContextFilter())
        self.root = logging.getLogger()
        self.previous = self.root.level
        self.root.addHandler(self.handler)
        self.root.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self.root.removeHandler(self.handler)
        self.root.setLevel(self.previous)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.buffer.getvalue().splitlines()]


def test_json_lines_are_objects_with_their_context() -> None:
    with JsonCapture() as capture:
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("ordergraph.test").exception("failed %s", "here")
    [line] = [line for line in capture.lines() if line.get("logger") == "ordergraph.test"]
    assert line["level"] == "ERROR" and line["message"] == "failed here"
    assert "ValueError: boom" in line["exc_info"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00", line["time"])
    assert "order_id" not in line and "request_id" not in line  # only where they apply


async def test_lines_name_the_request_the_order_and_the_stripe_event(app: Harness) -> None:
    tee = await make_product("TEE", stock=5)
    alice = app.token("alice")
    paid = await checked_out_order(app, alice, tee)
    cancelled = await checked_out_order(app, alice, tee)
    order = await Order.get(id=paid["orderId"])
    assert order.stripe_checkout_session_id

    with JsonCapture() as capture:
        delivery = await app.emulator.complete_session(order.stripe_checkout_session_id)
        assert delivery.status_code == 200
        response = await app.http.post(
            f"{app.url}/graphql",
            json={"query": CANCEL, "variables": {"id": cancelled["orderId"]}},
            headers={"Authorization": f"Bearer {alice}", "X-Request-ID": "shop-req-42"},
        )
        assert response.json()["data"]["cancelOrder"]["order"]["status"] == "CANCELLED"
        assert response.headers["X-Request-ID"] == "shop-req-42"
    lines = capture.lines()

    event_id = delivery.event["id"]
    applied = [line for line in lines if line.get("stripe_event_id") == event_id]
    assert any(line["message"].endswith(": applied") for line in applied), lines
    assert all(line["order_id"] == paid["orderId"] for line in applied)
    transition = [line for line in applied if "-> payment_confirmed/paid" in line["message"]]
    assert transition and transition[0]["order_id"] == paid["orderId"]
    assert re.fullmatch(r"[0-9a-f]{32}", transition[0]["request_id"])

    cancel_lines = [line for line in lines if line.get("request_id") == "shop-req-42"]
    assert cancel_lines, lines
    assert all(line.get("order_id") == cancelled["orderId"] for line in cancel_lines), cancel_lines
    assert not any("stripe_event_id" in line for line in cancel_lines)


@pytest.mark.parametrize("given", [None, "", "has spaces", "x" * 65, "a/b", "<script>"])
async def test_a_missing_or_unusable_request_id_is_replaced(
    app: Harness, given: str | None
) -> None:
    headers = {"X-Request-ID": given} if given is not None else {}
    response = await app.http.get(f"{app.url}/healthz", headers=headers)
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


async def test_the_sweeper_names_each_order_only_while_it_works_on_it(app: Harness) -> None:
    """A long-lived task goes through many orders: each line names the order it is about, and
    a line after them names none (the id must not stick to the task)."""
    tee = await make_product("TEE", stock=5)
    first = await checked_out_order(app, app.token("ann"), tee)
    second = await checked_out_order(app, app.token("bea"), tee)
    for placed in (first, second):
        await Order.filter(id=placed["orderId"]).update(
            expires_at=datetime.now(UTC) - timedelta(hours=1)
        )
    with JsonCapture() as capture:
        assert await sweep_overdue_orders(app.asgi.state.services) == 2
        logging.getLogger("ordergraph.test").info("after the sweep")
    lines = capture.lines()
    for placed in (first, second):
        changes = [line for line in lines if placed["orderId"] in line["message"]]
        assert changes and all(line["order_id"] == placed["orderId"] for line in changes), lines
    [after] = [line for line in lines if line["message"] == "after the sweep"]
    assert "order_id" not in after
