"""Worker heartbeats in Redis: which workers are live, for ``relay status`` and ``/readyz``.

Each worker process beats every :data:`~relay.redis_keys.WORKER_BEAT_S` into one
sorted set (member: who, score: when); one not heard from for
:data:`~relay.redis_keys.WORKER_LIVE_S` is not live. A worker that stops cleanly
takes itself out; a killed one ages out.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TypedDict, cast

import orjson
from redis.asyncio import Redis

from relay import redis_keys

__all__ = ["Heartbeat", "WorkerSeen", "live_workers"]


class WorkerSeen(TypedDict):
    """A live worker: ``{"host", "pid", "last_seen"}`` (ISO 8601, UTC)."""

    host: str
    pid: int
    last_seen: str


class Heartbeat:
    """One worker's beat. ``worker_id`` tells apart workers that share host and pid."""

    __slots__ = ("_member", "_redis")

    def __init__(self, redis: Redis, worker_id: str, *, host: str, pid: int) -> None:
        self._redis = redis
        self._member = orjson.dumps({"id": worker_id, "host": host, "pid": pid}).decode()

    def __repr__(self) -> str:
        return f"<Heartbeat {self._member}>"

    async def beat(self) -> None:
        """Say this worker is live now (and forget workers silent for a day)."""
        now_ms = int(time.time() * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(redis_keys.WORKERS, {self._member: now_ms})
            pipe.zremrangebyscore(
                redis_keys.WORKERS, "-inf", now_ms - redis_keys.WORKER_FORGET_S * 1000
            )
            await pipe.execute()

    async def forget(self) -> None:
        """This worker stopped: not live any more."""
        await self._redis.zrem(redis_keys.WORKERS, self._member)


async def live_workers(redis: Redis) -> list[WorkerSeen]:
    """Workers heard from within WORKER_LIVE_S, most recently seen first."""
    since_ms = int((time.time() - redis_keys.WORKER_LIVE_S) * 1000)
    rows = cast(
        list[tuple[str, float]],
        await redis.zrevrangebyscore(redis_keys.WORKERS, "+inf", since_ms, withscores=True),
    )
    seen: list[WorkerSeen] = []
    for member, score in rows:
        who = orjson.loads(member)
        when = datetime.fromtimestamp(score / 1000, UTC).isoformat(timespec="seconds")
        when = when.replace("+00:00", "Z")
        seen.append(WorkerSeen(host=who["host"], pid=who["pid"], last_seen=when))
    return seen
