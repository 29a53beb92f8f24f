"""The GraphQL schema: the contract's root fields, each bound to its resolver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import strawberry
from graphql import GraphQLError
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.extensions import (
    MaxAliasesLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
)
from strawberry.schema.schema import validate_document
from strawberry.types import ExecutionContext

from ordergraph.bounded_cache import BoundedCache
from ordergraph.resolvers import (
    cart,
    catalog,
    emails,
    guests,
    orders,
    payments,
    query_plans,
    returns,
    shop,
    subscriptions,
)
from ordergraph.resolvers import webhook_endpoints as webhook_admin
from ordergraph.resolvers.base import refuse_bad_token
from ordergraph.resolvers.shop_types import (
    PromotionCode,
    PromotionCodePayload,
    ShippingRate,
    ShippingRatePayload,
)
from ordergraph.resolvers.staff_types import (
    EmailPayload,
    PaymentDiscrepancy,
    RetryDeadEmailsPayload,
    UndeliveredEmail,
)
from ordergraph.resolvers.types import (
    Cart,
    CartPayload,
    CheckoutPayload,
    GuestSessionPayload,
    Order,
    OrderConnection,
    OrderPayload,
    Product,
    ProductConnection,
    ProductPayload,
    ReturnPayload,
)
from ordergraph.resolvers.webhook_types import (
    WebhookDelivery,
    WebhookDeliveryPayload,
    WebhookEndpoint,
    WebhookEndpointPayload,
)
from ordergraph.web.graphql_rules import ClientErrors, is_unexpected, require_operation_name


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
    webhook_endpoints: list[WebhookEndpoint] = strawberry.field(
        resolver=webhook_admin.webhook_endpoints,
        description="Staff only: the shop's outgoing webhook endpoints, oldest first.",
    )
    webhook_deliveries: list[WebhookDelivery] = strawberry.field(
        resolver=webhook_admin.webhook_deliveries,
        description=(
            "Staff only: deliveries of outgoing webhooks, newest first; status is PENDING, "
            "DELIVERED or DEAD."
        ),
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
    request_withdrawal: ReturnPayload = strawberry.mutation(
        resolver=returns.request_withdrawal,
        description=(
            "Step one of a withdrawal (owner or accessToken): names what goes back; all lines "
            "when none are given."
        ),
    )
    confirm_withdrawal: ReturnPayload = strawberry.mutation(
        resolver=returns.confirm_withdrawal,
        description=(
            "Step two: the shopper confirms; an acknowledgement with the time is mailed. Before "
            "shipping, the money is refunded and the stock released at once."
        ),
    )
    upsert_product: ProductPayload = strawberry.mutation(
        resolver=catalog.upsert_product, description="Staff only from here on."
    )
    adjust_stock: ProductPayload = strawberry.mutation(resolver=catalog.adjust_stock)
    mark_order_awaiting_shipment: OrderPayload = strawberry.mutation(
        resolver=orders.mark_order_awaiting_shipment
    )
    mark_order_shipped: OrderPayload = strawberry.mutation(resolver=orders.mark_order_shipped)
    mark_order_delivered: OrderPayload = strawberry.mutation(resolver=orders.mark_order_delivered)
    refund_order: OrderPayload = strawberry.mutation(
        resolver=orders.refund_order,
        description=(
            "Without amount or lines: the whole remainder. With lines: those units (their share "
            "of what was charged), back to stock when restock is true."
        ),
    )
    add_order_note: OrderPayload = strawberry.mutation(resolver=orders.add_order_note)
    receive_return: ReturnPayload = strawberry.mutation(
        resolver=returns.receive_return,
        description="Goods of a return arrived: refunds their share, restocks them when asked.",
    )
    reject_return: ReturnPayload = strawberry.mutation(resolver=returns.reject_return)
    upsert_shipping_rate: ShippingRatePayload = strawberry.mutation(
        resolver=shop.upsert_shipping_rate
    )
    create_promotion_code: PromotionCodePayload = strawberry.mutation(
        resolver=shop.create_promotion_code
    )
    set_promotion_code_active: PromotionCodePayload = strawberry.mutation(
        resolver=shop.set_promotion_code_active
    )
    create_webhook_endpoint: WebhookEndpointPayload = strawberry.mutation(
        resolver=webhook_admin.create_webhook_endpoint,
        description="Staff only: the signing secret is in this answer, and never again.",
    )
    set_webhook_endpoint_active: WebhookEndpointPayload = strawberry.mutation(
        resolver=webhook_admin.set_webhook_endpoint_active,
        description="Staff only: a paused endpoint's deliveries wait until it is resumed.",
    )
    delete_webhook_endpoint: WebhookEndpointPayload = strawberry.mutation(
        resolver=webhook_admin.delete_webhook_endpoint,
        description="Staff only: its deliveries are deleted with it.",
    )
    replay_webhook_delivery: WebhookDeliveryPayload = strawberry.mutation(
        resolver=webhook_admin.replay_webhook_delivery,
        description="Staff only: send a delivery again, whatever its state.",
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
    order_changes: AsyncIterator[Order] = strawberry.subscription(
        resolver=subscriptions.order_changes,
        description="Staff only: every order of the shop, new ones included, after each change.",
    )
    order_status_changed: AsyncIterator[Order] = strawberry.subscription(
        resolver=subscriptions.order_status_changed,
        description=(
            "First the order as it is now, then the order after each status or payment change."
        ),
    )


class Schema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Log what went wrong on our side; a refused or malformed request is not our error."""
        unexpected = [e for e in errors if is_unexpected(e)]
        if unexpected:
            super().process_errors(unexpected, execution_context)


# Built once: a limiter made per operation is a new validator class every time, which makes
# every validation cache lookup (`ValidationByText`) a miss and costs ~7 KB for each open
# subscription.
LIMITS = (
    QueryDepthLimiter(max_depth=12).validation_rules
    + MaxAliasesLimiter(max_alias_count=30).validation_rules
)
MAX_TOKENS = 2000


class OperationRules(ClientErrors):
    """The service's checks before each operation, and what a client sees of its errors after
    (`ClientErrors`), in one hook: the limits (`LIMITS`, and `MAX_TOKENS` for the parser), a
    bad token refused (`refuse_bad_token`), a name when the document holds several operations
    (`require_operation_name`), and no introspection and no name suggestions unless `debug`.

    They were six extensions (AddValidationRules, MaxTokensLimiter, RefuseBadToken,
    RequireOperationName, DisableIntrospection, then the error masking). An `on_operation` hook
    stays open as long as its operation runs, and a subscription runs as long as it is
    subscribed: each cost an idle subscriber ~0.5 to 1.2 KB (its generator, context manager
    and exit callback).
    """

    def __init__(self, *, debug: bool) -> None:
        super().__init__(hide_suggestions=not debug)
        self.introspection = debug

    def on_operation(self) -> Iterator[None]:
        execution = self.execution_context
        execution.validation_rules = (*execution.validation_rules, *LIMITS)
        execution.parse_options["max_tokens"] = MAX_TOKENS
        refuse_bad_token(execution)
        require_operation_name(execution)
        if not self.introspection:
            execution.validation_rules = (
                *execution.validation_rules,
                NoSchemaIntrospectionCustomRule,
            )
        yield from super().on_operation()


# Validation errors by (schema, query text, rules), for as many texts as the parser cache keeps.
_VALIDATED = BoundedCache[tuple[object, str, tuple[object, ...]], list[GraphQLError]](512)


class ValidationByText(SchemaExtension):
    """Strawberry's ValidationCache, keyed by the query's text instead of its parsed document.

    graphql-core's AST nodes are frozen dataclasses that hash by walking the whole tree, so
    each lookup by document cost ~170 hashes for the success page's query. The parser cache
    makes one document per text, which validates as any other parse of the text would."""

    def on_validate(self) -> Iterator[None]:
        execution = self.execution_context
        schema, document = execution.schema._schema, execution.graphql_document
        assert document is not None
        rules = execution.validation_rules

        def validate() -> list[GraphQLError]:
            return validate_document(schema, document, rules)

        query = execution.query
        execution.pre_execution_errors = (
            validate() if query is None else _VALIDATED.get((schema, query, rules), validate)
        )
        yield


def build_schema(*, debug: bool = False) -> strawberry.Schema:
    extensions: list[Callable[[], SchemaExtension] | type[SchemaExtension]] = [
        # Without introspection, error messages do not suggest field or argument names either.
        lambda: OperationRules(debug=debug),
        lambda: ParserCache(maxsize=512),
        ValidationByText,
        subscriptions.WebSocketOnly,
    ]
    return Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,
        execution_context_class=query_plans.PlannedExecutor,
    )


def schema_sdl() -> str:
    return build_schema(debug=True).as_str()
