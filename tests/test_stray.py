"""Stray copies of an entry are refused, and held entries stay claimed (issue 12).
Against a real redis-server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from relay import redis_keys
from relay.models import DeliveryStatus
from relay.queue import DeliveryQueue, Entry
from relay.store import EventStore
from tests.events import new_lead

DEST = "crm"
_TAKE: dict[str, Any] = {"max_in_flight": 16, "ttl_ms": 10_000}


async def _one(redis: Redis, consumer: str = "w") -> tuple[DeliveryQueue, Entry]:
    queue = DeliveryQueue(redis, retention_s=60)
    await queue.ensure_group(DEST)
    await EventStore(redis, retention_s=60).enqueue([new_lead("ann@example.com", DEST)])
    (entry,) = await queue.read(DEST, consumer, count=10, block_ms=1)
    return queue, entry


async def _pending(redis: Redis) -> list[str]:
    rows = await redis.xpending_range(
        redis_keys.queue(DEST), redis_keys.CONSUMER_GROUP, min="-", max="+", count=10
    )
    return [str(row["message_id"]) for row in rows]


@pytest.mark.parametrize("status", [DeliveryStatus.delivered, DeliveryStatus.dead])
async def test_the_take_refuses_and_acks_a_copy_of_a_settled_event(
    redis: Redis, status: DeliveryStatus
) -> None:
    queue, entry = await _one(redis)
    await redis.hset(redis_keys.event(entry.event), redis_keys.STATUS_FIELD_PREFIX + DEST, status)
    taken = await queue.take(DEST, entry, holder="w" + entry.id, **_TAKE)
    assert taken.state == "stray"
    assert await _pending(redis) == []  # acked: it never comes back
    assert await redis.xlen(redis_keys.queue(DEST)) == 0
    assert await redis.zcard(redis_keys.inflight(DEST)) == 0  # no lease taken for it


async def test_the_take_refuses_a_copy_another_holder_is_sending(redis: Redis) -> None:
    queue, entry = await _one(redis)
    assert (await queue.take(DEST, entry, holder="w1" + entry.id, **_TAKE)).state == "ok"
    assert (await queue.take(DEST, entry, holder="w2" + entry.id, **_TAKE)).state == "stray"
    # Left pending: the holder settles it, or if it died it is claimed again later.
    assert await _pending(redis) == [entry.id]
    # The holder itself may take it again (a take resumed after a Redis error).
    assert (await queue.take(DEST, entry, holder="w1" + entry.id, **_TAKE)).state == "ok"
    # Once that lease is gone (the holder died, its lease ran out), the copy goes.
    await redis.zrem(redis_keys.inflight(DEST), "w1" + entry.id)
    assert (await queue.take(DEST, entry, holder="w2" + entry.id, **_TAKE)).state == "ok"


async def test_the_slow_path_check_agrees_with_the_take(redis: Redis) -> None:
    queue, entry = await _one(redis)

    async def stray(mine: str) -> bool:
        fields = await queue.load(entry.event)
        assert fields is not None
        return await queue.stray(DEST, entry, fields, mine=mine)

    assert not await stray("w2")  # pending: it goes
    assert (await queue.take(DEST, entry, holder="w1" + entry.id, **_TAKE)).state == "ok"
    assert await stray("w2")  # w1 is sending it
    assert not await stray("w1")  # w1's own
    assert await _pending(redis) == [entry.id]
    attempt = {"status": 200, "outcome": "delivered"}
    await queue.finish(DEST, entry, attempt, status=DeliveryStatus.delivered, contact=None)
    await redis.xadd(redis_keys.queue(DEST), {"e": entry.event})  # a stale copy
    (copy,) = await queue.read(DEST, "w2", count=10, block_ms=1)
    fields = await queue.load(copy.event)
    assert fields is not None
    assert await queue.stray(DEST, copy, fields, mine="w2")
    assert await _pending(redis) == []
    assert await redis.xlen(redis_keys.queue(DEST)) == 0


async def test_keep_resets_the_idle_time_of_entries_still_held(redis: Redis) -> None:
    queue, entry = await _one(redis, consumer="a")
    await asyncio.sleep(0.7)
    assert await queue.keep(DEST, "a", [entry.id]) == 1
    # Not stale any more: housekeeping elsewhere (500 ms visibility) claims nothing.
    assert await queue.claim_stale(DEST, "b", min_idle_ms=500, count=10) == []
    await asyncio.sleep(0.7)
    (claimed,) = await queue.claim_stale(DEST, "b", min_idle_ms=500, count=10)
    assert claimed.id == entry.id
    # Claimed by b now: a's keep leaves it to b.
    assert await queue.keep(DEST, "a", [entry.id]) == 0
    rows = await redis.xpending_range(
        redis_keys.queue(DEST), redis_keys.CONSUMER_GROUP, min="-", max="+", count=10
    )
    assert [row["consumer"] for row in rows] == ["b"]
