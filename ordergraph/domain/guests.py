"""Guest shoppers: who may get a guest identity, and how many per client address.

The limit is a database fact, not a process's count: each new guest session is a
`guest_sessions` row, and the row is written and the address's rows of the last hour counted in
one transaction that is serialised per address, so that concurrent requests (in this process or
in others) can never together pass the limit:

- on PostgreSQL the transaction first takes the advisory lock
  `pg_advisory_xact_lock(ADVISORY_LOCK_SPACE, hashtext(address))`: a second request from the
  same address waits there until the first commits or rolls back, and then
  counts the first one's row (READ COMMITTED reads what committed before each statement);
- on SQLite the INSERT comes first and takes the database's one write lock, which holds until the
  transaction ends (across processes too), so the count that follows sees every earlier session.

The row is inserted and then counted: over the limit, the transaction rolls back and the row
goes with it, so refused attempts do not count (a client that keeps trying is not locked out for
ever; it is told to wait).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ordergraph.db import is_postgres, transaction
from ordergraph.db.sql import fetch
from ordergraph.domain.errors import BusinessError, ErrorCode
from ordergraph.models import GuestSession
from ordergraph.settings import Settings

# Something@something.tld, no spaces; the mail server has the last word.
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
MAX_EMAIL = 320
# The first key of the two-key advisory lock: guest sessions' own space of locks.
ADVISORY_LOCK_SPACE = 0x47554553


@dataclass(frozen=True)
class Guest:
    user_id: str
    email: str


def check_email(email: str | None) -> str:
    """The email, trimmed, or "" when none is given; a malformed one is refused."""
    value = (email or "").strip()
    if value and (len(value) > MAX_EMAIL or not _EMAIL.match(value)):
        raise BusinessError.of(
            ErrorCode.INVALID_INPUT, "email is not a valid email address", field=("email",)
        )
    return value


async def start_guest_session(address: str, email: str | None, settings: Settings) -> Guest:
    """A new guest identity for a client at `address`, within the per-address hourly limit."""
    if not settings.guest_checkout:
        raise BusinessError.of(
            ErrorCode.FORBIDDEN, "Guest checkout is turned off in this shop; sign in to order"
        )
    guest = Guest(user_id=f"guest:{uuid.uuid4()}", email=check_email(email))
    limit = settings.guest_sessions_per_hour
    async with transaction() as connection:
        if is_postgres(connection):
            await fetch(
                connection,
                "SELECT pg_advisory_xact_lock(?, hashtext(?))",
                ADVISORY_LOCK_SPACE,
                address,
            )
        await GuestSession.create(
            client_address=address, user_id=guest.user_id, email=guest.email, using_db=connection
        )
        if limit > 0:
            since = datetime.now(UTC) - timedelta(hours=1)
            count = (
                await GuestSession.filter(client_address=address, created_at__gte=since)
                .using_db(connection)
                .count()
            )
            if count > limit:
                raise BusinessError.of(
                    ErrorCode.RATE_LIMITED,
                    f"At most {limit} guest sessions an hour from one address; try again later",
                )
    return guest
