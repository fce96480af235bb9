"""The one place where errors become HTTP answers: RFC 9457 problem JSON.

A Redis that cannot serve a request now reaches here as ``StoreUnavailable``
(the Redis client raises it for a refused write such as OOM or READONLY, a
dropped or refused connection, a timeout: relay.connect) and answers 503 with
``Retry-After``, so no route can turn a Redis outage into a 500 (so does a
write too few replicas confirmed: NotReplicated, relay.replicas). Any other
Redis error (WRONGTYPE, a script's error) is a bug: a 500, with its traceback
in the log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from relay.api.state import SETTINGS
from relay.errors import (
    FieldError,
    MalformedBody,
    NotReplicated,
    RequestError,
    StoreUnavailable,
)

__all__ = ["error_middleware", "json_response", "parser_reason", "problem"]

log = logging.getLogger("relay.api")

PROBLEM_TYPE = "application/problem+json"
#: Seconds a client should wait before retrying after a 503.
RETRY_AFTER_UNAVAILABLE_S = 5

#: The head of ``str()`` of aiohttp's HTTP errors.
_STATUS_HEAD = re.compile(r"\d{3}, message:")

_HTTP_SLUGS = {
    400: ("bad-request", "Bad request"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("body-too-large", "Body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
}


def json_response(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON answer serialized with orjson."""
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    slug: str,
    errors: list[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """An ``application/problem+json`` answer."""
    body: dict[str, Any] = {
        "type": f"/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        "errors": errors or [],
        **extra,
    }
    return web.Response(
        body=orjson.dumps(body), status=status, content_type=PROBLEM_TYPE, headers=headers
    )


def parser_reason(message: str) -> str:
    """What aiohttp's HTTP parser rejected, without the request's bytes that it quotes
    after the reason (``b'Authorization: Bearer rly_…'``: they may hold a key)."""
    lines = [x.strip() for x in message.splitlines() if x.strip()]
    lines = [x for x in lines if not _STATUS_HEAD.fullmatch(x)]
    first = lines[0] if lines else ""
    return first.split(": b'", 1)[0].rstrip(":. ") or "malformed request"


def from_request_error(exc: RequestError) -> web.Response:
    headers = dict(exc.headers)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="relay"'
    return problem(
        exc.status, exc.title, exc.detail, slug=exc.slug, errors=exc.errors, headers=headers
    )


def _from_http(exc: web.HTTPException, request: web.Request) -> web.Response:
    slug, title = _HTTP_SLUGS.get(exc.status, ("http-error", exc.reason))
    if exc.status == 413:
        limit = request.app[SETTINGS].max_body_bytes
        detail = f"the body is larger than the limit of {limit} bytes"
        errors: list[FieldError] = [{"loc": ["body"], "msg": detail}]
    elif exc.status == 404:
        detail = f"no route {request.method} {request.path}; see /openapi.json"
        errors = []
    elif exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        detail = f"{request.method} is not allowed on {request.path} (allowed: {allowed})"
        errors = []
    else:
        detail = exc.text or exc.reason
        errors = []
    kept = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
    return problem(exc.status, title, detail, slug=slug, errors=errors, headers=kept)


def _unavailable(exc: StoreUnavailable, request: web.Request) -> web.Response:
    """503: Redis cannot take or give data now; one log line, no traceback (not a bug)."""
    what = type(exc.__cause__ or exc).__name__  # redis-py's: ConnectionError, OutOfMemoryError
    log.warning("503 %s %s: %s: %s", request.method, request.path, what, exc)
    if isinstance(exc, NotReplicated):
        detail = (
            f"{exc} (RELAY_REDIS_MIN_REPLICAS): nothing is reported as queued or changed, "
            "though the write is on the Redis master and may last (an event may still be "
            "delivered); retry later, events with the same Idempotency-Key, which never "
            "queues them twice"
        )
    elif request.method in ("GET", "HEAD"):
        detail = "relay cannot read its data right now (Redis is unavailable); retry later"
    else:
        detail = (
            "relay cannot store data right now (Redis is unavailable); nothing was queued "
            "or changed, retry later"
        )
    return problem(
        503,
        "Service unavailable",
        detail,
        slug="unavailable",
        headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)},
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn every error into problem JSON; log what the client cannot fix."""
    try:
        response: web.StreamResponse = await handler(request)
    except RequestError as exc:
        return from_request_error(exc)
    except StoreUnavailable as exc:
        return _unavailable(exc, request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http(exc, request)
    except ConnectionResetError:  # the client hung up before its body was all there
        # (Redis's sockets are not it: the Redis client raises StoreUnavailable.)
        log.info("%s %s: the client hung up mid-body", request.method, request.path)
        return problem(400, "Bad request", "the connection was lost", slug="bad-request")
    except web.RequestPayloadError as exc:  # aiohttp could not decode the body (a bad gzip)
        reason = parser_reason(str(exc))
        log.warning(
            "400 %s %s: the body cannot be decoded: %s", request.method, request.path, reason
        )
        return from_request_error(
            MalformedBody(
                f"the body cannot be decoded: {reason}", errors=[{"loc": ["body"], "msg": reason}]
            )
        )
    except Exception:
        log.exception("500 %s %s", request.method, request.path)
        return problem(
            500, "Internal error", "relay failed to handle this request", slug="internal-error"
        )
    return response
