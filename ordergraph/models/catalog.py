"""The shop's catalogue and its shoppers: users, products and their stock's audit trail,
carts, what checkout offers (shipping rates, promotion codes), guest sessions."""

from __future__ import annotations

from tortoise import fields
from tortoise.indexes import Index
from tortoise.migrations.constraints import CheckConstraint
from tortoise.models import Model


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


class StockMovement(Model):
    """A change of a product's stock that was not a sale: an adjustment, an upsert, units back
    from a refund or a return. `stock_after` is the stock the change left, read in the same
    statement that made it."""

    id = fields.IntField(primary_key=True)
    product: fields.ForeignKeyRelation[Product] = fields.ForeignKeyField(
        "models.Product", related_name="stock_movements", on_delete=fields.CASCADE
    )
    delta = fields.IntField()
    stock_after = fields.IntField()
    reason = fields.CharField(max_length=255)
    actor = fields.CharField(max_length=255)
    at = fields.DatetimeField(auto_now_add=True)

    product_id: str

    class Meta:
        table = "stock_movements"
        indexes = [Index(fields=("product_id", "id"), name="stock_movements_product")]


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
