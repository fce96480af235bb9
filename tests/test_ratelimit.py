"""The Redis limiter: no window of the period ever holds more than the limit.

Time is simulated through ``now_ms`` (integers, ms); one test uses the real
clock of the server. The periods are long (minutes) so that the keys' real
PX expiry never fires while a simulation runs in a second or two.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import random
from collections.abc import AsyncIterator, Sequence

import pytest
from aiolimiter import AsyncLimiter
from redis.asyncio import Redis

from relay import redis_keys
from relay.connect import redis_client
from relay.ratelimit import FULL_POLL_S, LOCAL_BURST, RateLimiter, local_limiter
from relay.scripts import RELEASE
from relay.settings import RateLimit
from tests.redis_server import RedisServer

DEST = "convertr"
T0 = 1_700_000_000_000  # a plausible epoch ms for the simulated clock


async def _answered(
    redis: Redis,
    sent: Sequence[str] = (),
    *,
    pause_ms: int = 0,
    now_ms: int | None = None,
    dest: str = DEST,
) -> None:
    """What release.lua does for the rate limit when a request's answer comes: its ids in
    the log dated now, and a 429's pause (a settlement of no events)."""
    release = RELEASE.bind(redis)
    batch = release.batch()
    item = {
        "destination": dest,
        "holder": "h",
        "leases": batch.key(redis_keys.inflight(dest)),
        "rate": batch.key(redis_keys.rate(dest)),
        "sent": list(sent),
    }
    if pause_ms:
        item |= {"pause": batch.key(redis_keys.paused(dest)), "pause_ms": pause_ms}
    batch.add(item)
    keys = {"health": redis_keys.HEALTH}
    await release(batch, keys=keys, args={"now_ms": now_ms or ""})


def worst_window(admitted_ms: Sequence[int], period_ms: int) -> int:
    """Most admissions in any half-open window ``[t, t + period)``.

    The busiest window can always be slid right until it starts on an
    admission, so checking the windows that start at each admission checks them all.
    """
    times = sorted(admitted_ms)
    return max(
        (bisect.bisect_left(times, t + period_ms) - i for i, t in enumerate(times)), default=0
    )


def test_worst_window_counts_what_it_should() -> None:
    assert worst_window([], 10) == 0
    assert worst_window([0, 9, 10, 19], 10) == 2
    assert worst_window([0, 1, 2, 10], 10) == 3
    assert worst_window([5, 5, 5], 1) == 3


@pytest.fixture
async def other_redis(redis: Redis, redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A second client of the same server, as another worker process would have."""
    client = redis_client(redis_server.url)
    yield client
    await client.aclose()


async def test_random_attempts_never_exceed_any_window(redis: Redis, other_redis: Redis) -> None:
    limit = RateLimit(10, 60.0)
    period_ms = 60_000
    rng = random.Random(20240601)
    # Two "processes" (two clients, two limiters) over 40 periods: quiet stretches,
    # bursts, and probes placed exactly on and next to the window edges.
    # Attempts run in time order (one server clock), from either process.
    limiters = [RateLimiter(redis), RateLimiter(other_redis)]
    attempts: list[int] = []
    t = T0
    while t < T0 + 40 * period_ms:
        kind = rng.random()
        if kind < 0.1:
            attempts += [t] * rng.randint(2, 25)  # a burst at one instant
        elif kind < 0.2:
            attempts += [t + k * rng.randint(1, 50) for k in range(rng.randint(2, 30))]
        attempts.append(t)
        t += int(rng.expovariate(1 / 2500))
    heapq.heapify(attempts)
    admitted: list[int] = []
    while attempts:
        now = heapq.heappop(attempts)
        wait = await rng.choice(limiters).acquire(DEST, limit, now_ms=now)
        if wait == 0:
            admitted.append(now)
            if rng.random() < 0.3:  # probe the edges of the window this admission opened
                for at in (now + period_ms - 1, now + period_ms, now + period_ms + 1):
                    heapq.heappush(attempts, at)
        else:
            assert 0 < wait <= limit.period_s
    worst = worst_window(admitted, period_ms)
    assert worst <= limit.count
    assert worst == limit.count  # the test did push it to the limit
    assert len(admitted) >= 200


async def test_saturating_backlog_gets_the_whole_limit(redis: Redis, other_redis: Redis) -> None:
    """Workers with endless work, in two processes, each waiting what acquire() says."""
    limit = RateLimit(20, 120.0)
    period_ms = 120_000
    periods = 100
    end = T0 + periods * period_ms
    rng = random.Random(7)
    workers = [(RateLimiter(redis if i % 2 else other_redis), i) for i in range(6)]
    ready = [(T0 + rng.randint(0, 1000), i) for i in range(len(workers))]
    heapq.heapify(ready)
    admitted: list[int] = []
    while ready:
        now, i = heapq.heappop(ready)
        if now >= end:
            continue
        wait = await workers[i][0].acquire(DEST, limit, now_ms=now)
        if wait == 0:
            admitted.append(now)
            nxt = now + rng.randint(1, 300)  # the request's own duration
        else:
            nxt = now + int(wait * 1000) + rng.randint(0, 50)  # a little scheduling lag
        heapq.heappush(ready, (nxt, i))
    assert worst_window(admitted, period_ms) <= limit.count
    share = len(admitted) / (limit.count * periods)
    assert share >= 0.98, share


async def test_two_processes_share_one_limit(redis: Redis, other_redis: Redis) -> None:
    limit = RateLimit(25, 300.0)
    one, two = RateLimiter(redis), RateLimiter(other_redis)
    waits = await asyncio.gather(
        *(lim.acquire(DEST, limit, now_ms=T0) for _ in range(40) for lim in (one, two))
    )
    assert waits.count(0.0) == 25
    assert one.admitted + two.admitted == 25
    assert one.refused + two.refused == 55
    assert all(w == 300.0 for w in waits if w)
    # Another destination has its own budget.
    assert await two.acquire("other", limit, now_ms=T0) == 0.0
    # The oldest admission ages out exactly one period later, not a millisecond sooner.
    assert await one.acquire(DEST, limit, now_ms=T0 + 300_000 - 1) == 0.001
    assert await one.acquire(DEST, limit, now_ms=T0 + 300_000) == 0.0


async def test_wait_is_until_the_oldest_admission_leaves(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    limit = RateLimit(3, 10.0)
    for at in (0, 2_000, 5_000):
        assert await limiter.acquire(DEST, limit, now_ms=T0 + at) == 0.0
    assert await limiter.acquire(DEST, limit, now_ms=T0 + 6_000) == 4.0
    assert await limiter.acquire(DEST, limit, now_ms=T0 + 10_000) == 0.0
    assert await limiter.acquire(DEST, limit, now_ms=T0 + 10_500) == 1.5
    # A lowered limit waits until enough old admissions have left.
    # (log: +2 s, +5 s, +10 s; for 2/10s the +5 s one must leave, for 1/10s the +10 s one)
    assert await limiter.acquire(DEST, RateLimit(2, 10.0), now_ms=T0 + 11_000) == 4.0
    assert await limiter.acquire(DEST, RateLimit(1, 10.0), now_ms=T0 + 11_000) == 9.0


async def test_a_request_in_flight_counts_until_a_period_after_its_answer(
    redis: Redis,
) -> None:
    # The upstream counts arrivals: a request held in flight (hold_ms) frees its slot a
    # period after its answer, the latest it can have arrived, not after its admission.
    limiter = RateLimiter(redis)
    limit = RateLimit(2, 1.0)
    hold = 30_000
    assert await limiter.acquire(DEST, limit, request_id="a", now_ms=T0, hold_ms=hold) == 0.0
    assert await limiter.acquire(DEST, limit, request_id="b", now_ms=T0 + 10, hold_ms=hold) == 0.0
    # Long after both admissions, both still in flight: full, ask again shortly.
    assert await limiter.acquire(DEST, limit, now_ms=T0 + 5_000, hold_ms=hold) == FULL_POLL_S
    await _answered(redis, ["a"], now_ms=T0 + 5_100)
    # "a" reached the upstream at the latest at +5.1 s: its slot frees at +6.1 s.
    assert await limiter.acquire(DEST, limit, now_ms=T0 + 6_000, hold_ms=hold) == 0.1
    assert (
        await limiter.acquire(DEST, limit, request_id="c", now_ms=T0 + 6_100, hold_ms=hold) == 0.0
    )
    # Answering an id that already left the log (or never was in it) adds nothing.
    await _answered(redis, ["a", "never"], now_ms=T0 + 6_200)
    assert await redis.zcard(redis_keys.rate(DEST)) == 2  # b and c, both in flight
    # A worker that died mid-request: its entry ages out a period after its hold.
    assert await limiter.acquire(DEST, limit, now_ms=T0 + 31_009, hold_ms=hold) == 0.001
    assert await limiter.acquire(DEST, limit, now_ms=T0 + 31_010, hold_ms=hold) == 0.0


async def test_pause_holds_every_worker_and_keeps_the_later(
    redis: Redis, other_redis: Redis
) -> None:
    one, two = RateLimiter(redis), RateLimiter(other_redis)
    limit = RateLimit(100, 60.0)
    assert await one.paused_for(DEST) == 0.0
    await _answered(redis, pause_ms=30_000)
    await _answered(other_redis, pause_ms=2_000)  # shorter: the 30 s pause stands
    assert 29 < await two.paused_for(DEST) <= 30
    await _answered(other_redis, pause_ms=2_000, dest="other")
    await _answered(redis, pause_ms=40_000, dest="other")  # longer: it replaces the 2 s
    assert 39 < await two.paused_for("other") <= 40
    # acquire() answers with the rest of the pause and records nothing.
    wait = await two.acquire(DEST, limit, now_ms=T0)
    assert 29 < wait <= 30
    assert await redis.zcard(redis_keys.rate(DEST)) == 0
    assert await one.acquire("third", limit, now_ms=T0) == 0.0


async def test_real_clock_limit_and_pause(redis: Redis) -> None:
    """The one test on the server's own clock (TIME inside the scripts)."""
    limiter = RateLimiter(redis)
    limit = RateLimit(3, 0.3)
    assert [await limiter.acquire(DEST, limit) for _ in range(3)] == [0.0] * 3
    wait = await limiter.acquire(DEST, limit)
    assert 0 < wait <= 0.3
    await asyncio.sleep(wait)
    assert await limiter.acquire(DEST, limit) == 0.0
    await _answered(redis, pause_ms=150)
    assert 0.1 < await limiter.acquire(DEST, RateLimit(100, 1.0)) <= 0.15
    await asyncio.sleep(0.16)
    assert await limiter.paused_for(DEST) == 0.0
    assert await limiter.acquire(DEST, RateLimit(100, 1.0)) == 0.0
    assert 0 < await redis.pttl(redis_keys.rate(DEST)) <= 1000


async def test_keys_carry_the_hash_tag(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    await limiter.acquire(DEST, RateLimit(5, 60.0))
    await _answered(redis, pause_ms=60_000)
    keys = {str(k) for k in await redis.keys("*")}
    expected = {redis_keys.rate(DEST), redis_keys.paused(DEST)}
    assert keys == expected
    assert all(k.startswith("{relay}:") and k.endswith(f":{DEST}") for k in keys)


async def test_repr_shows_the_counts(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    await limiter.acquire(DEST, RateLimit(1, 60.0), now_ms=T0)
    await limiter.acquire(DEST, RateLimit(1, 60.0), now_ms=T0)
    assert repr(limiter) == "<RateLimiter admitted=1 refused=1>"
    assert not hasattr(limiter, "__dict__")


async def test_local_limiter_spreads_the_rate() -> None:
    limiter = local_limiter(RateLimit(2000, 300.0))
    assert isinstance(limiter, AsyncLimiter)
    assert limiter.max_rate == LOCAL_BURST
    assert limiter.time_period == pytest.approx(1.5)
    small = local_limiter(RateLimit(3, 1.0))
    assert (small.max_rate, small.time_period) == (3, 1.0)
    async with small:
        pass


def test_local_limiter_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        local_limiter(RateLimit(10, 1.0))
