"""The API's HTTP server: its sockets, bound before anything else starts, and
aiohttp's protocol with the HTTP parser's rejections answered as problem JSON.

aiohttp answers a request its parser rejects (a NUL in a header, a header line
over 8 KiB, two Content-Length headers, Content-Length with Transfer-Encoding,
a raw non-ASCII character in the query, a TLS hello on this plain-HTTP port) in
``RequestHandler.handle_error``, with a ``text/plain`` 400 and a log record
carrying a traceback (ERROR; DEBUG for a TLS hello), before any middleware
runs; it has no public hook for that answer. :class:`_Protocol` overrides
``handle_error`` for client errors only (server errors stay aiohttp's) and
:class:`_Runner` makes aiohttp's server build that protocol.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, InvalidURLError
from aiohttp.web_protocol import RequestHandler

from relay import metrics
from relay.api.accesslog import AccessLogger
from relay.api.problems import parser_reason, problem
from relay.api.requestid import REQUEST_ID_HEADER, request_id_for
from relay.errors import CannotListen, FieldError

__all__ = ["KEEPALIVE_S", "listen", "running"]

log = logging.getLogger("relay.api")

#: Seconds an idle keep-alive connection stays open (what ``web.run_app`` sets). The
#: same timer closes a connection whose request headers are still incomplete then,
#: which bounds a client that sends its headers a byte at a time.
KEEPALIVE_S = 75.0
#: Connections the kernel queues while every process is busy (aiohttp's default).
_BACKLOG = 128
#: ``b'Name:`` at the start of the excerpt aiohttp's parser errors quote: the header at fault.
_HEADER_NAME = re.compile(r"\s*b'([!#$%&'*+.^_`|~0-9A-Za-z-]+):")


def listen(host: str, port: int, *, count: int = 1) -> list[list[socket.socket]]:
    """``count`` sets of listening sockets on every address of ``host``, one set per
    API process; with ``count > 1`` they share the port with ``SO_REUSEPORT``.

    Raises :class:`CannotListen` when the port is taken (by anyone, another relay
    with ``SO_REUSEPORT`` too) or cannot be bound, before anything has started.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CannotListen(f"cannot listen on {host}: {exc.strerror}") from None
    addresses = list(dict.fromkeys((family, addr) for family, _, _, _, addr in infos))
    if count > 1:
        # A plain bind fails on a port that SO_REUSEPORT sockets of another process hold;
        # the sockets below, with SO_REUSEPORT, would silently share it.
        for family, addr in addresses:
            _bind(family, addr, host, port, reuse_port=False, backlog=None).close()
    sets: list[list[socket.socket]] = []
    try:
        for _ in range(count):
            sets.append([])
            for family, addr in addresses:
                sets[-1].append(_bind(family, addr, host, port, reuse_port=count > 1))
    except BaseException:
        for sock in (s for group in sets for s in group):
            sock.close()
        raise
    return sets


def _bind(
    family: int,
    addr: tuple[Any, ...],
    host: str,
    port: int,
    *,
    reuse_port: bool,
    backlog: int | None = _BACKLOG,
) -> socket.socket:
    """A socket bound to ``addr`` and, unless ``backlog`` is None, listening."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Binds over connections of an earlier run still in TIME_WAIT, never over a listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        if backlog is not None:
            sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise CannotListen(_why(exc, host, port)) from None
    return sock


def _why(exc: OSError, host: str, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use"
    if exc.errno == errno.EACCES:
        return f"no permission to listen on port {port} on {host} (below 1024 needs privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: not an address of this machine"
    return f"cannot listen on port {port} on {host}: {exc.strerror}"


@contextlib.asynccontextmanager
async def running(
    app: web.Application,
    sockets: Sequence[socket.socket],
    *,
    keepalive_s: float = KEEPALIVE_S,
    log_format: str = "text",
) -> AsyncIterator[web.AppRunner]:
    """``app`` started (its startup and cleanup contexts run) and served on ``sockets``,
    which are closed on the way out; its access log in ``log_format`` (text or json)."""
    runner = _Runner(
        app,
        access_log_class=AccessLogger,
        access_log_format=log_format,  # what our AccessLogger is given
        keepalive_timeout=keepalive_s,
    )
    try:
        await runner.setup()  # inside: what a failing start-up had opened is closed again
        for sock in sockets:
            await web.SockSite(runner, sock, backlog=_BACKLOG).start()
        yield runner
    finally:
        await runner.cleanup()
        for sock in sockets:
            sock.close()  # the server closed those it served; these are the ones it never got


class _Protocol(RequestHandler):
    """aiohttp's HTTP/1.1 protocol, with malformed requests answered as problem JSON."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A 4xx from the parser: one WARNING line without traceback, and a problem."""
        if status >= 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        metrics.http_request(None, request.method, status)
        reason, loc, hint = _explain(exc, message)
        # Its own id when the parser got as far as that header, else a new one.
        request_id = request_id_for(request.headers.get(REQUEST_ID_HEADER))
        log.warning(
            "%d malformed request from %s: %s (%s)",
            status,
            request.remote,
            reason,
            ".".join(map(str, loc)),
            extra={"request_id": request_id},
        )
        errors: list[FieldError] = [{"loc": loc, "msg": reason}]
        detail = f"the request is not valid HTTP/1.1: {reason}{hint}"
        response = problem(
            status,
            "Bad request",
            detail,
            slug="bad-request",
            errors=errors,
            headers={REQUEST_ID_HEADER: request_id},
        )
        response.force_close()
        return response


def _explain(exc: BaseException | None, message: str | None) -> tuple[str, list[str | int], str]:
    """What the parser rejected, where, and a hint: never the request's bytes, which
    aiohttp quotes after the first line (they may hold a key)."""
    text = message or (exc.message if isinstance(exc, HttpProcessingError) else "") or ""
    reason = parser_reason(text)
    excerpt = text.partition("\n")[2]
    if isinstance(exc, BadHttpMethod):
        return reason, ["method"], "; relay serves plain http:// on this port, not https://"
    if isinstance(exc, InvalidURLError):
        part = "query" if "query" in reason else "path"
        return reason, [part], "; percent-encode characters outside printable ASCII"
    if named := _HEADER_NAME.match(excerpt.strip("\n")):
        return reason, ["header", named[1]], ""
    return reason, ["request"], ""


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    __slots__ = ()

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp built the server as it always does; only the protocol it makes changes.
        server.__class__ = _Server
        return server
