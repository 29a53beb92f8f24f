"""Where a webhook may be sent.

A URL is checked when it is registered (https, no credentials, no private address written
out), and its host's addresses are checked again at every connection: a name that resolved to
a public address at registration may resolve to a loopback, private or link-local one (a
cloud's metadata service) later. The connection goes to the address that was checked, so a
second, different answer of the resolver cannot slip in between. Loopback and private
targets are allowed only with WEBHOOK_ALLOW_PRIVATE_TARGETS=true (tests, local setups).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048

# host, port -> the addresses to connect to. Tests pass their own, so that no name is ever
# looked up in the machine's DNS.
Resolver = Callable[[str, int], Awaitable[list[str]]]


class TargetRefused(Exception):
    """A webhook target this service will not call."""


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(value.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def address_problem(value: str, *, allow_private: bool) -> str | None:
    """Why the service will not connect to this address, or None."""
    address = _address(value)
    if address is None:
        return f"{value!r} is not an IP address"
    if address.is_unspecified or address.is_multicast:
        return f"{address} is not a host"
    if not allow_private and not address.is_global:
        return f"{address} is a loopback, private or link-local address"
    return None


def url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why `url` cannot be registered as an endpoint, or None."""
    if len(url) > MAX_URL_LENGTH:
        return f"The URL is longer than {MAX_URL_LENGTH} characters"
    if not url.isascii() or not url.isprintable() or " " in url:
        return "The URL must be ASCII without spaces or control characters (percent-encode them)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"The URL is not valid: {exc}"
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        return "The URL must start with https://"
    if not parts.hostname:
        return "The URL has no host"
    if parts.username is not None or parts.password is not None:
        return "The URL must not hold credentials; the signature authenticates each delivery"
    if parts.fragment:
        return "The URL must not have a fragment"
    if port == 0:
        return "The URL's port is not valid"
    if _address(parts.hostname) is not None:
        return address_problem(parts.hostname, allow_private=allow_private)
    host = parts.hostname.rstrip(".").lower()
    if not allow_private and (host == "localhost" or host.endswith(".localhost")):
        return "The URL's host is this machine"
    return None


async def checked_addresses(
    resolver: Resolver, host: str, port: int, *, allow_private: bool
) -> list[str]:
    """The addresses to connect to for `host`: every one it resolves to must pass
    `address_problem`, or none is used (a name may mix a public address with a private one)."""
    literal = _address(host)
    addresses = [str(literal)] if literal is not None else await resolver(host, port)
    if not addresses:
        raise TargetRefused(f"{host} has no address")
    for address in addresses:
        problem = address_problem(address, allow_private=allow_private)
        if problem is not None:
            raise TargetRefused(f"{host} resolves to {address}: {problem}")
    return addresses
