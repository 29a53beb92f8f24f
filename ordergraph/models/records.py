"""What the service keeps for itself: Stripe events applied, the mail outbox, payment
discrepancies."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from tortoise import fields
from tortoise.indexes import Index
from tortoise.models import Model

if TYPE_CHECKING:
    from ordergraph.models.orders import Order


class ProcessedStripeEvent(Model):
    event_id = fields.CharField(max_length=255, primary_key=True)
    type = fields.CharField(max_length=100)
    received = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "processed_stripe_events"


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEAD = "dead"


class OutboxEmail(Model):
    """An email waiting to be sent, written in the transaction that causes it.

    `dedupe_key` makes "one receipt per order" a database fact rather than a hope.
    """

    id = fields.IntField(primary_key=True)
    dedupe_key = fields.CharField(max_length=255, unique=True)
    order: fields.ForeignKeyNullableRelation[Order] = fields.ForeignKeyField(
        "models.Order", related_name="emails", on_delete=fields.CASCADE, null=True
    )
    recipient = fields.CharField(max_length=320)
    subject = fields.CharField(max_length=255)
    text_body = fields.TextField()
    html_body = fields.TextField()
    status = fields.CharEnumField(OutboxStatus, max_length=16, default=OutboxStatus.PENDING)
    attempts = fields.IntField(default=0)
    next_attempt_at = fields.DatetimeField()
    claimed_until = fields.DatetimeField(null=True)
    last_error = fields.TextField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    sent_at = fields.DatetimeField(null=True)

    order_id: str | None

    class Meta:
        table = "outbox_emails"
        indexes = [Index(fields=("status", "next_attempt_at"), name="outbox_status_next")]


class PaymentDiscrepancy(Model):
    """Something Stripe and the service disagree on, found when an event or a reconciliation
    compared them, with what the service did about it. `dedupe_key` records each finding once,
    however often it is found again."""

    id = fields.IntField(primary_key=True)
    dedupe_key = fields.CharField(max_length=255, unique=True)
    order: fields.ForeignKeyNullableRelation[Order] = fields.ForeignKeyField(
        "models.Order", related_name="discrepancies", on_delete=fields.CASCADE, null=True
    )
    checkout_session_id = fields.CharField(max_length=255, null=True)
    kind = fields.CharField(max_length=64)
    detail = fields.TextField()
    action = fields.CharField(max_length=255)
    found_at = fields.DatetimeField(auto_now_add=True)
    resolved_at = fields.DatetimeField(null=True)

    order_id: str | None

    class Meta:
        table = "payment_discrepancies"
        indexes = [Index(fields=("resolved_at", "found_at"), name="payment_discrepancies_open")]
