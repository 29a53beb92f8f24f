"""Bearer tokens and the users they name.

A token is an HS256 JWT with `sub`, `email`, optional `roles` and `exp`. Only HS256 is
accepted, so a token that names another algorithm (`none` included) is refused before its
signature is even considered. A guest's token is one like the others, with `sub` =
`guest:<uuid>` and `roles` = `["guest"]`.

An order's access token (`Order.accessToken`, the `?access=` of mail links) is a JWT signed
with the same key but of another kind: `sub` = `order:<id>`, `typ` = `order-access` and
`aud` = `ordergraph:order-access`. A bearer token is decoded without an audience, and PyJWT
refuses any token that carries one, so an access token can never pass for a bearer token; an
access token is decoded with its audience, so a bearer token can never pass for one. It expires
`ORDER_ACCESS_DAYS` (90) days after it is issued: long enough for the withdrawal period after
delivery, short enough that an old mail stops opening the order; each read by the order's owner
issues a fresh one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

import jwt

from ordergraph.db import get_connection
from ordergraph.db.sql import select
from ordergraph.models import User

ALGORITHM = "HS256"
STAFF_ROLE = "staff"
GUEST_ROLE = "guest"
GUEST_PREFIX = "guest:"
ORDER_ACCESS_AUDIENCE = "ordergraph:order-access"
ORDER_ACCESS_TYPE = "order-access"
ORDER_ACCESS_DAYS = 90


class AuthError(Exception):
    """The token is missing, malformed, expired or not ours."""


@dataclass(frozen=True)
class Identity:
    user_id: str
    email: str
    is_staff: bool


class Credentials(NamedTuple):
    """A verified token: who it names, and when (a Unix time, the `exp` claim) it stops being
    valid. A connection that outlives its token must end then (see web/token_expiry.py)."""

    identity: Identity
    expires_at: float


def issue_token(
    secret: str,
    user_id: str,
    email: str,
    *,
    staff: bool = False,
    guest: bool = False,
    ttl_seconds: int = 3600,
) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": user_id,
        "email": email,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    roles = [role for role, held in ((STAFF_ROLE, staff), (GUEST_ROLE, guest)) if held]
    if roles:
        claims["roles"] = roles
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def issue_order_token(secret: str, order_id: str, *, now: float | None = None) -> str:
    """The token that opens one order (and nothing else) to whoever holds it."""
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": f"order:{order_id}",
        "aud": ORDER_ACCESS_AUDIENCE,
        "typ": ORDER_ACCESS_TYPE,
        "iat": issued,
        "exp": issued + ORDER_ACCESS_DAYS * 86400,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def order_id_from_access_token(secret: str, token: str) -> str | None:
    """The order an access token opens; None for anything that is not a valid one of ours."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=ORDER_ACCESS_AUDIENCE,
            options={"require": ["sub", "exp", "aud"]},
        )
    except jwt.PyJWTError:
        return None
    sub = claims.get("sub")
    if claims.get("typ") != ORDER_ACCESS_TYPE or not isinstance(sub, str):
        return None
    kind, _, order_id = sub.partition(":")
    return order_id if kind == "order" and order_id else None


def _verify(secret: str, token: str) -> tuple[Identity, float]:
    """The token's identity and expiry, if it is ours, unexpired and names a user."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]}
        )
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid token: {exc}") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 255:
        raise AuthError("invalid token: sub must be a non-empty string")
    if "typ" in claims or sub.startswith("order:"):
        raise AuthError("invalid token: not a bearer token")
    email = claims.get("email")
    roles = claims.get("roles") or []
    identity = Identity(
        user_id=sub,
        email=email if isinstance(email, str) else "",
        is_staff=isinstance(roles, list) and STAFF_ROLE in roles,
    )
    return identity, float(claims["exp"])


def decode_token(secret: str, token: str) -> Identity:
    return _verify(secret, token)[0]


# Tokens this process has verified, until they expire: a shopper's browser sends the same token
# with every request, and checking its signature again each time is most of a small request's
# authentication cost.
_verified: dict[tuple[str, str], Credentials] = {}
_VERIFIED_LIMIT = 10_000


def identity_from_header(secret: str, header: str | None) -> Identity:
    return credentials_from_header(secret, header).identity


def credentials_from_header(secret: str, header: str | None) -> Credentials:
    if not header:
        raise AuthError("no bearer token")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("the Authorization header must be 'Bearer <token>'")
    known = _verified.get((secret, token))
    if known is not None and known.expires_at > time.time():
        return known
    credentials = Credentials(*_verify(secret, token))
    if len(_verified) >= _VERIFIED_LIMIT:
        _verified.clear()
    _verified[(secret, token)] = credentials
    return credentials


# Users this process has already written as the token describes them, so that a request
# costs no write once its user is known.
_known_users: dict[str, tuple[str, bool]] = {}
_KNOWN_USERS_LIMIT = 100_000


async def ensure_user(identity: Identity) -> None:
    """Create the user on first sight of a valid token and keep email and staff flag current."""
    state = (identity.email, identity.is_staff)
    if _known_users.get(identity.user_id) == state:
        return
    # Fixed SQL for the common case, a user known to the database but not yet to this process:
    # the ORM's query building cost more than the round trip.
    known = await select(get_connection(), User, "id = ?", identity.user_id)
    if known:
        user, created = known[0], False
    else:
        user, created = await User.get_or_create(
            id=identity.user_id, defaults={"email": identity.email, "is_staff": identity.is_staff}
        )
    if not created and (user.email, user.is_staff) != state:
        user.email, user.is_staff = state
        await user.save(update_fields=["email", "is_staff"])
    if len(_known_users) >= _KNOWN_USERS_LIMIT:
        _known_users.clear()
    _known_users[identity.user_id] = state


def forget_known_users() -> None:
    """For tests that empty the database under a running process."""
    _known_users.clear()
