"""Receipts go through the outbox: a dead SMTP server delays them but never undoes a payment,
and once it is back each receipt arrives exactly once."""

from __future__ import annotations

import asyncio

from ordergraph.models import Order, OutboxEmail
from tests.conftest import Harness, Mailbox, SmtpServer
from tests.utils.helpers import checked_out_order, make_product


async def test_smtp_down_does_not_undo_confirmation_and_mail_follows(
    app: Harness, mailbox: Mailbox, smtp: SmtpServer
) -> None:
    tee = await make_product("TEE", stock=5)
    payload = await checked_out_order(app, app.token("alice"), tee)
    order = await Order.get(id=payload["orderId"])
    smtp.stop()
    try:
        delivery = await app.emulator.complete_session(order.stripe_checkout_session_id or "")
        assert delivery.status_code == 200
        await order.refresh_from_db()
        assert order.status.value == "payment_confirmed"
        for _ in range(100):
            row = await OutboxEmail.get(order_id=order.id)
            if row.attempts >= 1:
                break
            await asyncio.sleep(0.05)
        assert row.status.value == "pending"
        assert row.attempts >= 1 and row.last_error
    finally:
        smtp.start()
    messages = await mailbox.wait_for(1, timeout=15)
    assert [m["To"] for m in messages] == ["alice@example.com"]
    for _ in range(100):  # the sender records the acceptance just after the server gave it
        row = await OutboxEmail.get(order_id=order.id)
        if row.status.value == "sent":
            break
        await asyncio.sleep(0.05)
    assert row.status.value == "sent" and row.sent_at is not None
    assert len(await mailbox.wait_for(2, timeout=1)) == 1
