"""The GraphQL schema: the contract's root fields, each bound to its resolver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    MaskErrors,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionContext

from ordergraph.resolvers import (
    cart,
    catalog,
    emails,
    guests,
    orders,
    payments,
    shop,
    subscriptions,
)
from ordergraph.resolvers.base import RefuseBadToken
from ordergraph.resolvers.shop_types import (
    PromotionCode,
    PromotionCodePayload,
    ShippingRate,
    ShippingRatePayload,
)
from ordergraph.resolvers.types import (
    Cart,
    CartPayload,
    CheckoutPayload,
    EmailPayload,
    GuestSessionPayload,
    Order,
    OrderConnection,
    OrderPayload,
    PaymentDiscrepancy,
    Product,
    ProductConnection,
    ProductPayload,
    RetryDeadEmailsPayload,
    UndeliveredEmail,
)
from ordergraph.web.graphql_rules import HideSuggestions, RequireOperationName


@strawberry.type
class Query:
    products: ProductConnection = strawberry.field(resolver=catalog.products)
    product: Product | None = strawberry.field(resolver=catalog.product)
    cart: Cart = strawberry.field(
        resolver=cart.my_cart, description="The signed-in shopper's cart."
    )
    order: Order | None = strawberry.field(
        resolver=orders.order,
        description=(
            "An order of the signed-in shopper (any order for staff, or the one order an "
            "accessToken opens); null when absent or not theirs."
        ),
    )
    my_orders: OrderConnection = strawberry.field(resolver=orders.my_orders)
    orders: OrderConnection = strawberry.field(resolver=orders.orders, description="Staff only.")
    shipping_rates: list[ShippingRate] = strawberry.field(
        resolver=shop.shipping_rates,
        description="Active rates for everyone; staff see archived ones too.",
    )
    promotion_codes: list[PromotionCode] = strawberry.field(
        resolver=shop.promotion_codes, description="Staff only."
    )
    undelivered_emails: list[UndeliveredEmail] = strawberry.field(
        resolver=emails.undelivered_emails,
        description="Staff only: mail that failed at least once and is not sent, newest first.",
    )
    payment_discrepancies: list[PaymentDiscrepancy] = strawberry.field(
        resolver=payments.payment_discrepancies,
        description=(
            "Staff only: where Stripe and the service disagreed (newest first), and what was "
            "done; unresolved ones wait for staff."
        ),
    )


@strawberry.type
class Mutation:
    add_to_cart: CartPayload = strawberry.mutation(resolver=cart.add_to_cart)
    set_cart_quantity: CartPayload = strawberry.mutation(resolver=cart.set_cart_quantity)
    remove_from_cart: CartPayload = strawberry.mutation(resolver=cart.remove_from_cart)
    checkout: CheckoutPayload = strawberry.mutation(
        resolver=cart.checkout,
        description=(
            "Creates the order (PENDING_PAYMENT), reserves stock, clears the cart, "
            "opens a Stripe Checkout Session."
        ),
    )
    cancel_order: OrderPayload = strawberry.mutation(
        resolver=orders.cancel_order,
        description=(
            "Shopper cancels an unpaid order: the Stripe session is expired and the stock released."
        ),
    )
    sync_order_payment: OrderPayload = strawberry.mutation(
        resolver=orders.sync_order_payment,
        description=(
            "Asks Stripe for the order's Checkout Session and applies a completed payment at once "
            "(for the success page)."
        ),
    )
    start_guest_session: GuestSessionPayload = strawberry.mutation(
        resolver=guests.start_guest_session,
        description="A token for a shopper without an account (when guest checkout is on).",
    )
    upsert_product: ProductPayload = strawberry.mutation(
        resolver=catalog.upsert_product, description="Staff only from here on."
    )
    mark_order_awaiting_shipment: OrderPayload = strawberry.mutation(
        resolver=orders.mark_order_awaiting_shipment
    )
    mark_order_shipped: OrderPayload = strawberry.mutation(resolver=orders.mark_order_shipped)
    mark_order_delivered: OrderPayload = strawberry.mutation(resolver=orders.mark_order_delivered)
    refund_order: OrderPayload = strawberry.mutation(resolver=orders.refund_order)
    upsert_shipping_rate: ShippingRatePayload = strawberry.mutation(
        resolver=shop.upsert_shipping_rate
    )
    create_promotion_code: PromotionCodePayload = strawberry.mutation(
        resolver=shop.create_promotion_code
    )
    set_promotion_code_active: PromotionCodePayload = strawberry.mutation(
        resolver=shop.set_promotion_code_active
    )
    retry_email: EmailPayload = strawberry.mutation(
        resolver=emails.retry_email, description="Staff only: try a DEAD mail again."
    )
    retry_dead_emails: RetryDeadEmailsPayload = strawberry.mutation(
        resolver=emails.retry_dead_emails,
        description="Staff only: try every DEAD mail again, each with a fresh set of tries.",
    )


@strawberry.type
class Subscription:
    order_status_changed: AsyncIterator[Order] = strawberry.subscription(
        resolver=subscriptions.order_status_changed,
        description=(
            "First the order as it is now, then the order after each status or payment change."
        ),
    )


def _is_unexpected(error: GraphQLError) -> bool:
    """Mask every error that is not ours on purpose: no SQL or internals reach a client."""
    if error.original_error is None:
        return False  # parse and validation errors speak of the query, not of us
    if isinstance(error.original_error, GraphQLError):
        return False
    # Strawberry's own refusals of a request (an unknown operation name, an operation type the
    # transport does not run, e.g. a query over graphql-ws) say what was wrong with it.
    return not isinstance(
        error.original_error, CannotGetOperationTypeError | InvalidOperationTypeError
    )


class Schema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Log what went wrong on our side; a refused or malformed request is not our error."""
        unexpected = [e for e in errors if _is_unexpected(e)]
        if unexpected:
            super().process_errors(unexpected, execution_context)


# Built once: a limiter made per operation is a new validator class every time, which makes
# every ValidationCache lookup a miss and costs ~7 KB for each open subscription.
LIMITS = (
    QueryDepthLimiter(max_depth=12).validation_rules
    + MaxAliasesLimiter(max_alias_count=30).validation_rules
)


def build_schema(*, debug: bool = False) -> strawberry.Schema:
    extensions: list[Callable[[], SchemaExtension] | type[SchemaExtension]] = [
        lambda: MaskErrors(should_mask_error=_is_unexpected, error_message="Internal error"),
        lambda: AddValidationRules(LIMITS),
        lambda: MaxTokensLimiter(max_token_count=2000),
        lambda: ParserCache(maxsize=512),
        lambda: ValidationCache(maxsize=512),
        subscriptions.WebSocketOnly,
        RefuseBadToken,
        RequireOperationName,
    ]
    if not debug:
        from strawberry.extensions import DisableIntrospection

        # Without introspection, error messages do not suggest field or argument names either.
        extensions += [DisableIntrospection, HideSuggestions]
    return Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,
        execution_context_class=subscriptions.SharedEventExecutor,
    )


def schema_sdl() -> str:
    return build_schema(debug=True).as_str()
