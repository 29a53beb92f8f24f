"""Database models.

Money is stored in minor units (cents) of the shop's one currency, in 64-bit columns. Stock
is the number of units that can still be reserved: checkout takes units out of it and every
order that will not ship gives them back, so the database's `stock >= 0` check is the last
line of defence against selling a unit twice.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from tortoise import fields
from tortoise.indexes import Index
from tortoise.migrations.constraints import CheckConstraint
from tortoise.models import Model


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


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEAD = "dead"


class User(Model):
    id = fields.CharField(max_length=255, primary_key=True)
    email = fields.CharField(max_length=320, default="")
    is_staff = fields.BooleanField(default=False)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "users"


class Product(Model):
    id = fields.UUIDField(primary_key=True)
    sku = fields.CharField(max_length=64, unique=True)
    name = fields.CharField(max_length=200)
    description = fields.TextField(default="")
    price = fields.BigIntField()
    stock = fields.IntField(default=0)
    active = fields.BooleanField(default=True)
    # Stripe Tax's product tax code (txcd_...), sent per line when AUTOMATIC_TAX is on.
    tax_code = fields.CharField(max_length=32, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "products"
        constraints = [
            CheckConstraint(check="stock >= 0", name="products_stock_nonnegative"),
            CheckConstraint(check="price >= 0", name="products_price_nonnegative"),
        ]


class CartItem(Model):
    id = fields.IntField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="cart_items", on_delete=fields.CASCADE
    )
    product: fields.ForeignKeyRelation[Product] = fields.ForeignKeyField(
        "models.Product", related_name="cart_items", on_delete=fields.CASCADE
    )
    quantity = fields.IntField()
    added_at = fields.DatetimeField(auto_now_add=True)

    user_id: str
    product_id: str

    class Meta:
        table = "cart_items"
        unique_together = (("user", "product"),)


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


class ProcessedStripeEvent(Model):
    event_id = fields.CharField(max_length=255, primary_key=True)
    type = fields.CharField(max_length=100)
    received = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "processed_stripe_events"


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


class GuestSession(Model):
    """A guest token handed out, by client address: counted to rate-limit guests per address,
    so that a script cannot mint shoppers to get past per-shopper limits."""

    id = fields.IntField(primary_key=True)
    client_address = fields.CharField(max_length=64)
    user_id = fields.CharField(max_length=255)
    email = fields.CharField(max_length=320)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "guest_sessions"
        indexes = [Index(fields=("client_address", "created_at"), name="guest_sessions_address")]


class ShippingRate(Model):
    """A shipping rate staff offer at checkout (sent to Stripe as `shipping_rate_data`)."""

    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=100)
    amount = fields.BigIntField()
    # Offered at 0 when the order's subtotal reaches this many minor units.
    free_from = fields.BigIntField(null=True)
    min_delivery_days = fields.IntField(null=True)
    max_delivery_days = fields.IntField(null=True)
    active = fields.BooleanField(default=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "shipping_rates"


class PromotionCode(Model):
    """A code shoppers type at Stripe's Checkout: a Stripe coupon and its promotion code."""

    id = fields.IntField(primary_key=True)
    code = fields.CharField(max_length=64, unique=True)
    percent_off = fields.FloatField(null=True)
    amount_off = fields.BigIntField(null=True)
    currency = fields.CharField(max_length=3)
    max_redemptions = fields.IntField(null=True)
    expires_at = fields.DatetimeField(null=True)
    active = fields.BooleanField(default=True)
    stripe_coupon_id = fields.CharField(max_length=255)
    stripe_promotion_code_id = fields.CharField(max_length=255)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "promotion_codes"
