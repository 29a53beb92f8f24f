"""Outgoing webhooks: the shop's endpoints, the events written for them, and one delivery per
event and endpoint."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from tortoise import fields
from tortoise.indexes import Index
from tortoise.models import Model

if TYPE_CHECKING:
    from ordergraph.models.orders import Order


class WebhookEndpoint(Model):
    """A receiver registered by staff.

    `slot` (unique, 1..the endpoint limit) is what bounds the number of endpoints under
    concurrency: two registrations racing for the last slot cannot both insert.
    """

    id = fields.UUIDField(primary_key=True)
    slot = fields.IntField(unique=True)
    url = fields.CharField(max_length=2048)
    events: list[str] = fields.JSONField(default=list)
    secret = fields.CharField(max_length=128)
    active = fields.BooleanField(default=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    created_by = fields.CharField(max_length=255)

    class Meta:
        table = "webhook_endpoints"


class WebhookEvent(Model):
    """What happened, as it will be sent: `body` is the exact JSON that is signed, written in
    the transaction of the change it reports."""

    id = fields.UUIDField(primary_key=True)
    type = fields.CharField(max_length=64)
    order: fields.ForeignKeyNullableRelation[Order] = fields.ForeignKeyField(
        "models.Order", related_name="webhook_events", on_delete=fields.CASCADE, null=True
    )
    body = fields.TextField()
    created_at = fields.DatetimeField()
    # Written true by the change's transaction; the sender turns the event into its deliveries
    # and clears it (outgoing_webhooks/fan_out.py). False for events made any other way.
    fan_out_pending = fields.BooleanField(default=False)

    order_id: str | None

    class Meta:
        table = "webhook_events"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class WebhookDelivery(Model):
    """One event on its way to one endpoint.

    A sender claims a due delivery by setting `claim` and `claimed_until` (the lease), with
    `FOR UPDATE SKIP LOCKED` on PostgreSQL; only the holder of the claim may record the
    outcome. Deliveries of one order to one endpoint go in `id` order: a later one waits while
    an earlier one is PENDING.
    """

    id = fields.BigIntField(primary_key=True)
    endpoint: fields.ForeignKeyRelation[WebhookEndpoint] = fields.ForeignKeyField(
        "models.WebhookEndpoint", related_name="deliveries", on_delete=fields.CASCADE
    )
    event: fields.ForeignKeyRelation[WebhookEvent] = fields.ForeignKeyField(
        "models.WebhookEvent", related_name="deliveries", on_delete=fields.CASCADE
    )
    order_id = fields.UUIDField(null=True)
    event_type = fields.CharField(max_length=64)
    status = fields.CharEnumField(DeliveryStatus, max_length=16, default=DeliveryStatus.PENDING)
    attempts = fields.IntField(default=0)
    next_attempt_at = fields.DatetimeField()
    # Retried until then; none: `created_at` + WEBHOOK_RETRY_HOURS (a replay sets it anew).
    retry_until = fields.DatetimeField(null=True)
    claim = fields.CharField(max_length=36, null=True)
    claimed_until = fields.DatetimeField(null=True)
    response_status = fields.IntField(null=True)
    last_error = fields.TextField(null=True)
    created_at = fields.DatetimeField()
    delivered_at = fields.DatetimeField(null=True)

    endpoint_id: str
    event_id: str

    class Meta:
        table = "webhook_deliveries"
        # Staff's lists by endpoint. The sender's two partial indexes (of PENDING rows only)
        # are made by migration 0009 in SQL: Tortoise's Index has no WHERE.
        indexes = [Index(fields=("endpoint_id", "id"), name="webhook_deliveries_endpoint")]
