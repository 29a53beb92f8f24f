"""What staff do with endpoints and deliveries: register, pause, delete, list, replay.

Registering shows the signing secret once (the API has no field that reads it back). The
number of endpoints is bounded in the database: each takes one of `MAX_ENDPOINTS` slots, a
unique column, so two registrations racing for the last one cannot both succeed. Deleting an
endpoint deletes its deliveries; pausing one keeps its deliveries waiting, new ones included,
until it is resumed, so a receiver taken down for maintenance loses nothing.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from tortoise.exceptions import IntegrityError

from ordergraph.db import after_commit, transaction
from ordergraph.domain.errors import BusinessError, ErrorCode
from ordergraph.domain.ids import parse_uuid
from ordergraph.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from ordergraph.outgoing_webhooks import signing
from ordergraph.outgoing_webhooks.events import (
    ALL_EVENTS,
    EVENT_TYPES,
    forget_endpoints,
    wake_sender,
)
from ordergraph.outgoing_webhooks.targets import url_problem
from ordergraph.settings import Settings

MAX_ENDPOINTS = 100


def _not_found(what: str) -> BusinessError:
    return BusinessError.of(ErrorCode.NOT_FOUND, f"No such {what}", field=("id",))


def checked_events(events: list[str]) -> list[str]:
    chosen = sorted({e.strip() for e in events})
    if not chosen:
        raise BusinessError.of(
            ErrorCode.INVALID_INPUT, "Name at least one event type, or *", field=("events",)
        )
    unknown = [e for e in chosen if e not in EVENT_TYPES and e != ALL_EVENTS]
    if unknown:
        raise BusinessError.of(
            ErrorCode.INVALID_INPUT,
            f"Unknown event types: {', '.join(unknown)[:200]} "
            f"(known: {', '.join(EVENT_TYPES)}, or * for all)",
            field=("events",),
        )
    return [ALL_EVENTS] if ALL_EVENTS in chosen else chosen


async def create_endpoint(
    url: str, events: list[str], *, actor: str, settings: Settings
) -> tuple[WebhookEndpoint, str]:
    """The new endpoint and its signing secret."""
    url = url.strip()
    problem = url_problem(url, allow_private=settings.webhook_allow_private_targets)
    if problem is not None:
        raise BusinessError.of(ErrorCode.INVALID_INPUT, problem, field=("url",))
    types = checked_events(events)
    secret = signing.new_secret()
    for _ in range(5):  # another registration may take the slot we chose; choose again
        used = set(await WebhookEndpoint.all().values_list("slot", flat=True))
        free = next((n for n in range(1, MAX_ENDPOINTS + 1) if n not in used), None)
        if free is None:
            raise BusinessError.of(
                ErrorCode.LIMIT_EXCEEDED,
                f"A shop has at most {MAX_ENDPOINTS} webhook endpoints; delete one first",
            )
        try:
            async with transaction(savepoint=True):
                endpoint = await WebhookEndpoint.create(
                    slot=free, url=url, events=types, secret=secret, created_by=actor
                )
        except IntegrityError:
            continue
        forget_endpoints()
        return endpoint, secret
    raise BusinessError.of(
        ErrorCode.LIMIT_EXCEEDED, "Too many endpoints are being registered at once; try again"
    )


async def _endpoint(endpoint_id: str) -> WebhookEndpoint:
    parsed = parse_uuid(endpoint_id)
    endpoint = await WebhookEndpoint.get_or_none(id=parsed) if parsed else None
    if endpoint is None:
        raise _not_found("webhook endpoint")
    return endpoint


async def set_endpoint_active(endpoint_id: str, active: bool) -> WebhookEndpoint:
    endpoint = await _endpoint(endpoint_id)
    async with transaction():
        await WebhookEndpoint.filter(id=endpoint.id).update(active=active)
        if active:
            after_commit(wake_sender)
    forget_endpoints()
    endpoint.active = active
    return endpoint


async def delete_endpoint(endpoint_id: str) -> WebhookEndpoint:
    """The endpoint as it was; its deliveries go with it."""
    endpoint = await _endpoint(endpoint_id)
    await WebhookEndpoint.filter(id=endpoint.id).delete()
    forget_endpoints()
    return endpoint


async def list_endpoints() -> list[WebhookEndpoint]:
    return list(await WebhookEndpoint.all().order_by("created_at", "id"))


def checked_status(status: str | None) -> DeliveryStatus | None:
    if status is None:
        return None
    try:
        return DeliveryStatus(status.strip().lower())
    except ValueError:
        raise BusinessError.of(
            ErrorCode.INVALID_INPUT,
            "status is PENDING, DELIVERED or DEAD",
            field=("status",),
        ) from None


async def list_deliveries(
    endpoint_id: str | None, status: DeliveryStatus | None, first: int
) -> list[WebhookDelivery]:
    """Newest first."""
    query = WebhookDelivery.all()
    if endpoint_id is not None:
        parsed = parse_uuid(endpoint_id)
        if parsed is None:
            return []
        query = query.filter(endpoint_id=parsed)
    if status is not None:
        query = query.filter(status=status)
    return list(await query.order_by("-id").limit(first))


async def replay_delivery(delivery_id: str, *, settings: Settings) -> WebhookDelivery:
    """Send the delivery again as a new attempt, with a new retry window, whatever its state.

    An attempt under way loses its claim: its outcome is no longer recorded, so it cannot
    overwrite the replay (the receiver may get both; deliveries are at least once anyway)."""
    parsed = int(delivery_id) if re.fullmatch(r"[0-9]{1,18}", delivery_id) else None
    delivery = await WebhookDelivery.get_or_none(id=parsed) if parsed is not None else None
    if delivery is None:
        raise _not_found("webhook delivery")
    now = datetime.now(UTC)
    values = {
        "status": DeliveryStatus.PENDING,
        "next_attempt_at": now,
        "retry_until": now + timedelta(hours=settings.webhook_retry_hours),
        "claim": None,
        "claimed_until": None,
    }
    async with transaction():
        await WebhookDelivery.filter(id=delivery.id).update(**values)
        after_commit(wake_sender)
    for name, value in values.items():
        setattr(delivery, name, value)
    return delivery
