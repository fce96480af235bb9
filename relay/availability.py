"""Whether Redis answers, as every loop of one process sees it; and loops that never die.

One :class:`RedisWatch` per process. Every loop that uses Redis (the API's
invalidation listeners and start-up checks, each of the worker's loops) tells
it ``failed(exc)`` when a call failed for want of Redis, and ``ok()`` when one
worked. The watch writes the only log lines about an outage, whoever noticed:

    WARNING Redis went away (Error 111 connecting to 127.0.0.1:6379. Connection refused.); ...
    WARNING Redis still unavailable after 1 min 0 s (...)         one a minute while it lasts
    INFO    Redis is back after 1 min 12 s                            once no call failed for 5 s

and hands out the pause before the next try (backoff with jitter). Calls
failing while others work (writes refused at maxmemory) are one outage, not a
pair of lines per failure.

A :class:`Supervisor` keeps one coroutine running: when it dies of an
unexpected exception it is logged (one ERROR line with the traceback, at
most one a minute per supervisor) and started again after a growing pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from relay.errors import StoreUnavailable

__all__ = ["RedisWatch", "Supervisor", "still_cancelled"]

log = logging.getLogger("relay.redis")
loops_log = logging.getLogger("relay.supervisor")

T = TypeVar("T")

#: While Redis stays away, a reminder this often (seconds).
REMIND_EVERY_S = 60.0
#: Backoff between tries while Redis is away: doubling from the first, up to the cap.
_FIRST_PAUSE_S = 0.1
_MAX_PAUSE_S = 2.0
#: An outage is over once no call failed for this long (above the longest pause, so a
#: loop that keeps failing is heard from within it).
_SETTLE_S = 2.5 * _MAX_PAUSE_S
#: A supervised coroutine restarts after this long, doubling per death, up to the cap;
#: one that ran this long before dying counts as healthy again (its pause starts over).
_FIRST_RESTART_S = 0.1
_MAX_RESTART_S = 30.0
_HEALTHY_RUN_S = 60.0
#: At most one traceback per supervisor in this long; the deaths between are counted.
_REPORT_EVERY_S = 60.0


def _took(seconds: float) -> str:
    """``12.3 s``, ``4 min 5 s``, ``2 h 3 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    return f"{minutes // 60} h {minutes % 60} min"


def still_cancelled(exc: BaseException | None = None) -> None:
    """Raise CancelledError if the running task is being cancelled (``exc`` may be what
    a library made of that cancellation).

    Call it after each call into the Redis client in a loop that runs until cancelled:
    the client can swallow a cancellation outright (on Python 3.11, ``asyncio.wait_for``
    returns the result of a write that finished in the same turn of the event loop as
    the cancellation), and the loop would go on as if nothing had been asked."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop: nothing is being cancelled
        return
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


class RedisWatch:
    """Up or down, and since when; the one voice of a process about Redis outages.

    >>> watch = RedisWatch()
    >>> await watch.call(redis.ping)  # at start: wait until Redis answers  # doctest: +SKIP
    >>> await watch.repeat(one_pass, every_s=0.25)  # a loop, until cancelled  # doctest: +SKIP
    """

    __slots__ = (
        "_clock",
        "_down_since",
        "_failed_at",
        "_failures",
        "_recovered_at",
        "_said_at",
        "remind_every_s",
    )

    def __init__(
        self,
        *,
        remind_every_s: float = REMIND_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: While Redis stays away, one reminder line this often.
        self.remind_every_s = remind_every_s
        self._clock = clock
        self._down_since: float | None = None
        self._said_at = self._failed_at = 0.0
        self._recovered_at: float | None = None  # first success after the last failure
        self._failures = 0

    def __repr__(self) -> str:
        if self._down_since is None:
            return "<RedisWatch up>"
        return f"<RedisWatch down for {_took(self._clock() - self._down_since)}>"

    @property
    def up(self) -> bool:
        """False from the first failure until calls have worked for a while."""
        return self._down_since is None

    def failed(self, exc: StoreUnavailable) -> float:
        """Note a call that failed for want of Redis; returns the seconds to wait.

        Raises CancelledError when the task is being cancelled: the Redis client can
        turn a cancellation into a connection error, and a loop must still stop."""
        still_cancelled(exc)
        now = self._failed_at = self._clock()
        self._recovered_at = None
        if self._down_since is None:
            self._down_since = self._said_at = now
            log.warning("Redis went away (%s); waiting for it, retrying with backoff", exc)
        elif now - self._said_at >= self.remind_every_s:
            self._said_at = now
            log.warning("Redis still unavailable after %s (%s)", _took(now - self._down_since), exc)
        self._failures += 1
        pause = min(_MAX_PAUSE_S, _FIRST_PAUSE_S * 2.0 ** min(self._failures - 1, 16))
        jitter: float = random.uniform(0.5, 1.0)  # noqa: S311 (not a secret)
        return pause * jitter

    def ok(self) -> None:
        """Note a call that worked. An outage ends (and says how long it was) once no
        call failed for _SETTLE_S: while some calls fail and others work (writes refused
        at maxmemory, reads served) it lasts, rather than ending and starting again."""
        if self._down_since is None:
            self._failures = 0
            return
        now = self._clock()
        if self._recovered_at is None:
            self._recovered_at = now
        if now - self._failed_at >= _SETTLE_S:
            log.info("Redis is back after %s", _took(self._recovered_at - self._down_since))
            self._down_since = self._recovered_at = None
            self._failures = 0

    async def repeat(self, step: Callable[[], Awaitable[object]], *, every_s: float = 0.0) -> None:
        """``await step()`` again and again, ``every_s`` apart, until cancelled: a loop's
        body. A step that failed for want of Redis (StoreUnavailable) is tried again
        after the backoff; any other error is a bug and ends the loop (its Supervisor
        logs the traceback and starts it again)."""
        while True:
            try:
                await step()
            except StoreUnavailable as exc:
                await asyncio.sleep(self.failed(exc))
                continue
            still_cancelled()  # a cancellation the client swallowed still ends the loop
            self.ok()
            await asyncio.sleep(every_s)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()`` until Redis lets it through (start-up: wait, never give up)."""
        while True:
            try:
                result = await fn()
            except StoreUnavailable as exc:
                await asyncio.sleep(self.failed(exc))
                continue
            self.ok()
            return result


class Supervisor:
    """Keep ``target()`` running until it returns: a death is logged and restarted.

    ``running`` is False while the target waits to be restarted (and before and
    after it ran), so a readiness check can tell a dead loop from a live one.
    """

    __slots__ = ("_clock", "_reported_at", "_unreported", "deaths", "running", "what")

    def __init__(self, what: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        #: What runs, for the log line ("worker loop of convertr").
        self.what = what
        #: Deaths in a row (back to 0 after a healthy run).
        self.deaths = 0
        self.running = False
        self._clock = clock
        self._reported_at: float | None = None
        self._unreported = 0

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Supervisor {self.what} {state} deaths={self.deaths}>"

    async def run(
        self, target: Callable[[], Awaitable[None]], *, stopping: asyncio.Event | None = None
    ) -> None:
        """Run ``target`` until it returns or ``stopping`` is set (cancellation ends it too)."""
        while stopping is None or not stopping.is_set():
            started = self._clock()
            self.running = True
            try:
                await target()
                return
            except Exception as exc:
                still_cancelled(exc)
                error = exc
            finally:
                self.running = False
            if self._clock() - started >= _HEALTHY_RUN_S:
                self.deaths = 0
            self.deaths += 1
            pause_s = min(_MAX_RESTART_S, _FIRST_RESTART_S * 2.0 ** min(self.deaths - 1, 16))
            self._report(error, pause_s)
            if stopping is None:
                await asyncio.sleep(pause_s)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), pause_s)

    def _report(self, error: Exception, pause_s: float) -> None:
        now = self._clock()
        if self._reported_at is not None and now - self._reported_at < _REPORT_EVERY_S:
            self._unreported += 1
            return
        more = ""
        if self._unreported:
            more = f" ({self._unreported} more deaths since the last report)"
        loops_log.error(
            "%s died; restarting it in %.1f s%s",
            self.what,
            pause_s,
            more,
            exc_info=(type(error), error, error.__traceback__),
        )
        self._reported_at = now
        self._unreported = 0
