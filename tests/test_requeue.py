"""move_due.lua and replay.lua on their own, against a real redis-server: retries come
back when due, dead letters when replayed, each once."""

from __future__ import annotations

import functools

from redis.asyncio import Redis

from relay import redis_keys
from relay.deadletters import replay_dead_letters
from relay.ids import new_event_id
from relay.models import DeliveryStatus
from relay.queue import DeliveryQueue
from relay.store import EventStore
from tests.events import members, new_lead, settle_next

DEST = "crm"


async def test_due_retries_come_back_in_one_step_each_once(redis: Redis) -> None:
    queue = DeliveryQueue(redis, retention_s=60, partitions=16)
    await queue.ensure_group(DEST)
    sep = redis_keys.RETRY_CONTACT_SEP
    a, b, c, later = (new_event_id(partition=0) for _ in range(4))
    retries = {a: 1_000, f"{b}{sep}c0ffee": 2_000, c: 3_000, later: 9_000}
    await redis.zadd(redis_keys.retries(DEST, 0), retries)
    # Two due by 3 000 in one call at most (limit), the rest at the next.
    assert await queue.move_due_retries([DEST, "other"], now_ms=3_000, limit=2) == 2
    assert await queue.move_due_retries([DEST, "other"], now_ms=3_000, limit=2) == 1
    assert await queue.move_due_retries([DEST], now_ms=3_000) == 0
    entries = await queue.read(DEST, "w", count=10, block_ms=1)
    assert [(e.event, e.contact) for e in entries] == [
        (a, None),
        (b, "c0ffee"),  # the head of its contact's order: its entry says so again
        (c, None),
    ]
    assert await members(redis, functools.partial(redis_keys.retries, DEST)) == [later]


async def test_a_replay_queues_each_dead_letter_once_with_a_fresh_schedule(
    redis: Redis,
) -> None:
    store, queue = (
        EventStore(redis, retention_s=60, partitions=16),
        DeliveryQueue(redis, retention_s=60, partitions=16),
    )
    events = [new_lead(f"p{i}@example.com", DEST) for i in range(3)]
    await store.enqueue(events)
    for _ in events:
        await settle_next(redis, DEST, DeliveryStatus.retrying, {"status": 503})
    await queue.move_due_retries([DEST])
    for _ in events:
        await settle_next(redis, DEST, DeliveryStatus.dead, {"status": 503})
    gone = events[2].id
    await redis.delete(redis_keys.event(gone))  # past its retention: nothing left to send
    assert (
        await replay_dead_letters(
            redis, DEST, [events[0].id, "evt_never_dead", gone], partitions=16
        )
        == 1
    )
    assert (
        await replay_dead_letters(redis, DEST, [events[0].id], partitions=16) == 0
    )  # not dead any more
    assert (
        await replay_dead_letters(redis, DEST, partitions=16) == 1
    )  # all: the one left that can go
    raw = await redis.hgetall(redis_keys.event(events[0].id))
    assert raw["st:crm"] == "pending"
    assert "r:crm" not in raw  # a fresh schedule
    assert raw["n:crm"] == "2"  # its attempts stay
    entries = await queue.read(DEST, "w2", count=10, block_ms=1)
    assert sorted(e.event for e in entries) == sorted([events[0].id, events[1].id])
    assert all(e.contact is None for e in entries)  # in no order: a replay goes at once
    assert await members(redis, functools.partial(redis_keys.dead, DEST)) == [gone]  # still listed
