"""Per-destination limits shared by every worker process on every host.

All state lives in Redis and every decision is one Lua script, so two workers
in two processes (or on two hosts) can never both take the last slot:

* :meth:`RateLimiter.acquire` (``relay/lua/acquire.lua``): at most ``count``
  requests in ANY window of ``period_s`` (the destination's ``rate_limit``).
* An upstream 429 with ``Retry-After`` stops every worker of the destination until
  it has passed: ``relay/lua/settle.lua`` sets the pause, ``acquire.lua`` and
  ``take.lua`` honour it.
* At most ``max_in_flight`` requests open at once: ``take.lua`` gives each request a
  lease, ``settle.lua`` takes it back; a crashed worker's lease lapses.

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
check), until its answer comes back; then it is dated at that moment (by
``settle.lua``, which records the answer), the latest it can have arrived. Then every
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
from collections.abc import Mapping, Sequence

from aiolimiter import AsyncLimiter
from redis.asyncio import Redis

from relay import redis_keys
from relay.connect import server_time_ms
from relay.scripts import ACQUIRE
from relay.settings import RateLimit

__all__ = ["FULL_POLL_S", "LOCAL_BURST", "RateLimiter", "local_limiter"]

#: Most requests one process sends back to back under :func:`local_limiter`.
LOCAL_BURST = 10
#: How long a worker waits before asking again for a slot when all are taken.
FULL_POLL_S = 0.02


def _ms(seconds: float) -> int:
    """Whole milliseconds, rounded up: a limit or a pause is never shortened."""
    return math.ceil(seconds * 1000)


class RateLimiter:
    """The Redis side of every destination's rate limit; one per process is enough::

    limiter = RateLimiter(redis)
    while (wait_s := await limiter.acquire("convertr", RateLimit(3000, 300))) > 0:
        await asyncio.sleep(wait_s)
    ...  # send one request
    """

    __slots__ = ("_acquire", "_redis", "admitted", "refused")

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._acquire = ACQUIRE.bind(redis)
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

        With ``hold_ms`` the request counts as in flight until the settle of its answer
        dates it (``request_id``), or for ``hold_ms`` at most (a worker that died
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
                keys={"log": redis_keys.rate(name), "pause": redis_keys.paused(name)},
                args={
                    "now_ms": "" if now_ms is None else now_ms,
                    "count": limit.count,
                    "period_ms": _ms(limit.period_s),
                    "request": request_id or uuid.uuid4().hex,
                    "hold_ms": hold_ms,
                    "poll_ms": _ms(FULL_POLL_S),
                },
            )
        )
        if answer <= 0:
            self.admitted += 1
            return 0.0, max(0, -answer - 1)
        self.refused += 1
        return answer / 1000, 0

    async def unused(self, destination: str, request_ids: Sequence[str]) -> None:
        """The requests admitted as ``request_ids`` were never sent: their slots are free."""
        if request_ids:
            await self._redis.zrem(redis_keys.rate(destination), *request_ids)

    async def answered(self, destination: str, request_ids: Sequence[str]) -> None:
        """The requests ``request_ids`` were answered: date them now (Redis's clock), no
        longer in flight, as ``settle.lua`` does. For a request that grows into several
        calls (ConveYour track events): the earlier calls' slots free one period after
        their answers, not after the settle of the last one (which dates them again,
        later: later is never too early)."""
        if request_ids:
            now_ms = await server_time_ms(self._redis)
            await self._redis.zadd(
                redis_keys.rate(destination), dict.fromkeys(request_ids, now_ms), xx=True
            )

    async def in_use(self, limits: Mapping[str, RateLimit]) -> dict[str, int]:
        """How many requests each destination's current window holds (read-only: the
        entries ``acquire.lua`` would count now; in-flight ones are dated ahead, so
        they count too). For the console; by the server's clock, as the script; one
        clock read and one round trip for them all."""
        now_ms = await server_time_ms(self._redis)
        async with self._redis.pipeline(transaction=False) as pipe:
            for destination, limit in limits.items():
                pipe.zcount(redis_keys.rate(destination), now_ms - _ms(limit.period_s), "+inf")
            counts = await pipe.execute()
        return {name: int(n) for name, n in zip(limits, counts, strict=True)}

    async def paused_for(self, destination: str) -> float:
        """Seconds left of the destination's pause; 0.0 when it is not paused."""
        ms = int(await self._redis.pttl(redis_keys.paused(destination)))
        return max(ms, 0) / 1000


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
