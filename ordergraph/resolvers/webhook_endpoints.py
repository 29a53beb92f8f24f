"""Staff managing the shop's outgoing webhooks: endpoints (register, pause, delete, list) and
their deliveries (list, replay). Staff only, everything.

The signing secret is answered once, by `create_webhook_endpoint`; nothing else reads it.
"""

from __future__ import annotations

import strawberry

from ordergraph.domain.errors import BusinessError, ErrorCode
from ordergraph.outgoing_webhooks import endpoints
from ordergraph.resolvers.base import (
    forbidden,
    graphql_error,
    page_size,
    payload,
    require_staff,
    require_user,
)
from ordergraph.resolvers.context import Info
from ordergraph.resolvers.webhook_types import (
    WebhookDelivery,
    WebhookDeliveryPayload,
    WebhookEndpoint,
    WebhookEndpointPayload,
)


async def webhook_endpoints(info: Info) -> list[WebhookEndpoint]:
    await require_staff(info)
    return [WebhookEndpoint.from_model(row) for row in await endpoints.list_endpoints()]


async def webhook_deliveries(
    info: Info,
    endpoint_id: strawberry.ID | None = None,
    status: str | None = None,
    first: int | None = 20,
) -> list[WebhookDelivery]:
    """Newest first; an endpoint id that names no endpoint lists nothing."""
    await require_staff(info)
    size = page_size(first, 20)
    try:
        wanted = endpoints.checked_status(status)
    except BusinessError as error:  # a refusal of the list's arguments: the list's error
        raise graphql_error(ErrorCode.INVALID_INPUT, str(error)) from None
    rows = await endpoints.list_deliveries(
        str(endpoint_id) if endpoint_id is not None else None, wanted, size
    )
    return [WebhookDelivery.from_model(row) for row in rows]


async def create_webhook_endpoint(
    info: Info, url: str, events: list[str]
) -> WebhookEndpointPayload:
    identity = await require_user(info)
    if not identity.is_staff:
        return WebhookEndpointPayload(user_errors=forbidden())
    settings = info.context.settings

    async def run() -> WebhookEndpointPayload:
        row, secret = await endpoints.create_endpoint(
            url, events, actor=f"staff:{identity.user_id}", settings=settings
        )
        return WebhookEndpointPayload(endpoint=WebhookEndpoint.from_model(row), secret=secret)

    return await payload(WebhookEndpointPayload, run())


async def set_webhook_endpoint_active(
    info: Info, id: strawberry.ID, active: bool
) -> WebhookEndpointPayload:
    identity = await require_user(info)
    if not identity.is_staff:
        return WebhookEndpointPayload(user_errors=forbidden())

    async def run() -> WebhookEndpointPayload:
        row = await endpoints.set_endpoint_active(str(id), active)
        return WebhookEndpointPayload(endpoint=WebhookEndpoint.from_model(row))

    return await payload(WebhookEndpointPayload, run())


async def delete_webhook_endpoint(info: Info, id: strawberry.ID) -> WebhookEndpointPayload:
    """Answers the endpoint as it was; its deliveries are deleted with it."""
    identity = await require_user(info)
    if not identity.is_staff:
        return WebhookEndpointPayload(user_errors=forbidden())

    async def run() -> WebhookEndpointPayload:
        row = await endpoints.delete_endpoint(str(id))
        return WebhookEndpointPayload(endpoint=WebhookEndpoint.from_model(row))

    return await payload(WebhookEndpointPayload, run())


async def replay_webhook_delivery(info: Info, id: strawberry.ID) -> WebhookDeliveryPayload:
    """Sends the delivery again (PENDING now, a new retry window), whatever its state."""
    identity = await require_user(info)
    if not identity.is_staff:
        return WebhookDeliveryPayload(user_errors=forbidden())
    settings = info.context.settings

    async def run() -> WebhookDeliveryPayload:
        row = await endpoints.replay_delivery(str(id), settings=settings)
        return WebhookDeliveryPayload(delivery=WebhookDelivery.from_model(row))

    return await payload(WebhookDeliveryPayload, run())
