"""Why each dead letter died: its last attempt, for ``relay dlq list`` and ``GET /v1/dead-letters``.

Read in two pipelined round trips per :data:`_CHUNK` dead letters (each event's
attempt count for the destination, then that attempt's record), never the whole event. The excerpt
was scrubbed of the destination's secrets when the attempt was recorded
(:func:`relay.adapters.classify.excerpt`), so nothing here scrubs.
"""

from __future__ import annotations

from typing import Any, cast

import orjson
from redis.asyncio import Redis

from relay import redis_keys
from relay.models import DeadLetter

__all__ = ["list_dead_letters"]

#: Dead letters read per pipeline.
_CHUNK = 500


async def list_dead_letters(redis: Redis, destination: str) -> list[DeadLetter]:
    """A destination's dead letters, oldest first, each with its last attempt.

    Expects a ``decode_responses=True`` client.
    """
    rows = cast(
        list[tuple[str, float]],
        await redis.zrange(redis_keys.dead(destination), 0, -1, withscores=True),
    )
    out: list[DeadLetter] = []
    for start in range(0, len(rows), _CHUNK):
        out += await _explain(redis, destination, rows[start : start + _CHUNK])
    return out


async def _explain(
    redis: Redis, destination: str, rows: list[tuple[str, float]]
) -> list[DeadLetter]:
    made_field = redis_keys.ATTEMPTS_FIELD_PREFIX + destination
    async with redis.pipeline(transaction=False) as pipe:
        for event_id, _ in rows:
            pipe.hget(redis_keys.event(event_id), made_field)
        counts = [int(n or 0) for n in await pipe.execute()]
    async with redis.pipeline(transaction=False) as pipe:
        for (event_id, _), n in zip(rows, counts, strict=True):
            pipe.hget(
                redis_keys.event(event_id), f"{redis_keys.ATTEMPT_RECORD_PREFIX}{destination}:{n}"
            )
        last: list[dict[str, Any] | None] = [
            orjson.loads(raw) if raw else None for raw in await pipe.execute()
        ]
    return [
        DeadLetter(
            destination=destination,
            event_id=event_id,
            dead_at=score / 1000,
            attempts=n,
            status_code=attempt.get("status"),
            error=attempt.get("error"),
            excerpt=attempt.get("excerpt"),
            note=attempt.get("note"),
        )
        for (event_id, score), n, attempt in zip(rows, counts, [a or {} for a in last], strict=True)
    ]
