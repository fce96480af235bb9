"""Retry policy: when to try a failed delivery again. Pure functions, no I/O.

A failed delivery waits ``schedule[retry - 1]`` seconds before retry number
``retry``, jittered by ±20 % so that a burst of failures does not come back as
a burst, and never less than the upstream's ``Retry-After``. Once every step is
spent the answer is None: the worker dead-letters the event (kept, replayable,
``event.failed`` fires). With the default schedule that is 11 attempts over
about 46 h 43 m (:func:`window_s`). Rejected credentials (401/403) are never
dead-lettered: they wait on the long end of the schedule, its last step
repeating, for as long as it takes someone to fix the token (there is no point
knocking every 5 s on a locked door).

>>> 4.0 <= next_delay_s(1, DEFAULT_SCHEDULE_S) <= 6.0  # 5 s ± 20 %
True
>>> next_delay_s(11, DEFAULT_SCHEDULE_S) is None  # 10 steps: retry 11 never comes
True
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from relay.settings import DEFAULT_RETRY_SCHEDULE_S

__all__ = [
    "CREDENTIALS_MIN_STEP_S",
    "DEFAULT_SCHEDULE_S",
    "JITTER",
    "next_delay_s",
    "parse_retry_after",
    "window_s",
]

#: Seconds between attempts: 5 s, 30 s, 2 m, 10 m, 30 m, 1 h, 3 h, 6 h, 12 h, 24 h.
DEFAULT_SCHEDULE_S: tuple[float, ...] = tuple(float(s) for s in DEFAULT_RETRY_SCHEDULE_S)
#: Each delay is its step times a uniform factor in [1 - JITTER, 1 + JITTER]
#: (not "full jitter": a retry never comes sooner than 80 % of its step).
JITTER = 0.2
#: With rejected credentials the schedule starts at its first step this long or longer.
CREDENTIALS_MIN_STEP_S = 600.0

_DELTA_SECONDS = re.compile(r"[0-9]+")
#: Used when no ``rng`` is given; jitter needs spread, not secrecy.
_RNG = random.Random()  # noqa: S311


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header; None when absent or unreadable.

    The header is either delta-seconds (``120``) or an HTTP-date
    (``Wed, 21 Oct 2015 07:28:00 GMT``); a date in the past means 0. A negative
    or fractional number is not delta-seconds (RFC 9110 §10.2.3): None.

    >>> parse_retry_after("120")
    120.0
    >>> when = datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC)
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=when)
    30.0
    >>> parse_retry_after("soon") is None
    True
    """
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        try:
            return float(int(text))
        except OverflowError:  # more digits than a float holds: garbage
            return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP-dates are always GMT
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def next_delay_s(
    retry: int,
    schedule: Sequence[float],
    *,
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
    credentials: bool = False,
) -> float | None:
    """Seconds to wait before retry number ``retry`` (1 for the first retry), or None
    when the schedule is spent: dead-letter the event.

    The step is ``schedule[retry - 1]``, jittered by ±:data:`JITTER`; the result is
    never below ``retry_after_s``.

    ``credentials=True`` (the upstream answered 401/403: our credentials were
    rejected) is never None: retry 1 waits the first step of at least
    :data:`CREDENTIALS_MIN_STEP_S` (or the last step if none is that long), later
    retries go on from there, and past the end the last step repeats. The event is
    kept; an operator fixing the token sees it delivered within one long step.

    >>> rng = random.Random(1)
    >>> [round(next_delay_s(n, [5, 30, 120], rng=rng) or -1) for n in (1, 2, 3, 4)]
    [4, 34, 133, -1]
    >>> next_delay_s(1, [5, 30], retry_after_s=90, rng=rng)
    90.0
    >>> 480 <= (next_delay_s(1, DEFAULT_SCHEDULE_S, credentials=True) or 0) <= 720
    True
    >>> 69120 <= (next_delay_s(99, DEFAULT_SCHEDULE_S, credentials=True) or 0) <= 103680
    True
    """
    if retry < 1:
        raise ValueError(f"retries count from 1, got {retry}")
    if not schedule:
        raise ValueError("the retry schedule is empty")
    last = len(schedule) - 1
    if credentials:
        start = next((i for i, s in enumerate(schedule) if s >= CREDENTIALS_MIN_STEP_S), last)
        step = schedule[min(start + retry - 1, last)]
    elif retry - 1 > last:
        return None
    else:
        step = schedule[retry - 1]
    jittered = step * (rng or _RNG).uniform(1 - JITTER, 1 + JITTER)
    return float(max(jittered, retry_after_s or 0.0))


def window_s(schedule: Sequence[float]) -> float:
    """Seconds from a delivery's first attempt to its last before it is dead-lettered,
    without jitter (which moves it by up to ±:data:`JITTER`) and the attempts' own time.

    >>> round(window_s(DEFAULT_SCHEDULE_S) / 3600, 2)  # about 46 h 43 m
    46.71
    """
    return float(sum(schedule))
