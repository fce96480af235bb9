"""Per-destination limits shared by every worker process on every host.

All state lives in Redis and every decision is one Lua script, so two workers
in two processes (or on two hosts) can never both take the last slot:

* :meth:`RateLimiter.acquire`: at most ``count`` requests in ANY window of
  ``period_s`` (the destination's ``rate_limit``).
* :meth:`RateLimiter.pause`: an upstream 429 with ``Retry-After`` stops every
  worker of the destination until it has passed.
* :meth:`RateLimiter.lease` / :meth:`RateLimiter.release`: at most
  ``max_in_flight`` requests open at once; a crashed worker's lease lapses.

:func:`local_limiter` additionally spreads one process's own requests out, so
that one process does not spend a whole window's allowance in its first
millisecond. It is a courtesy to the upstream; the Redis limiter is the guarantee.

Why a sliding-window log and not GCRA
-------------------------------------
GCRA with emission interval ``T = period/count`` and a burst tolerance of
``(count - 1) * T`` admits a burst of ``count`` on an empty bucket and then one
more request every ``T``, i.e. ``2 * count - 1`` requests within a single
``period``: it bounds the long-run *rate*, not every *window*. The only GCRA
that never exceeds a window is the one without burst (``tau = 0``: one request
per ``T``, never two closer), which refuses the burst an idle destination is
entitled to. Upstreams such as ConveYour (2000/5m) count per window, so relay
keeps a log instead: a sorted set of the times (ms, Redis server clock) of the
requests of the last period. A request is admitted when the log holds fewer
than ``count`` entries newer than ``now - period``. The cost, ``count`` small
zset entries per busy destination, is nothing next to the queue.

What the upstream counts is arrivals, not admissions, and a request arrives
some time after it was admitted (a Redis round trip, the worker's loop, the
network: tens of ms on a busy host, more over the internet). So a worker's
request is logged as in flight, dated ``hold_ms`` ahead (counted by every
check), until its answer comes back; then it is dated at that moment
(:meth:`RateLimiter.answered`), the latest it can have arrived. Then every
half-open window ``[t, t + period)`` of the upstream's clock holds at most
``count`` arrivals, whatever the delays (proof: take the request ``r`` of that
window admitted last, at ``a < t + period``; every other one in the window was
admitted before ``a`` and, at ``a``, was either in flight or dated at its answer,
after its arrival, so at or after ``t > a - period``: all counted, so there were
fewer than ``count`` of them). A slot frees one period after an answer instead
of after an admission: the share of the limit reached is ``period / (period +
round trip)``, above 99 % of a per-second limit on loopback and of ConveYour's
2000/5m over the internet. API keys' own limits count requests at admission
(``hold_ms`` 0): they arrive there and then.

The time is Redis's ``TIME`` inside the script, not the worker's clock, so
hosts with skewed clocks still agree. (A script that reads TIME and then writes
needs effects replication: the default since Redis 5, and relay needs 6.2.)
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Sequence

from aiolimiter import AsyncLimiter
from redis.asyncio import Redis

from relay import redis_keys
from relay.settings import RateLimit

__all__ = [
    "FULL_POLL_S",
    "LOCAL_BURST",
    "NOW_LUA",
    "TAKE_LEASE_LUA",
    "RateLimiter",
    "local_limiter",
]

#: Most requests one process sends back to back under :func:`local_limiter`.
LOCAL_BURST = 10

# The server's clock in ms, unless the caller passed one (tests simulate time).
# (NOW_LUA and TAKE_LEASE_LUA are shared with relay.queue's take script.)
NOW_LUA = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: rate log, pause marker. ARGV: now ms or "", count, period ms, request id,
# hold ms (an entry is dated that far ahead until answered: see the module docstring),
# poll ms. Returns 0 or less (admitted and logged) or the ms to wait (nothing logged).
_ACQUIRE = (
    NOW_LUA
    + """
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then return paused end
local count, period, hold = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
local n = redis.call('ZCARD', KEYS[1])
if n < count then
  redis.call('ZADD', KEYS[1], now + hold, ARGV[4])
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(last[2]) + period - now))
  return n - count  -- admitted: minus (requests still free in the window + 1)
end
-- Full: a slot frees when the entry that would leave it over the limit ages out
-- (n > count only after the limit was lowered); an entry still in flight ages out
-- a period after its answer, which is not known yet: ask again shortly.
local freeing = redis.call('ZRANGE', KEYS[1], n - count, n - count, 'WITHSCORES')
local at = tonumber(freeing[2])
if at > now then return tonumber(ARGV[6]) end
return math.max(1, at + period - now)
"""
)

# KEYS: rate log. ARGV: now ms or "", request ids. Dates each (still logged) request
# at its answer: now, when it has certainly reached the upstream.
_ANSWERED = (
    NOW_LUA
    + """
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now, ARGV[i]) end
"""
)

# KEYS: pause marker. ARGV: ms. The later of the current and the new pause wins.
_PAUSE = """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
end
"""

# KEYS[1]: lease zset. ARGV: now ms or "", max in flight, holder, ttl ms.
TAKE_LEASE_LUA = """
local cap, holder, ttl = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], holder) and redis.call('ZCARD', KEYS[1]) >= cap then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, holder)
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(last[2]) - now))
"""

# Returns 1 (taken) or 0 (full).
_LEASE = NOW_LUA + TAKE_LEASE_LUA + "return 1"

# A worker's one call before a request. KEYS: lease zset, pause marker, then hashes to
# mark. ARGV: as _LEASE, then the field and value to set in each hash once the lease is
# taken, and optionally a field to set to the holder. Returns 1 (taken, marked), 0
# (full), or minus the ms left of a pause.
_BEGIN = (
    NOW_LUA
    + """
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then return -paused end
"""
    + TAKE_LEASE_LUA
    + """
for i = 3, #KEYS do
  redis.call('HSET', KEYS[i], ARGV[5], ARGV[6])
  if ARGV[7] then redis.call('HSET', KEYS[i], ARGV[7], holder) end
end
return 1
"""
)


#: How long a worker waits before asking again for a slot when all are taken.
FULL_POLL_S = 0.02


def _ms(seconds: float) -> int:
    """Whole milliseconds, rounded up: a limit or a pause is never shortened."""
    return math.ceil(seconds * 1000)


class RateLimiter:
    """The Redis side of every destination's limits; one per process is enough::

    limiter = RateLimiter(redis)
    while (wait_s := await limiter.acquire("convertr", RateLimit(3000, 300))) > 0:
        await asyncio.sleep(wait_s)
    ...  # send one request
    """

    __slots__ = (
        "_acquire",
        "_answered",
        "_begin",
        "_lease",
        "_pause",
        "_redis",
        "admitted",
        "refused",
    )

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._acquire = redis.register_script(_ACQUIRE)
        self._answered = redis.register_script(_ANSWERED)
        self._pause = redis.register_script(_PAUSE)
        self._lease = redis.register_script(_LEASE)
        self._begin = redis.register_script(_BEGIN)
        #: Requests this instance was allowed to send.
        self.admitted = 0
        #: Calls to :meth:`acquire` answered with a wait (rate limit or pause).
        self.refused = 0

    def __repr__(self) -> str:
        return f"<RateLimiter admitted={self.admitted} refused={self.refused}>"

    async def acquire(
        self,
        destination: str,
        limit: RateLimit,
        *,
        request_id: str | None = None,
        hold_ms: int = 0,
        now_ms: int | None = None,
    ) -> float:
        """0.0 when one request may be sent now (and it is counted), else seconds to wait.

        A wait records nothing: call again after it. While the destination is
        paused the wait is the rest of the pause. ``now_ms`` replaces Redis's
        clock (tests); otherwise the time is the server's.

        With ``hold_ms`` the request counts as in flight until :meth:`answered`
        (``request_id``) dates it, or for ``hold_ms`` at most (a worker that died
        mid-request): make it longer than the request's timeout.
        """
        answer = await self.admit(
            destination, limit, request_id=request_id, hold_ms=hold_ms, now_ms=now_ms
        )
        return answer[0]

    async def admit(
        self,
        name: str,
        limit: RateLimit,
        *,
        request_id: str | None = None,
        hold_ms: int = 0,
        now_ms: int | None = None,
    ) -> tuple[float, int]:
        """Like :meth:`acquire`, also giving how many requests the window still allows."""
        answer = int(
            await self._acquire(
                keys=[redis_keys.rate(name), redis_keys.paused(name)],
                args=[
                    "" if now_ms is None else now_ms,
                    limit.count,
                    _ms(limit.period_s),
                    request_id or uuid.uuid4().hex,
                    hold_ms,
                    _ms(FULL_POLL_S),
                ],
            )
        )
        if answer <= 0:
            self.admitted += 1
            return 0.0, max(0, -answer - 1)
        self.refused += 1
        return answer / 1000, 0

    async def answered(
        self, destination: str, request_ids: Sequence[str], *, now_ms: int | None = None
    ) -> None:
        """The requests admitted as ``request_ids`` (with ``hold_ms``) were answered: they
        count from now on as having reached the upstream now, and age out a period later."""
        if request_ids:
            await self._answered(
                keys=[redis_keys.rate(destination)],
                args=["" if now_ms is None else now_ms, *request_ids],
            )

    async def pause(self, destination: str, seconds: float) -> None:
        """Stop every worker sending to ``destination`` for ``seconds`` (an upstream 429).

        A pause already longer than this one is kept. ``seconds <= 0`` does nothing.
        """
        if seconds > 0:
            await self._pause(keys=[redis_keys.paused(destination)], args=[_ms(seconds)])

    async def paused_for(self, destination: str) -> float:
        """Seconds left of the destination's pause; 0.0 when it is not paused."""
        ms = int(await self._redis.pttl(redis_keys.paused(destination)))
        return max(ms, 0) / 1000

    async def lease(
        self,
        destination: str,
        max_in_flight: int,
        holder: str,
        *,
        ttl_ms: int,
        now_ms: int | None = None,
    ) -> bool:
        """Take one of ``max_in_flight`` request slots of ``destination`` for ``holder``.

        ``holder`` names one slot (e.g. ``host:pid:task``); leasing it again
        while held renews it. A lease lapses ``ttl_ms`` after it was taken, so a
        crashed worker's slot comes back by itself: make ``ttl_ms`` longer than
        the upstream timeout. ``now_ms`` replaces Redis's clock (tests).
        """
        if ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be positive, got {ttl_ms}")
        taken = await self._lease(
            keys=[redis_keys.inflight(destination)],
            args=["" if now_ms is None else now_ms, max_in_flight, holder, ttl_ms],
        )
        return bool(int(taken))

    async def begin(
        self,
        destination: str,
        max_in_flight: int,
        holder: str,
        *,
        ttl_ms: int,
        mark: Sequence[str] = (),
        field: str = "",
        value: str = "",
        holder_field: str | None = None,
    ) -> float:
        """:meth:`lease` unless the destination is paused, and on success set ``field``
        to ``value`` (and ``holder_field`` to ``holder``) in each hash of ``mark``: one
        round trip before a request.

        0.0 when the slot is taken; else seconds to wait: the rest of a pause, or
        0.0 < wait when every slot is taken (poll again).
        """
        answer = int(
            await self._begin(
                keys=[redis_keys.inflight(destination), redis_keys.paused(destination), *mark],
                args=[
                    *("", max_in_flight, holder, ttl_ms, field, value),
                    *(() if holder_field is None else (holder_field,)),
                ],
            )
        )
        if answer == 1:
            return 0.0
        return -answer / 1000 if answer < 0 else FULL_POLL_S

    async def release(self, destination: str, holder: str) -> None:
        """Give ``holder``'s slot back (nothing happens when it has none)."""
        await self._redis.zrem(redis_keys.inflight(destination), holder)


def local_limiter(limit: RateLimit, *, burst: int = LOCAL_BURST) -> AsyncLimiter:
    """A per-process smoother: the limit's rate, in bursts of at most ``burst``.

    ``2000/5m`` gives ``AsyncLimiter(10, 1.5)``: the same long-run rate, spread
    over the period. Call it inside the running event loop (a worker's startup),
    never at import time: an AsyncLimiter binds to the first loop that uses it.

    Raises RuntimeError when no event loop is running.
    """
    asyncio.get_running_loop()
    size = max(1, min(limit.count, burst))
    return AsyncLimiter(size, limit.period_s * size / limit.count)
