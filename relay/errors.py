"""Every error relay raises on purpose, in one tree.

::

    RelayError
    ├── ConfigError              relay.toml or the environment is wrong (names the file and key)
    ├── StoreUnavailable         Redis cannot take or give data right now (API: 503; the
    │                            worker waits and retries). redis-py's errors become it in
    │                            one place, the Redis client of relay.connect
    │   └── NotReplicated        Redis took the write but fewer than RELAY_REDIS_MIN_REPLICAS
    │                            replicas confirmed it in time (API: 503 all the same)
    ├── EmbeddedRedisError       the embedded redis-server would not start
    ├── CannotListen             `relay serve` cannot bind its port (in use, no permission)
    ├── NoAnswer                 an upstream gave no answer (timeout, connection error);
    │                            the message is scrubbed of secrets
    └── RequestError             a client's request is wrong; carries an HTTP status
        ├── MalformedBody        400: not JSON / not a form that parses
        ├── BodyTimeout          408: the body did not arrive within RELAY_BODY_TIMEOUT_S
        ├── BodyTooLarge         413: over the body limit or the batch limit
        ├── UnsupportedMediaType 415
        ├── ValidationFailed     422: a valid document that fails validation
        ├── Unauthorized         401: missing, unknown, expired or revoked key
        ├── Forbidden            403: key lacks the scope or may not use a destination
        ├── Conflict             409: the same Idempotency-Key is still being handled
        ├── RateLimited          429: the key's own rate limit is spent
        └── NotFound             404

Only ``relay.api.problems`` turns these into HTTP answers and only the CLI
turns them into exit statuses; everything else raises them. ``NoAnswer`` never
leaves the adapters: ``relay.adapters.transport.send`` makes it a ``retry``
attempt, and Convertr's form-fields read a ``ConfigError``.
"""

from __future__ import annotations

from typing import TypedDict

__all__ = [
    "BodyTimeout",
    "BodyTooLarge",
    "CannotListen",
    "ConfigError",
    "Conflict",
    "EmbeddedRedisError",
    "FieldError",
    "Forbidden",
    "MalformedBody",
    "NoAnswer",
    "NotFound",
    "NotReplicated",
    "RateLimited",
    "RelayError",
    "RequestError",
    "StoreUnavailable",
    "Unauthorized",
    "UnsupportedMediaType",
    "ValidationFailed",
]

Loc = list[str | int]


class FieldError(TypedDict):
    """One problem with one place of a request: ``{"loc": ["body", "email"], "msg": "..."}``."""

    loc: Loc
    msg: str


class RelayError(Exception):
    """Base of every error relay raises on purpose."""


class ConfigError(RelayError):
    """The configuration cannot be used; the message names the file and the key."""


class StoreUnavailable(RelayError):
    """Redis did not answer or refused the write; nothing was stored.

    Raised by the Redis client from redis-py's error (the ``__cause__``:
    ConnectionError, OutOfMemoryError, ...), with its text."""


class NotReplicated(StoreUnavailable):
    """The master took the write, but fewer replicas than asked confirmed it in time.

    Unlike its parent, something *was* written: it may survive (and be delivered)
    or be lost with the master in a failover. The API answers 503 all the same and
    reports nothing as queued; an Idempotency-Key keeps its record, so a retry gets
    the first answer once replicas confirm it, never a second event
    (:mod:`relay.api.idempotency`)."""


class EmbeddedRedisError(RelayError):
    """The embedded redis-server could not be started or reached."""


class CannotListen(RelayError):
    """The API's address cannot be bound; the message names the port and the host."""


class NoAnswer(RelayError):
    """An upstream gave no answer; the message says why, scrubbed of secrets."""

    def __init__(self, note: str, *, error: str, duration_ms: float) -> None:
        super().__init__(note)
        #: Class of the trouble (``TimeoutError``, ``ClientConnectorError``).
        self.error = error
        #: How long the request took before it gave up.
        self.duration_ms = duration_ms


class RequestError(RelayError):
    """A client's request cannot be served as sent."""

    #: HTTP status of the problem answer.
    status: int = 400
    #: Short, stable title of the problem type.
    title: str = "Bad request"
    #: Last segment of the problem type URI (``/problems/<slug>``).
    slug: str = "bad-request"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors: list[FieldError] = errors or []
        #: Extra answer headers (Retry-After, RateLimit-*).
        self.headers: dict[str, str] = headers or {}


class MalformedBody(RequestError):
    status, title, slug = 400, "Malformed body", "malformed-body"


class BodyTimeout(RequestError):
    status, title, slug = 408, "Request timeout", "body-timeout"


class BodyTooLarge(RequestError):
    status, title, slug = 413, "Body too large", "body-too-large"


class UnsupportedMediaType(RequestError):
    status, title, slug = 415, "Unsupported media type", "unsupported-media-type"


class ValidationFailed(RequestError):
    status, title, slug = 422, "Validation failed", "validation-failed"


class Unauthorized(RequestError):
    status, title, slug = 401, "Unauthorized", "unauthorized"


class Forbidden(RequestError):
    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(RequestError):
    status, title, slug = 404, "Not found", "not-found"


class RateLimited(RequestError):
    status, title, slug = 429, "Too many requests", "rate-limited"


class Conflict(RequestError):
    status, title, slug = 409, "Conflict", "conflict"
