"""The address a request comes from, for limits per client (guest sessions).

The direct peer is the ASGI `client`. When it is one of `TRUSTED_PROXIES` (addresses or CIDR
networks, empty by default), the client is the right-most address of `X-Forwarded-For` that is
not itself a trusted proxy: every proxy appends the peer it saw, so entries to the left of the
last untrusted one are whatever the client chose to send, and are never believed.

uvicorn's own `proxy_headers` runs first, with the addresses `ordergraph serve` passes it as
`forwarded_allow_ips`: `TRUSTED_PROXIES` when set, else uvicorn's default (`FORWARDED_ALLOW_IPS`,
or 127.0.0.1: a proxy on the same machine). It rewrites the ASGI client by the same right-most
untrusted rule, so when it has done so the client seen here is already untrusted and is taken
as it is: the two steps agree, and this one also serves ASGI servers that do not rewrite.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from starlette.requests import HTTPConnection

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
UNKNOWN = "unknown"


@lru_cache(maxsize=16)
def _networks(trusted: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in trusted)


def _is_trusted(address: str, networks: Iterable[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def resolve(peer: str | None, forwarded_for: str | None, trusted: tuple[str, ...]) -> str:
    """The client's address, given the direct peer, its X-Forwarded-For and the trusted proxies."""
    if not peer:
        return UNKNOWN
    networks = _networks(trusted)
    if not networks or not _is_trusted(peer, networks):
        return peer[:64]
    hops = [hop.strip() for hop in (forwarded_for or "").split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, networks):
            return hop[:64]
    # Every hop is a trusted proxy (or there is none): the left-most one is the client.
    return (hops[0] if hops else peer)[:64]


def client_address(connection: HTTPConnection, trusted: tuple[str, ...]) -> str:
    client = connection.client
    return resolve(
        client.host if client else None, connection.headers.get("x-forwarded-for"), trusted
    )
