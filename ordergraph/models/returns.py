"""Refunds (one row per request) and returns (withdrawals)."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

from tortoise import fields
from tortoise.indexes import Index
from tortoise.models import Model

if TYPE_CHECKING:
    from ordergraph.models.orders import Order


class RefundStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"


class OrderRefund(Model):
    """A refund staff (or a return) asked for, keyed by the request that asked: the same
    request again is the same refund, at Stripe (its idempotency key) and here (unique key).

    Written PENDING, with its lines taken, before Stripe is asked, so a refund whose answer was
    lost is finished by the same request again or by the sweeper, never lost or made twice."""

    id = fields.IntField(primary_key=True)
    request_key = fields.CharField(max_length=64, unique=True)
    order: fields.ForeignKeyRelation[Order] = fields.ForeignKeyField(
        "models.Order", related_name="refunds", on_delete=fields.CASCADE
    )
    status = fields.CharEnumField(RefundStatus, max_length=16, default=RefundStatus.PENDING)
    amount = fields.BigIntField()
    # [{"product_id", "quantity"}] refunded by line; empty for a refund by amount.
    lines: list[dict[str, Any]] = fields.JSONField(default=list)
    restock = fields.BooleanField(default=False)
    # The return this refund pays back, if any.
    return_id = fields.UUIDField(null=True)
    reason = fields.CharField(max_length=255, null=True)
    actor = fields.CharField(max_length=255)
    stripe_refund_id = fields.CharField(max_length=255, null=True)
    # Tries under a new idempotency key, after Stripe was found to hold no refund for the
    # earlier ones (Stripe keeps a failed answer under its key: see refunds.settle_refund).
    attempt = fields.IntField(default=0, db_default=0)
    created_at = fields.DatetimeField(auto_now_add=True)
    completed_at = fields.DatetimeField(null=True)

    order_id: str

    class Meta:
        table = "order_refunds"
        indexes = [
            Index(fields=("order_id",), name="order_refunds_order"),
            Index(fields=("status", "created_at"), name="order_refunds_pending"),
        ]


class ReturnStatus(StrEnum):
    REQUESTED = "requested"
    CONFIRMED = "confirmed"
    RECEIVED = "received"
    REFUNDED = "refunded"
    REJECTED = "rejected"


class OrderReturn(Model):
    """Goods the shopper sends back, or a withdrawal (EU: two steps, no reason needed)."""

    id = fields.UUIDField(primary_key=True)
    order: fields.ForeignKeyRelation[Order] = fields.ForeignKeyField(
        "models.Order", related_name="returns", on_delete=fields.CASCADE
    )
    status = fields.CharEnumField(ReturnStatus, max_length=16, default=ReturnStatus.REQUESTED)
    is_withdrawal = fields.BooleanField(default=True)
    # [{"product_id", "product_name", "quantity"}]
    lines: list[dict[str, Any]] = fields.JSONField()
    reason = fields.CharField(max_length=500, null=True)
    rejection_reason = fields.CharField(max_length=500, null=True)
    refunded_amount = fields.BigIntField(null=True)
    requested_at = fields.DatetimeField(auto_now_add=True)
    confirmed_at = fields.DatetimeField(null=True)
    received_at = fields.DatetimeField(null=True)
    updated_at = fields.DatetimeField(auto_now=True)

    order_id: str

    class Meta:
        table = "order_returns"
        indexes = [
            Index(fields=("order_id",), name="order_returns_order"),
            Index(fields=("status", "updated_at"), name="order_returns_status"),
        ]
