"""The access log: one line a request, written a loop turn at a time.

Going through :mod:`logging` for every request (a record, a formatter, a
locked handler, a flush) halved the throughput of a cheap route. The lines
are formatted here in the layout of every other log line (:mod:`relay.logs`:
text, or JSON with ``request_id``, ``status`` and ``duration_ms``), gathered
while the event loop turns, and written with one ``write`` and one ``flush``
when it comes round (``call_soon``: no timer, nothing waits). The logger's
level still decides: with ``RELAY_LOG_LEVEL=WARNING`` nothing is formatted at all.

The request's id is read from the answer's ``X-Request-ID`` (every answer has
one, even one to a request that was not valid HTTP). The query string is never
logged: it may hold ``api_key=``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from relay.api.requestid import REQUEST_ID_HEADER
from relay.logs import second_text

__all__ = ["AccessLogger"]

#: Characters a write holds at most: POSIX's PIPE_BUF (4096 bytes), less room for
#: the odd non-ASCII character in a path (counted once here, up to 4 bytes written).
_PIPE_BUF = 3584


class AccessLogger(AbstractAccessLogger):
    """``2026-12-01 12:50:18,123 INFO aiohttp.access: POST /v1/leads 202 1.2ms request_id=…``,
    or that as JSON when ``log_format`` (aiohttp's ``access_log_format``) is ``"json"``."""

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._json = log_format == "json"
        self._lines: list[str] = []
        self._prefix = f" INFO {logger.name}: "

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_s: float) -> None:
        now = time.time()
        second = int(now)
        stamp = second_text(second, json=self._json)  # formatted once a second (cached)
        ms = int((now - second) * 1000)
        request_id = response.headers.get(REQUEST_ID_HEADER)
        if self._json:
            line = self._json_line(f"{stamp}.{ms:03d}Z", request, response, time_s, request_id)
        else:
            line = (
                f"{stamp},{ms:03d}{self._prefix}{request.method} {request.path} "
                f"{response.status} {time_s * 1000:.1f}ms"
                + (f" request_id={request_id}\n" if request_id else "\n")
            )
        self._lines.append(line)
        if len(self._lines) == 1:
            try:
                asyncio.get_running_loop().call_soon(self._flush)
            except RuntimeError:  # no loop (never in aiohttp): write at once
                self._flush()

    def _json_line(
        self,
        ts: str,
        request: web.BaseRequest,
        response: web.StreamResponse,
        time_s: float,
        request_id: str | None,
    ) -> str:
        """What relay.logs.JsonFormatter writes for this line, with its fields."""
        duration_ms = round(time_s * 1000, 1)
        data: dict[str, str | int | float] = {
            "ts": ts,
            "level": "INFO",
            "logger": self.logger.name,
            "msg": f"{request.method} {request.path} {response.status} {duration_ms:.1f}ms",
        }
        if request_id is not None:
            data["request_id"] = request_id
        data |= {
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "duration_ms": duration_ms,
        }
        return orjson.dumps(data).decode() + "\n"

    def _flush(self) -> None:
        lines, self._lines = self._lines, []
        # Writes of at most PIPE_BUF bytes, whole lines only: `serve --workers N`
        # shares one stderr, and a pipe keeps only such writes from interleaving.
        chunks, chunk = [], ""
        for line in lines:
            if chunk and len(chunk) + len(line) > _PIPE_BUF:
                chunks.append(chunk)
                chunk = ""
            chunk += line
        chunks.append(chunk)
        try:
            for text in chunks:
                sys.stderr.write(text)
                sys.stderr.flush()
        except (OSError, ValueError):  # a closed or full stderr must not fail requests
            pass

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
