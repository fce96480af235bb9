"""Events as the API hands them to the store, and settled as a worker settles them, for
tests that write Redis directly."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from relay.ids import new_event_id
from relay.models import Contact, DeliveryStatus, Lead
from relay.queue import DeliveryQueue, Entry, Result, Settlement
from relay.store import NewEvent

#: The partitions of the stores these tests make (the settings' default too).
PARTITIONS = 16


async def total(redis: Redis, command: str, key_of: Callable[[int], str]) -> int:
    """A count command (ZCARD, XLEN, ...) summed over every partition's key."""
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(PARTITIONS):
            pipe.execute_command(command, key_of(partition))
        return sum(int(n or 0) for n in await pipe.execute())


async def members(redis: Redis, key_of: Callable[[int], str]) -> list[str]:
    """The members of every partition's zset (dead letters, retries), partition by
    partition."""
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(PARTITIONS):
            pipe.zrange(key_of(partition), 0, -1)
        return [str(m) for found in await pipe.execute() for m in found]


def new_lead(
    email: str, *destinations: str, payload: Contact | None = None, partition: int = 0
) -> NewEvent:
    """A live lead of ``email`` (or ``payload``) for ``destinations``, received now, in
    ``partition`` (whatever its contact: tests name its keys)."""
    return NewEvent(
        id=new_event_id(partition=partition),
        type="lead",
        mode="live",
        key_id="key_test",
        received_at=datetime.now(UTC),
        payload=payload or Lead(email=email),
        destinations=destinations,
    )


async def settle_next(
    redis: Redis,
    destination: str,
    status: DeliveryStatus,
    attempt: dict[str, Any],
    *,
    retry_at_ms: int = 0,
    consumer: str = "test",
) -> Entry:
    """Read the destination's next stream entry, take it and settle it with ``status``,
    as a worker would (``attempt`` is the record kept); the entry."""
    queue = DeliveryQueue(redis, retention_s=60, partitions=16)
    await queue.ensure_group(destination)
    (entry,) = await queue.read(destination, consumer, count=1, block_ms=1)
    holder = consumer + entry.id
    (taken,) = await queue.take(destination, [(holder, [entry])], lease_ms=10_000, max_in_flight=8)
    assert taken.state == "ok", taken
    result = Result(
        entry,
        status,
        orjson.dumps(attempt),
        spends_step=status is DeliveryStatus.retrying,
        retry_at_ms=retry_at_ms,
    )
    await queue.settle(Settlement(destination, holder, [result]))
    return entry
