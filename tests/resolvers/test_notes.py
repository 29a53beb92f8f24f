"""Staff notes through the API: `addOrderNote` (staff only, checked) and `Order.notes`, which
only staff read. A note never shows in the order's history, and never reaches a shopper. Live
delivery of notes is in test_order_changes.py."""

from __future__ import annotations

from typing import Any

import pytest

from ordergraph.models import OrderNote
from tests.conftest import Harness
from tests.utils.helpers import checked_out_order, make_product
from tests.utils.live import unique

ADD_NOTE = """mutation($id: ID!, $body: String!) {
  addOrderNote(orderId: $id, body: $body) {
    order { id status updatedAt history { status reason } notes { id body author at } }
    userErrors { code message field }
  }
}"""

READ = """query($id: ID!, $access: String) {
  order(id: $id, accessToken: $access) {
    id updatedAt accessToken history { status reason actor } notes { body author }
  }
}"""


async def _order(app: Harness, owner: str) -> str:
    product = await make_product(unique("TEE"), stock=10)
    order_id: str = (await checked_out_order(app, app.token(owner), product))["orderId"]
    return order_id


async def _add(app: Harness, order_id: str, body: str, token: str) -> dict[str, Any]:
    answer = await app.gql(ADD_NOTE, {"id": order_id, "body": body}, token=token)
    assert "errors" not in answer, answer
    payload: dict[str, Any] = answer["data"]["addOrderNote"]
    return payload


async def _read(
    app: Harness, order_id: str, token: str | None, access: str | None = None
) -> dict[str, Any]:
    answer = await app.gql(READ, {"id": order_id, "access": access}, token=token)
    assert "errors" not in answer, answer
    order: dict[str, Any] = answer["data"]["order"]
    return order


async def test_staff_add_notes_and_the_order_itself_does_not_change(app: Harness) -> None:
    order_id = await _order(app, "alice")
    staff = app.token("clerk", staff=True)
    before = await _read(app, order_id, staff)

    first = await _add(app, order_id, "  Called the customer: leave at the door.\n", staff)
    assert first["userErrors"] == []
    second = await _add(app, order_id, "Parcel re-labelled", app.token("packer", staff=True))
    assert second["userErrors"] == []

    notes = second["order"]["notes"]
    assert [(n["body"], n["author"]) for n in notes] == [
        ("Called the customer: leave at the door.", "staff:clerk"),
        ("Parcel re-labelled", "staff:packer"),
    ]
    assert notes[0]["id"] != notes[1]["id"] and notes[0]["at"] <= notes[1]["at"]
    after = await _read(app, order_id, staff)
    assert after["notes"] == [{"body": n["body"], "author": n["author"]} for n in notes]
    # A note is no change of the order: same history, same updatedAt.
    assert after["history"] == before["history"]
    assert after["updatedAt"] == before["updatedAt"]
    assert second["order"]["status"] == "PENDING_PAYMENT"


async def test_shoppers_and_holders_of_the_access_token_never_see_notes(app: Harness) -> None:
    order_id = await _order(app, "alice")
    staff = app.token("clerk", staff=True)
    body = f"Suspicious address {unique('secret')}"
    assert (await _add(app, order_id, body, staff))["userErrors"] == []

    owner = await _read(app, order_id, app.token("alice"))
    assert owner["notes"] == []
    access = owner["accessToken"]
    assert access
    by_link = await _read(app, order_id, None, access)
    assert by_link["notes"] == []
    for seen in (owner, by_link):
        assert body not in str(seen)
        assert [h["status"] for h in seen["history"]] == ["PENDING_PAYMENT"]
        assert all(h["actor"] is None for h in seen["history"])
    assert (await _read(app, order_id, staff))["notes"] == [{"body": body, "author": "staff:clerk"}]


async def test_only_staff_may_add_a_note(app: Harness) -> None:
    order_id = await _order(app, "alice")
    refused = await _add(app, order_id, "mine", app.token("alice"))
    assert refused["order"] is None
    assert [e["code"] for e in refused["userErrors"]] == ["FORBIDDEN"]

    anonymous = await app.gql(ADD_NOTE, {"id": order_id, "body": "hello"})
    assert anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    forged = app.token("clerk", staff=True)[:-4] + "AAAA"
    bad_token = await app.gql(ADD_NOTE, {"id": order_id, "body": "hello"}, token=forged)
    assert bad_token["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert await OrderNote.filter(order_id=order_id).count() == 0


@pytest.mark.parametrize(
    "body",
    ["", "   \n\t ", "x" * 2001, "  " + "x" * 2001 + "  ", "before\x00after"],
    ids=["empty", "blank", "too-long", "too-long-stripped", "nul"],
)
async def test_a_note_must_be_1_to_2000_characters_of_text(app: Harness, body: str) -> None:
    order_id = await _order(app, "alice")
    payload = await _add(app, order_id, body, app.token("clerk", staff=True))
    assert payload["order"] is None
    assert [(e["code"], e["field"]) for e in payload["userErrors"]] == [("INVALID_INPUT", ["body"])]
    assert await OrderNote.filter(order_id=order_id).count() == 0


async def test_a_note_of_2000_characters_is_kept_whole(app: Harness) -> None:
    order_id = await _order(app, "alice")
    body = "é" * 1999 + "!"
    payload = await _add(app, order_id, f"\n {body} \n", app.token("clerk", staff=True))
    assert payload["userErrors"] == []
    assert payload["order"]["notes"][0]["body"] == body


@pytest.mark.parametrize(
    "order_id", ["00000000-0000-4000-8000-000000000000", "not-an-order"], ids=["unknown", "bad"]
)
async def test_a_note_on_no_order_is_not_found(app: Harness, order_id: str) -> None:
    payload = await _add(app, order_id, "hello", app.token("clerk", staff=True))
    assert payload["order"] is None
    assert [(e["code"], e["field"]) for e in payload["userErrors"]] == [("NOT_FOUND", ["orderId"])]
