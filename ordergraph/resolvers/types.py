"""The GraphQL object types of the public contract, built from the database models."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import strawberry
from strawberry.types import Info

from ordergraph import models
from ordergraph.auth import issue_order_token
from ordergraph.domain import returns, stock
from ordergraph.resolvers.common_types import (
    Money,
    OrderStatus,
    PageInfo,
    PaymentStatus,
    UserError,
)
from ordergraph.resolvers.return_types import OrderReturn
from ordergraph.resolvers.staff_types import OrderNote, StockMovement


@strawberry.type
class Product:
    id: strawberry.ID
    sku: str
    name: str
    description: str
    price: Money
    stock: int = strawberry.field(description="Units that can still be reserved.")
    active: bool = strawberry.field(
        description="Archived products stay on past orders but cannot be carted."
    )
    tax_code: str | None = strawberry.field(
        default=None,
        description="Stripe Tax product tax code (txcd_...), used when automatic tax is on.",
    )

    @strawberry.field(
        description="Staff only: every change of stock that was not a sale, newest first."
    )
    async def stock_movements(self, info: Info, first: int | None = 20) -> list[StockMovement]:
        identity = info.context.identity
        if identity is None or not identity.is_staff:
            return []
        limit = max(0, min(100, 20 if first is None else first))
        return [StockMovement.from_model(r) for r in await stock.movements(str(self.id), limit)]

    @classmethod
    def from_model(cls, product: models.Product, currency: str) -> Product:
        return cls(
            id=strawberry.ID(str(product.id)),
            sku=product.sku,
            name=product.name,
            description=product.description,
            price=Money(amount=product.price, currency=currency),
            stock=product.stock,
            active=product.active,
            tax_code=product.tax_code,
        )


@strawberry.type
class CartLine:
    product: Product
    quantity: int
    line_total: Money


@strawberry.type
class Cart:
    lines: list[CartLine]
    item_count: int
    total: Money

    @classmethod
    def from_items(cls, items: list[models.CartItem], currency: str) -> Cart:
        lines = [
            CartLine(
                product=Product.from_model(item.product, currency),
                quantity=item.quantity,
                line_total=Money(amount=item.product.price * item.quantity, currency=currency),
            )
            for item in items
        ]
        return cls(
            lines=lines,
            item_count=sum(item.quantity for item in items),
            total=Money(amount=sum(line.line_total.amount for line in lines), currency=currency),
        )


@strawberry.type
class Address:
    name: str | None = None
    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None

    @classmethod
    def from_json(cls, value: dict[str, Any] | None) -> Address | None:
        if not value:
            return None
        return cls(**{key: value.get(key) for key in cls.__annotations__})


@strawberry.type
class OrderLine:
    product_id: strawberry.ID
    product_name: str
    unit_price: Money
    quantity: int
    line_total: Money
    quantity_refunded: int = strawberry.field(
        description="Units of this line refunded so far (by line, a withdrawal or a return)."
    )


@strawberry.type
class StatusChange:
    status: OrderStatus  # type: ignore[valid-type]
    payment_status: PaymentStatus  # type: ignore[valid-type]
    at: datetime
    reason: str | None
    actor: str | None = strawberry.field(
        description="Staff only: who made the change (user:..., staff:..., stripe:evt_..., system)."
    )


@strawberry.type
class ShippingMethod:
    name: str
    amount: Money

    @classmethod
    def from_json(cls, value: dict[str, Any] | None, currency: str) -> ShippingMethod | None:
        if not isinstance(value, dict) or not isinstance(value.get("amount"), int):
            return None
        return cls(
            name=str(value.get("name") or ""),
            amount=Money(amount=value["amount"], currency=currency),
        )


@strawberry.type
class Order:
    id: strawberry.ID
    status: OrderStatus  # type: ignore[valid-type]
    payment_status: PaymentStatus  # type: ignore[valid-type]
    subtotal: Money = strawberry.field(description="Sum of the lines.")
    discount: Money = strawberry.field(
        description="Discount from a promotion code, as Stripe applied it (0 until paid)."
    )
    shipping_cost: Money = strawberry.field(
        description="Shipping the shopper chose at Stripe (0 until paid, or when free)."
    )
    tax: Money = strawberry.field(
        description="Tax as Stripe computed it (0 until paid, or when automatic tax is off)."
    )
    total: Money = strawberry.field(
        description="The subtotal until payment; then exactly what Stripe charged."
    )
    amount_refunded: Money
    promotion_code: str | None
    shipping_method: ShippingMethod | None
    email: str | None = strawberry.field(description="Where this order's mail goes.")
    shipping_address: Address | None
    carrier: str | None
    tracking_number: str | None
    is_locked: bool
    created_at: datetime
    updated_at: datetime
    paid_at: datetime | None
    expires_at: datetime | None
    version: strawberry.Private[int]
    delivered_at: strawberry.Private[datetime | None]
    # The row itself, for the rules that read it (may the shopper withdraw?); None once a
    # subscription message is sent.
    row: strawberry.Private[models.Order | None]
    # Whose order it is: the owner (and staff) may see its accessToken.
    owner_id: strawberry.Private[str | None] = None
    # Set on subscription messages: answers shared by everyone following this snapshot.
    answers: strawberry.Private[dict[Any, Any] | None] = None

    @classmethod
    def from_model(cls, order: models.Order) -> Order:
        return cls(
            id=strawberry.ID(str(order.id)),
            status=order.status,
            payment_status=order.payment_status,
            subtotal=Money(amount=order.subtotal, currency=order.currency),
            discount=Money(amount=order.discount, currency=order.currency),
            shipping_cost=Money(amount=order.shipping_cost, currency=order.currency),
            tax=Money(amount=order.tax, currency=order.currency),
            total=Money(amount=order.total, currency=order.currency),
            amount_refunded=Money(amount=order.amount_refunded, currency=order.currency),
            promotion_code=order.promotion_code,
            shipping_method=ShippingMethod.from_json(order.shipping_method, order.currency),
            email=order.email or order.customer_email,
            shipping_address=Address.from_json(order.shipping_address),
            carrier=order.carrier,
            tracking_number=order.tracking_number,
            is_locked=order.is_locked,
            created_at=order.created_at,
            updated_at=order.updated_at,
            paid_at=order.paid_at,
            expires_at=order.expires_at,
            version=order.version,
            delivered_at=order.delivered_at,
            row=order,
            owner_id=order.user_id,
        )

    @strawberry.field
    async def lines(self, info: Info) -> list[OrderLine]:
        currency = self.total.currency
        items = await info.context.loaders.order_items.load(str(self.id))
        return [
            OrderLine(
                product_id=strawberry.ID(str(item.product_id)),
                product_name=item.product_name,
                unit_price=Money(amount=item.unit_price, currency=currency),
                quantity=item.quantity,
                line_total=Money(amount=item.unit_price * item.quantity, currency=currency),
                quantity_refunded=item.quantity_refunded,
            )
            for item in items
        ]

    @strawberry.field(
        description=(
            "For the order's owner and staff: a token that lets its holder read this order, "
            "follow it live and withdraw from it (links in mails, guest shoppers)."
        )
    )
    def access_token(self, info: Info) -> str | None:
        identity = info.context.identity
        if identity is None or not (identity.is_staff or identity.user_id == self.owner_id):
            return None
        return issue_order_token(info.context.settings.jwt_secret, str(self.id))

    @strawberry.field(description="Every status the order has had, oldest first.")
    async def history(self, info: Info) -> list[StatusChange]:
        changes = await info.context.loaders.status_changes.load(str(self.id))
        identity = info.context.identity
        staff = identity is not None and identity.is_staff
        return [
            StatusChange(
                status=c.status,
                payment_status=c.payment_status,
                at=c.at,
                reason=c.reason,
                actor=c.actor if staff else None,
            )
            for c in changes
        ]

    @strawberry.field(description="Staff only.")
    async def notes(self, info: Info) -> list[OrderNote]:
        identity = info.context.identity
        if identity is None or not identity.is_staff:
            return []
        rows = await info.context.loaders.order_notes.load(str(self.id))
        return [OrderNote.from_model(row) for row in rows]

    @strawberry.field
    async def returns(self, info: Info) -> list[OrderReturn]:
        rows = await info.context.loaders.order_returns.load(str(self.id))
        return [OrderReturn.from_model(row, self.total.currency) for row in rows]

    @strawberry.field(
        description=(
            "Until when the shopper may withdraw (delivery + the withdrawal period); null "
            "before delivery."
        )
    )
    def withdrawal_deadline(self, info: Info) -> datetime | None:
        assert self.row is not None  # cleared only once a subscription's message is sent
        return returns.withdrawal_deadline(self.row, info.context.settings)

    @strawberry.field(
        description=(
            "Whether the shopper may withdraw now (requestWithdrawal): paid, within the "
            "period, and units left that are neither refunded nor on their way back."
        )
    )
    async def can_withdraw(self, info: Info) -> bool:
        items = await info.context.loaders.order_items.load(str(self.id))
        assert self.row is not None
        return returns.can_withdraw(self.row, items, info.context.settings)


@strawberry.type
class ProductEdge:
    cursor: str
    node: Product


@strawberry.type
class ProductConnection:
    edges: list[ProductEdge]
    page_info: PageInfo


@strawberry.type
class OrderEdge:
    cursor: str
    node: Order


@strawberry.type
class OrderConnection:
    edges: list[OrderEdge]
    page_info: PageInfo
    total_count: int


@strawberry.type
class CartPayload:
    cart: Cart | None = None
    user_errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class CheckoutPayload:
    order_id: strawberry.ID | None = None
    client_secret: str | None = None
    order: Order | None = None
    user_errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class ReturnPayload:
    order_return: OrderReturn | None = None
    order: Order | None = None
    user_errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class OrderPayload:
    order: Order | None = None
    user_errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class GuestSessionPayload:
    token: str | None = strawberry.field(
        default=None,
        description=(
            'A bearer token for a guest shopper (sub guest:<uuid>, roles ["guest"]): cart, '
            "checkout and their orders, like any shopper."
        ),
    )
    expires_at: datetime | None = None
    user_errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class ProductPayload:
    product: Product | None = None
    user_errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.input
class ProductInput:
    sku: str
    name: str
    description: str | None = ""
    price: int
    stock: int
    active: bool | None = True
    tax_code: str | None = None
