"""The SSRF guard for hook targets: only public http(s) addresses, checked twice.

A subscription's ``target_url`` comes from whoever holds a ``webhooks`` key, so
relay must not become a way to reach what only the relay host can reach: its
loopback, the private network around it, or a cloud metadata service.

- When a subscription is created, :func:`check_target` refuses a URL that is
  not http(s), or whose host is, or resolves to, an address that is not
  globally routable (loopback, private, link-local incl. 169.254.169.254,
  shared, reserved, unspecified) or is multicast.
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
    "refused_address",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``loop.getaddrinfo``'s shape.
Resolve = Callable[..., Awaitable[list[tuple[Any, ...]]]]


class TargetRefused(ValueError):
    """A target URL relay will not send to; the message says why, for the user."""


class TargetUnresolved(TargetRefused):
    """The target's host name did not resolve (now: DNS trouble may pass)."""


def refused_address(address: str | IPAddress) -> str | None:
    """What kind of address this is when it may not be a hook target ("a loopback
    address"), or None when it is public."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            return refused_address(embedded)
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services live)"
    if ip.is_multicast:
        return "a multicast address"
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
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


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
