"""Authentication: find the request's key, check it is live, check the route's scope.

A key is read from ``Authorization: Bearer``, then ``X-API-Key``, then the
``api_key`` query parameter (for tools that cannot set headers). The key
itself never appears in an answer or a log line; its 12-character prefix may.
"""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from relay.api.routing import ANY_KEY, routes
from relay.api.state import API_KEY, KEYS, LIMITER
from relay.apikeys import KeyRecord
from relay.errors import Forbidden, RateLimited, Unauthorized
from relay.keystore import KeyStore
from relay.settings import parse_rate_limit

__all__ = ["auth_middleware", "authenticate", "check_live", "live_key", "presented_key"]

_HOW = "send it as Authorization: Bearer <key>, X-API-Key: <key>, or ?api_key=<key>"


def presented_key(request: web.Request) -> str | None:
    """The key the client sent, wherever it put it, or None."""
    auth = request.headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized(f"the Authorization header must be 'Bearer <key>'; {_HOW}")
        return value.strip()
    return request.headers.get("X-API-Key") or request.query.get("api_key") or None


async def authenticate(request: web.Request, scope: str) -> KeyRecord:
    """The live key of this request, holding ``scope``; 401 or 403 otherwise."""
    presented = presented_key(request)
    if presented is None:
        raise Unauthorized(f"no API key; {_HOW}")
    record = await live_key(request.app[KEYS], presented)
    if scope != ANY_KEY and scope not in record.scopes:
        raise Forbidden(
            f"API key {record.prefix}… lacks the scope {scope!r} "
            f"(it has: {', '.join(record.scopes)})"
        )
    return record


async def live_key(keys: KeyStore, presented: str) -> KeyRecord:
    """The record of a key that exists and is neither revoked nor expired; 401 otherwise.
    (The API's check, and the console's at sign-in.)"""
    record = await keys.lookup(presented)
    if record is None:
        raise Unauthorized("unknown API key (check that it was copied whole)")
    check_live(record)
    return record


def check_live(record: KeyRecord) -> None:
    """401 for a revoked or expired key (the console re-checks its session's key so)."""
    state = record.state(now=datetime.now(UTC))
    if state == "revoked":
        raise Unauthorized(f"API key {record.prefix}… was revoked at {record.revoked_at}")
    if state == "expired":
        raise Unauthorized(f"API key {record.prefix}… expired at {record.expires_at}")


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Authenticate requests to routes that declare a scope."""
    resource = request.match_info.route.resource
    spec = routes.find(request.method, resource.canonical) if resource is not None else None
    if spec is None or spec.scope is None:
        response: web.StreamResponse = await handler(request)
        return response
    record = await authenticate(request, spec.scope)
    if record.signing_secret is not None:
        await _check_signature(request, record.signing_secret)
    request[API_KEY] = record
    headers = await _spend(request, record) if record.rate_limit is not None else {}
    response = await handler(request)
    response.headers.update(headers)
    return response


async def _check_signature(request: web.Request, secret: str) -> None:
    """Standard Webhooks: webhook-id, webhook-timestamp (within 5 min), webhook-signature
    over the exact raw body. A replayed webhook-id is caught by idempotency, not here."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    missing = [
        h for h in ("webhook-id", "webhook-timestamp", "webhook-signature") if h not in headers
    ]
    if missing:
        raise Unauthorized(
            f"this key signs its requests: missing {', '.join(missing)} "
            "(Standard Webhooks headers over the raw body)"
        )
    try:
        Webhook(secret).verify(await request.read(), headers)
    except WebhookVerificationError as exc:
        raise Unauthorized(f"bad request signature: {exc}") from None


#: A key's limit text parsed once, not on every request.
_parse_limit = functools.lru_cache(maxsize=1024)(parse_rate_limit)


async def _spend(request: web.Request, record: KeyRecord) -> dict[str, str]:
    """Count this request against the key's own limit, shared by every API process.

    Returns the ``RateLimit-*`` headers for the answer; raises 429 when spent.
    """
    limit = _parse_limit(record.rate_limit or "")
    wait_s, remaining = await request.app[LIMITER].admit(f"key:{record.id}", limit)
    headers = {
        "RateLimit-Limit": str(limit.count),
        "RateLimit-Remaining": str(remaining),
        "RateLimit-Reset": str(math.ceil(wait_s or limit.period_s)),
    }
    if wait_s > 0:
        headers["Retry-After"] = str(math.ceil(wait_s))
        raise RateLimited(
            f"API key {record.prefix}… allows {limit}; retry in {math.ceil(wait_s)} s",
            headers=headers,
        )
    return headers
