"""Database models, one module per part of the shop, all registered as Tortoise's app `models`.

Money is stored in minor units (cents) of the shop's one currency, in 64-bit columns. Stock
is the number of units that can still be reserved: checkout takes units out of it and every
order that will not ship gives them back, so the database's `stock >= 0` check is the last
line of defence against selling a unit twice.
"""

from ordergraph.models.catalog import (
    CartItem,
    GuestSession,
    Product,
    PromotionCode,
    ShippingRate,
    StockMovement,
    User,
)
from ordergraph.models.orders import (
    Order,
    OrderItem,
    OrderNote,
    OrderStatus,
    OrderStatusChange,
    PaymentStatus,
    PaymentTracker,
)
from ordergraph.models.records import (
    OutboxEmail,
    OutboxStatus,
    PaymentDiscrepancy,
    ProcessedStripeEvent,
)
from ordergraph.models.returns import (
    OrderRefund,
    OrderReturn,
    RefundStatus,
    ReturnStatus,
)
from ordergraph.models.webhooks import (
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

__all__ = [
    "CartItem",
    "DeliveryStatus",
    "GuestSession",
    "Order",
    "OrderItem",
    "OrderNote",
    "OrderRefund",
    "OrderReturn",
    "OrderStatus",
    "OrderStatusChange",
    "OutboxEmail",
    "OutboxStatus",
    "PaymentDiscrepancy",
    "PaymentStatus",
    "PaymentTracker",
    "ProcessedStripeEvent",
    "Product",
    "PromotionCode",
    "RefundStatus",
    "ReturnStatus",
    "ShippingRate",
    "StockMovement",
    "User",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
]
