"""Dead letters: why each died (its last attempt), and replaying them; for ``relay dlq``
and ``/v1/dead-letters``.

A list is read in two pipelined round trips per :data:`_CHUNK` dead letters (each
event's attempt count for the destination, then that attempt's record), never the
whole event. The excerpt was scrubbed of the destination's secrets when the attempt
was recorded (:func:`relay.adapters.classify.excerpt`), so nothing here scrubs. A
replay is ``relay/lua/replay.lua``, a chunk at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from relay import redis_keys
from relay.ids import partition_of
from relay.models import DeadLetter
from relay.scripts import REPLAY

__all__ = ["list_dead_letters", "replay_dead_letters"]

#: Dead letters read per pipeline, and replayed per script call.
_CHUNK = 500


async def list_dead_letters(redis: Redis, destination: str, *, partitions: int) -> list[DeadLetter]:
    """A destination's dead letters of every partition, oldest first, each with its last
    attempt.

    Expects a ``decode_responses=True`` client.
    """
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.zrange(redis_keys.dead(destination, partition), 0, -1, withscores=True)
        found = cast(list[list[tuple[str, float]]], await pipe.execute())
    rows = sorted((row for rows in found for row in rows), key=lambda row: (row[1], row[0]))
    out: list[DeadLetter] = []
    for start in range(0, len(rows), _CHUNK):
        out += await _explain(redis, destination, rows[start : start + _CHUNK])
    return out


async def _explain(
    redis: Redis, destination: str, rows: list[tuple[str, float]]
) -> list[DeadLetter]:
    made_field = redis_keys.ATTEMPTS_FIELD_PREFIX + destination
    # A dead letter's id names its partition; anything else has no record to read.
    known = [(i, redis_keys.event(event_id)) for i, (event_id, _) in enumerate(rows)
             if _is_event_id(event_id)]  # fmt: skip
    counts = [0] * len(rows)
    last: list[dict[str, Any] | None] = [None] * len(rows)
    async with redis.pipeline(transaction=False) as pipe:
        for _, key in known:
            pipe.hget(key, made_field)
        for (i, _), n in zip(known, await pipe.execute(), strict=True):
            counts[i] = int(n or 0)
    async with redis.pipeline(transaction=False) as pipe:
        for i, key in known:
            pipe.hget(key, f"{redis_keys.ATTEMPT_RECORD_PREFIX}{destination}:{counts[i]}")
        for (i, _), raw in zip(known, await pipe.execute(), strict=True):
            last[i] = orjson.loads(raw) if raw else None
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


def _is_event_id(text: str) -> bool:
    try:
        partition_of(text)
    except ValueError:
        return False
    return True


async def replay_dead_letters(
    redis: Redis,
    destination: str,
    event_ids: list[str] | None = None,
    *,
    partitions: int,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Queue dead letters again (``None``: all of them), each with a fresh retry
    schedule; their earlier attempts stay on the event. Works in chunks, so replaying
    100 000 is not one giant script call; ``progress(done, total)`` is called after each.
    Returns how many were queued (ids that are not dead letters here, or whose event
    expired, are skipped). Each event goes back into the stream of its partition (named
    by its id: relay.partitions), a script call per partition and chunk.
    """
    if event_ids is None:
        event_ids = [
            letter
            for partition in range(partitions)
            for letter in cast(
                list[str], await redis.zrange(redis_keys.dead(destination, partition), 0, -1)
            )
        ]
    by_partition: dict[int, list[str]] = {}
    for event_id in filter(_is_event_id, event_ids):  # anything else is no dead letter
        by_partition.setdefault(partition_of(event_id), []).append(event_id)
    replay = REPLAY.bind(redis)
    done = 0
    for partition, ids in sorted(by_partition.items()):
        keys = {
            "dead": redis_keys.dead(destination, partition),
            "stream": redis_keys.queue(destination, partition),
        }
        for start in range(0, len(ids), _CHUNK):
            batch = replay.batch()
            for event_id in ids[start : start + _CHUNK]:
                batch.add({"id": event_id, "event": batch.key(redis_keys.event(event_id))})
            done += int(await replay(batch, keys=keys, args={"destination": destination}))
            if progress is not None:
                progress(done, len(event_ids))
    return done
