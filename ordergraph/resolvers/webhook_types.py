"""The GraphQL types of outgoing webhooks: the shop's endpoints and their deliveries.

No type has a field for an endpoint's signing secret: `WebhookEndpointPayload.secret` is filled
by `createWebhookEndpoint` only, the one time the secret is shown.
"""

from __future__ import annotations

from datetime import datetime

import strawberry

from ordergraph import models
from ordergraph.resolvers.common_types import UserError


@strawberry.type
class WebhookEndpoint:
    id: strawberry.ID
    url: str
    events: list[str] = strawberry.field(
        description='Event types it receives, e.g. order.paid; ["*"] for all.'
    )
    active: bool
    created_at: datetime

    @classmethod
    def from_model(cls, row: models.WebhookEndpoint) -> WebhookEndpoint:
        return cls(
            id=strawberry.ID(str(row.id)),
            url=row.url,
            events=list(row.events),
            active=row.active,
            created_at=row.created_at,
        )


@strawberry.type
class WebhookDelivery:
    id: strawberry.ID
    endpoint_id: strawberry.ID
    event_id: strawberry.ID
    event_type: str
    status: str = strawberry.field(description="PENDING, DELIVERED or DEAD.")
    attempts: int
    response_status: int | None
    last_error: str | None
    next_attempt_at: datetime | None = strawberry.field(
        description="When the next attempt is due; null unless the delivery is PENDING."
    )
    created_at: datetime

    @classmethod
    def from_model(cls, row: models.WebhookDelivery) -> WebhookDelivery:
        pending = row.status == models.DeliveryStatus.PENDING
        return cls(
            id=strawberry.ID(str(row.id)),
            endpoint_id=strawberry.ID(str(row.endpoint_id)),
            event_id=strawberry.ID(str(row.event_id)),
            event_type=row.event_type,
            status=models.DeliveryStatus(row.status).name,
            attempts=row.attempts,
            response_status=row.response_status,
            last_error=row.last_error,
            next_attempt_at=row.next_attempt_at if pending else None,
            created_at=row.created_at,
        )


@strawberry.type
class WebhookEndpointPayload:
    endpoint: WebhookEndpoint | None = None
    secret: str | None = strawberry.field(
        default=None,
        description="The signing secret, shown once, when the endpoint is created.",
    )
    user_errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class WebhookDeliveryPayload:
    delivery: WebhookDelivery | None = None
    user_errors: list[UserError] = strawberry.field(default_factory=list)
