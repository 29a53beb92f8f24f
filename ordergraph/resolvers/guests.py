"""`startGuestSession`: a bearer token for a shopper without an account."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ordergraph.auth import issue_token
from ordergraph.domain import guests
from ordergraph.resolvers.base import payload
from ordergraph.resolvers.context import Info
from ordergraph.resolvers.types import GuestSessionPayload
from ordergraph.web.client_address import client_address


async def start_guest_session(info: Info, email: str | None = None) -> GuestSessionPayload:
    settings = info.context.settings
    address = client_address(info.context.request, settings.trusted_proxies)

    async def run() -> GuestSessionPayload:
        guest = await guests.start_guest_session(address, email, settings)
        ttl = settings.guest_session_hours * 3600
        token = issue_token(
            settings.jwt_secret, guest.user_id, guest.email, guest=True, ttl_seconds=ttl
        )
        expires_at = datetime.now(UTC) + timedelta(seconds=ttl)
        return GuestSessionPayload(token=token, expires_at=expires_at.replace(microsecond=0))

    return await payload(GuestSessionPayload, run())
