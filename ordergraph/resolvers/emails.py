"""Staff looking after mail that could not be delivered."""

from __future__ import annotations

import re

import strawberry

from ordergraph.domain.errors import ErrorCode
from ordergraph.mail import outbox
from ordergraph.resolvers.base import (
    forbidden,
    page_size,
    require_staff,
    require_user,
)
from ordergraph.resolvers.common_types import UserError
from ordergraph.resolvers.context import Info
from ordergraph.resolvers.staff_types import (
    EmailPayload,
    RetryDeadEmailsPayload,
    UndeliveredEmail,
)


async def undelivered_emails(info: Info, first: int | None = 20) -> list[UndeliveredEmail]:
    await require_staff(info)
    rows = await outbox.undelivered(page_size(first, 20))
    return [UndeliveredEmail.from_model(row) for row in rows]


async def retry_email(info: Info, id: strawberry.ID) -> EmailPayload:
    identity = await require_user(info)
    if not identity.is_staff:
        return EmailPayload(user_errors=forbidden())
    row = await outbox.retry_dead(int(id)) if re.fullmatch(r"[0-9]{1,9}", str(id)) else None
    if row is None:
        return EmailPayload(
            user_errors=[
                UserError(
                    code=ErrorCode.NOT_FOUND, message="No dead mail with that id", field=["id"]
                )
            ]
        )
    return EmailPayload(email=UndeliveredEmail.from_model(row))


async def retry_dead_emails(info: Info) -> RetryDeadEmailsPayload:
    identity = await require_user(info)
    if not identity.is_staff:
        return RetryDeadEmailsPayload(user_errors=forbidden())
    return RetryDeadEmailsPayload(retried=await outbox.retry_all_dead())
