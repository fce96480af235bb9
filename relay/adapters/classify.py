"""Pure helpers every adapter shares: what an HTTP status means, Retry-After, scrubbing.

Kept free of I/O so that the worker's retry policy and the tests can call them
directly. The table (ARCHITECTURE.md, "Delivery semantics")::

    2xx                  the adapter decides (each upstream has its own idea of success)
    401, 403             credentials: keep the event, report the destination unhealthy
    408, 425, 429, 5xx   retry
    other 4xx            rejected: dead-letter with the answer
    1xx, 3xx             credentials: redirects are not followed, so a 3xx means the
                         destination URL is wrong (a configuration problem; keep the events)
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

from relay.adapters.base import Outcome

__all__ = ["EXCERPT_CHARS", "classify_status", "excerpt", "scrub"]

#: Characters of an upstream answer kept on an attempt.
EXCERPT_CHARS = 500
#: Bytes of an answer decoded for an excerpt: enough for 500 characters around long secrets.
_EXCERPT_READ_BYTES = 16_384
_RETRY_STATUSES = frozenset({408, 425, 429})


def classify_status(status: int) -> Outcome:
    """The outcome a non-2xx status means; a 2xx gives ``delivered`` (adapters refine it)."""
    if 200 <= status < 300:
        return Outcome.delivered
    if status in (401, 403):
        return Outcome.credentials
    if status in _RETRY_STATUSES or status >= 500:
        return Outcome.retry
    if 400 <= status < 500:
        return Outcome.rejected
    return Outcome.credentials


@functools.lru_cache(maxsize=256)
def _variants(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """Secrets as they may appear, raw and percent-encoded as in a URL query, longest
    first. Worked out once per set of secrets (an adapter's are fixed), not per answer."""
    forms = {v for s in secrets for v in (s, quote(s, safe=""), quote_plus(s)) if v}
    return tuple(sorted(forms, key=len, reverse=True))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (and its URL-encoded forms) replaced by ``***``."""
    for secret in _variants(tuple(secrets)):
        text = text.replace(secret, "***")
    return text


def excerpt(body: bytes, secrets: Iterable[str]) -> str:
    """The first :data:`EXCERPT_CHARS` characters of an answer, secrets scrubbed.

    Scrubbed before it is cut, so that half a secret at the cut never shows.
    """
    head = body[:_EXCERPT_READ_BYTES].decode("utf-8", errors="replace")
    return scrub(head, secrets)[:EXCERPT_CHARS]
