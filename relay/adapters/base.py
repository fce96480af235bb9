"""The adapter seam: turn one stored event into one upstream request, and classify the answer.

An adapter is given its destination's settings and the ``aiohttp.ClientSession``
it must use (tests hand it a session pointed at a fake upstream on loopback).
It never retries, sleeps, or touches Redis: it makes one attempt and says what
happened; the worker decides what to do next from :class:`Outcome`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = ["Attempt", "Outcome"]


class Outcome(StrEnum):
    """What one attempt means for the event."""

    #: The upstream took it (ConveYour: 200 and status "ok"; Convertr: 201).
    delivered = "delivered"
    #: Try again later: timeout, connection error, 408/425/429/5xx.
    retry = "retry"
    #: The upstream refused this event (other 4xx, or a 200 that says no): dead-letter it.
    rejected = "rejected"
    #: The upstream refused our credentials or configuration (401/403): keep the
    #: event, retry on the long schedule, report the destination unhealthy.
    credentials = "credentials"


@dataclass(frozen=True, slots=True)
class Attempt:
    """The record of one attempt, kept on the event (never holds a secret)."""

    outcome: Outcome
    #: HTTP status, or None when no answer came (timeout, connection error).
    status: int | None
    duration_ms: float
    #: Up to 500 characters of the answer, secrets scrubbed.
    excerpt: str = ""
    #: Class of the error when there was one (``TimeoutError``, ``ClientConnectorError``).
    error: str | None = None
    #: Seconds the upstream asked us to wait (Retry-After), if it said.
    retry_after_s: float | None = None
    #: The upstream's id for what it created (Convertr's lead id), if it gave one.
    upstream_id: str | None = None
    #: Anything the user should know (e.g. fields left out of a Convertr lead).
    note: str | None = None
    #: Requests of this event the upstream has taken so far, earlier attempts included
    #: (ConveYour: its identify, then one per track event); a retry resumes after them.
    steps: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__ if getattr(self, k) is not None}
