"""Orders: their lines, their history of status changes, staff notes, payment trackers."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

from tortoise import fields
from tortoise.indexes import Index
from tortoise.migrations.constraints import CheckConstraint
from tortoise.models import Model

if TYPE_CHECKING:
    from ordergraph.models.catalog import Product, User


class OrderStatus(StrEnum):
    PENDING_PAYMENT = "pending_payment"
    PAYMENT_CONFIRMED = "payment_confirmed"
    AWAITING_SHIPMENT = "awaiting_shipment"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"
    PAYMENT_FAILED = "payment_failed"
    REFUNDED = "refunded"


class PaymentStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    PAID = "paid"
    FAILED = "failed"
    EXPIRED = "expired"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"
    DISPUTED = "disputed"


class Order(Model):
    id = fields.UUIDField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="orders", on_delete=fields.RESTRICT
    )
    status = fields.CharEnumField(OrderStatus, max_length=32, default=OrderStatus.PENDING_PAYMENT)
    payment_status = fields.CharEnumField(
        PaymentStatus, max_length=32, default=PaymentStatus.PENDING
    )
    # Bumped by every change of status or payment status, so that subscribers can tell an
    # older state from a newer one whatever order the notifications arrive in.
    version = fields.IntField(default=1)
    currency = fields.CharField(max_length=3)
    # The money story, as Stripe told it on payment: total = subtotal - discount + shipping
    # + tax (exclusive tax; inclusive tax is inside the other figures). Until payment the
    # total is the subtotal and the rest is 0.
    subtotal = fields.BigIntField(default=0)
    discount = fields.BigIntField(default=0)
    shipping_cost = fields.BigIntField(default=0)
    tax = fields.BigIntField(default=0)
    total = fields.BigIntField()
    amount_refunded = fields.BigIntField(default=0)
    promotion_code = fields.CharField(max_length=64, null=True)
    # The shipping rate the shopper chose at Stripe: {"name": ..., "amount": ...}.
    shipping_method: dict[str, Any] | None = fields.JSONField(null=True)
    shipping_address: dict[str, Any] | None = fields.JSONField(null=True)
    # What the Checkout Session offered, fixed at checkout so that the session request can be
    # rebuilt exactly (domain/checkout.session_request): {"shipping_options": [{"name",
    # "amount", "min_days", "max_days"}], "allow_promotion_codes": bool, "automatic_tax":
    # bool}. None for orders placed before these existed (nothing was offered).
    checkout_options: dict[str, Any] | None = fields.JSONField(null=True)
    carrier = fields.CharField(max_length=64, null=True)
    tracking_number = fields.CharField(max_length=128, null=True)
    is_locked = fields.BooleanField(default=False)
    stripe_checkout_session_id = fields.CharField(max_length=255, null=True, unique=True)
    stripe_payment_intent_id = fields.CharField(max_length=255, null=True)
    customer_email = fields.CharField(max_length=320, null=True)
    # The shopper's email as known at checkout (sent to Stripe as `customer_email`), so that
    # the session request can be rebuilt exactly when a crash lost its answer.
    email = fields.CharField(max_length=320, null=True)
    # The sweeper's claim: an order is looked at by one process at a time, and not again
    # before this moment (a backoff while Stripe is unreachable).
    next_check_at = fields.DatetimeField(null=True)
    expires_at = fields.DatetimeField(null=True)
    paid_at = fields.DatetimeField(null=True)
    # When staff marked it delivered: the withdrawal period runs from here.
    delivered_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    user_id: str

    class Meta:
        table = "orders"
        indexes = [
            Index(fields=("user_id", "created_at"), name="orders_user_created"),
            Index(fields=("status", "created_at"), name="orders_status_created"),
            Index(fields=("created_at",), name="orders_created"),
            Index(fields=("status", "expires_at"), name="orders_status_expires"),
            Index(fields=("stripe_payment_intent_id",), name="orders_payment_intent"),
            # Staff's order list (domain/order_search.py): its other sorts and the payment
            # status filter, with the id that breaks ties in keyset pages. The email and
            # product-name indexes are PostgreSQL expressions: migration 0008 makes them.
            Index(fields=("payment_status", "created_at"), name="orders_payment_created"),
            Index(fields=("updated_at", "id"), name="orders_updated"),
            Index(fields=("total", "id"), name="orders_total"),
        ]
        constraints = [CheckConstraint(check="total >= 0", name="orders_total_nonnegative")]


class OrderItem(Model):
    id = fields.IntField(primary_key=True)
    order: fields.ForeignKeyRelation[Order] = fields.ForeignKeyField(
        "models.Order", related_name="items", on_delete=fields.CASCADE
    )
    product: fields.ForeignKeyRelation[Product] = fields.ForeignKeyField(
        "models.Product", related_name="order_items", on_delete=fields.RESTRICT
    )
    product_name = fields.CharField(max_length=200)
    unit_price = fields.BigIntField()
    quantity = fields.IntField()
    # The product's Stripe Tax code at checkout (sent only when the order asked for automatic tax).
    tax_code = fields.CharField(max_length=32, null=True)
    # The line's ledger of what went back (domain/refunds.py): refunded <= quantity, restocked
    # <= refunded, and returning counts units in confirmed returns not yet refunded, so that
    # refunded + returning <= quantity. Each counter moves by one conditional UPDATE. The
    # database default lets existing rows (and plain INSERTs) start at 0.
    quantity_refunded = fields.IntField(default=0, db_default=0)
    quantity_restocked = fields.IntField(default=0, db_default=0)
    quantity_returning = fields.IntField(default=0, db_default=0)

    order_id: str
    product_id: str

    class Meta:
        table = "order_items"
        indexes = [Index(fields=("order_id",), name="order_items_order")]
        constraints = [CheckConstraint(check="quantity > 0", name="order_items_quantity_positive")]


class OrderStatusChange(Model):
    id = fields.IntField(primary_key=True)
    order: fields.ForeignKeyRelation[Order] = fields.ForeignKeyField(
        "models.Order", related_name="status_changes", on_delete=fields.CASCADE
    )
    status = fields.CharEnumField(OrderStatus, max_length=32)
    payment_status = fields.CharEnumField(PaymentStatus, max_length=32)
    reason = fields.CharField(max_length=255, null=True)
    actor = fields.CharField(max_length=255, null=True)
    at = fields.DatetimeField(auto_now_add=True)

    order_id: str

    class Meta:
        table = "order_status_changes"
        indexes = [Index(fields=("order_id", "id"), name="order_status_changes_order")]


class OrderNote(Model):
    """A staff note on an order (staff only, never shown to the shopper)."""

    id = fields.IntField(primary_key=True)
    order: fields.ForeignKeyRelation[Order] = fields.ForeignKeyField(
        "models.Order", related_name="notes", on_delete=fields.CASCADE
    )
    body = fields.TextField()
    author = fields.CharField(max_length=255)
    at = fields.DatetimeField(auto_now_add=True)

    order_id: str

    class Meta:
        table = "order_notes"
        indexes = [Index(fields=("order_id", "id"), name="order_notes_order")]


class PaymentTracker(Model):
    id = fields.IntField(primary_key=True)
    order: fields.ForeignKeyRelation[Order] = fields.ForeignKeyField(
        "models.Order", related_name="payments", on_delete=fields.CASCADE
    )
    provider = fields.CharField(max_length=32, default="stripe")
    session_id = fields.CharField(max_length=255, unique=True)
    payment_intent_id = fields.CharField(max_length=255, null=True)
    amount = fields.BigIntField()
    currency = fields.CharField(max_length=3)
    status = fields.CharField(max_length=32)
    created = fields.DatetimeField(auto_now_add=True)

    order_id: str

    class Meta:
        table = "payment_trackers"
        indexes = [Index(fields=("order_id",), name="payment_trackers_order")]
