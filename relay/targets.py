"""The SSRF guard for hook targets: only public http(s) addresses, checked twice.

A subscription's ``target_url`` comes from whoever holds a ``webhooks`` key, so
relay must not become a way to reach what only the relay host can reach: its
loopback, the private network around it, or a cloud metadata service.

- When a subscription is created, :func:`check_target` refuses a URL that is
  not http(s), or whose host is, or resolves to, an address that is not
  globally routable (loopback, private, link-local incl. 169.254.169.254,
  shared, reserved, unspecified) or is multicast. An IPv6 address that carries
  an IPv4 one (NAT64 ``64:ff9b::/96``, IPv4-compatible, IPv4-mapped, 6to4,
  Teredo) is judged by the IPv4 address too; local-use NAT64 (``64:ff9b:1::/48``)
  is refused outright. A host written as a number (``2130706433``, ``0x7f.1``,
  ``127.1``) is refused, naming the address it means.
- When a notification is sent, :func:`check_target` runs again, and
  :class:`GuardedResolver` (the resolver of the notifications' client session)
  checks what the name resolves to when connecting, so a DNS answer that changed
  in between (rebinding) still cannot reach a private address. Redirects are
  never followed (``allow_redirects=False`` in :mod:`relay.adapters.transport`).

``[hooks] allow_private_targets = true`` turns both checks off (a relay that
notifies services on its own network, and the tests).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

__all__ = [
    "GuardedResolver",
    "TargetRefused",
    "TargetUnresolved",
    "check_target",
    "embedded_ipv4",
    "refused_address",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``loop.getaddrinfo``'s shape.
Resolve = Callable[..., Awaitable[list[tuple[Any, ...]]]]


class TargetRefused(ValueError):
    """A target URL relay will not send to; the message says why, for the user."""


class TargetUnresolved(TargetRefused):
    """The target's host name did not resolve (now: DNS trouble may pass)."""


#: IPv6 ranges that carry an IPv4 address in their last 32 bits: NAT64 (RFC 6052),
#: IPv4-compatible (deprecated, RFC 4291), IPv4-mapped and SIIT IPv4-translated.
#: relay judges the IPv4 address inside, because that is where a translator sends.
_IPV4_IN_LOW_32 = tuple(
    ipaddress.IPv6Network(n) for n in ("64:ff9b::/96", "::/96", "::ffff:0:0/96", "::ffff:0:0:0/96")
)
#: Local-use NAT64 (RFC 8215): the operator's own translator; where in the address
#: the IPv4 part sits depends on a prefix length only that operator knows.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (NAT64, compatible, mapped,
    translated, 6to4, both ends of Teredo), or none."""
    if any(ip in net for net in _IPV4_IN_LOW_32):
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    return []


def refused_address(address: str | IPAddress) -> str | None:
    """What kind of address this is when it may not be a hook target ("a loopback
    address"), or None when it is public.

    An IPv6 address that embeds an IPv4 address is refused when either is.
    """
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if ip.is_unspecified:
        return "the unspecified address (it means this host)"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services live)"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _LOCAL_NAT64:
            return "a local-use NAT64 address (RFC 8215), which leads into a private network"
        for inner in embedded_ipv4(ip):
            if (why := refused_address(inner)) is not None:
                return f"an IPv6 form of {inner}, {why}"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public address"
    return None


def _url_host(url: str) -> tuple[str, int]:
    """Host and port of an http(s) URL; TargetRefused for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused(f"only http and https targets are allowed, not {parts.scheme!r}")
    if not parts.hostname:
        raise TargetRefused("the URL has no host")
    if parts.username or parts.password:
        raise TargetRefused("credentials in the URL are not allowed; put a token in the path")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _literal(host: str) -> IPAddress | None:
    """The address a host names by itself, or None for a name to resolve.

    Besides standard literals, a host that ends in a number is an IPv4 address
    to browsers and to ``inet_aton`` (``2130706433``, ``0x7f.1``, ``127.1``,
    ``0177.0.0.1``): such a host is refused, since resolvers and URL parsers
    disagree on what some of them mean.
    """
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if not _NUMBER_RE.match(parts[-1]):
        return None
    meant = _inet_aton(parts)
    if meant is None:
        raise TargetRefused(f"{host} is not a valid IPv4 address")
    if (why := refused_address(meant)) is not None:
        raise TargetRefused(f"target refused: {host} means {meant}, {why}")
    raise TargetRefused(f"{host} is an IPv4 address in a non-standard form: write it as {meant}")


#: The last label of a host that makes it an IPv4 address (WHATWG URL "ends in a number").
_NUMBER_RE = re.compile(r"^(?:[0-9]+|0[xX][0-9a-fA-F]*)$")


def _inet_aton(parts: list[str]) -> ipaddress.IPv4Address | None:
    """``inet_aton``'s reading of 1 to 4 decimal, octal (0…) or hex (0x…) numbers, or None."""
    if len(parts) > 4:
        return None
    numbers = []
    for part in parts:
        base = 16 if part[:2].lower() == "0x" else 8 if len(part) > 1 and part[0] == "0" else 10
        digits = part[2:] if base == 16 else part
        try:
            numbers.append(int(digits or "0", base))
        except ValueError:
            return None
    *high, last = numbers
    if any(n > 255 for n in high) or last >= 256 ** (4 - len(high)):
        return None
    value = last
    for i, n in enumerate(high):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


async def check_target(url: str, *, allow_private: bool, resolve: Resolve | None = None) -> None:
    """Raise :class:`TargetRefused` unless relay may send notifications to ``url``.

    A host name is resolved (with ``resolve``, the loop's getaddrinfo unless
    given), and every address it resolves to must be public.
    """
    host, port = _url_host(url)
    if allow_private:
        return
    literal = _literal(host)
    if literal is not None:
        if (why := refused_address(literal)) is not None:
            raise TargetRefused(f"target refused: {literal} is {why}")
        return
    try:
        resolve = resolve or asyncio.get_running_loop().getaddrinfo
        infos = await resolve(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetUnresolved(f"the host {host!r} does not resolve ({exc})") from None
    for *_, sockaddr in infos:
        address = str(sockaddr[0]).split("%", 1)[0]
        if (why := refused_address(address)) is not None:
            raise TargetRefused(f"target refused: {host} resolves to {address}, {why}")


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that drops every non-public address, and fails when none is left."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if refused_address(r["host"].split("%", 1)[0]) is None]
        if not allowed:
            shown = ", ".join(r["host"] for r in results) or "nothing"
            # errno + text: aiohttp shows the text in ClientConnectorError's message.
            raise OSError(errno.EACCES, f"{host} resolves to {shown}, not a public address")
        return allowed

    async def close(self) -> None:
        await self._inner.close()

    def __repr__(self) -> str:
        return f"<GuardedResolver {self._inner!r}>"
