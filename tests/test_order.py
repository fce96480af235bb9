"""A contact's order per destination (relay.order): the heads hash, the followers' list,
old-style lists, expired heads. Against a real redis-server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from relay import redis_keys
from relay.ids import new_event_id
from relay.models import Contact, DeliveryStatus
from relay.queue import DeliveryQueue, Entry
from relay.store import EventStore, NewEvent, contact_key

DEST = "crm"


def _event(email: str) -> NewEvent:
    return NewEvent(
        id=new_event_id(),
        type="lead",
        mode="live",
        key_id="key_test",
        received_at=datetime.now(UTC),
        payload=Contact(email=email),
        destinations=(DEST,),
    )


async def _queue(redis: Redis, *emails: str) -> dict[str, Entry]:
    """Queue one event per email, in order; their stream entries by event id."""
    queue = DeliveryQueue(redis, retention_s=60)
    await queue.ensure_group(DEST)
    await EventStore(redis, retention_s=60).enqueue([_event(email) for email in emails])
    entries = await queue.read(DEST, "test", count=100, block_ms=0)
    assert len(entries) == len(emails)
    return {entry.event: entry for entry in entries}


async def _done(queue: DeliveryQueue, entry: Entry) -> None:
    attempt = {"status": 200, "outcome": "delivered"}
    await queue.finish(DEST, entry, attempt, status=DeliveryStatus.delivered, contact=entry.contact)


async def _may_go(queue: DeliveryQueue, entry: Entry) -> bool:
    return await queue.blocked_until(DEST, entry.contact, entry.event) is None


async def test_a_lone_event_costs_one_heads_field_and_followers_wait_in_a_list(
    redis: Redis,
) -> None:
    entries = await _queue(
        redis, "ann@example.com", "bob@example.com", "bob@example.com", "bob@example.com"
    )
    ann, b1, b2, b3 = entries.values()
    assert ann.contact is not None
    assert b1.contact is not None
    heads = redis_keys.heads(DEST)
    assert await redis.hgetall(heads) == {ann.contact: ann.event, b1.contact: b1.event}
    assert not await redis.exists(redis_keys.order(DEST, ann.contact))
    bobs = redis_keys.order(DEST, b1.contact)
    assert await redis.lrange(bobs, 0, -1) == [b2.event, b3.event]
    assert 0 < await redis.ttl(bobs) <= 60

    queue = DeliveryQueue(redis, retention_s=60)
    assert [await _may_go(queue, e) for e in (ann, b1, b2, b3)] == [True, True, False, False]
    await _done(queue, b1)
    assert await redis.hget(heads, b1.contact) == b2.event
    assert [await _may_go(queue, e) for e in (b2, b3)] == [True, False]
    await _done(queue, b2)
    await _done(queue, b3)
    await _done(queue, ann)
    assert await redis.hgetall(heads) == {}
    assert not await redis.exists(bobs)


async def test_the_worker_take_keeps_the_same_order(redis: Redis) -> None:
    entries = await _queue(redis, "bob@example.com", "bob@example.com")
    first, second = entries.values()
    queue = DeliveryQueue(redis, retention_s=60)
    take = {"max_in_flight": 16, "holder": "w1", "ttl_ms": 10_000}
    assert (await queue.take(DEST, second, **take)).state == "blocked"
    assert (await queue.take(DEST, first, **take)).state == "ok"
    await _done(queue, first)
    assert (await queue.take(DEST, second, **take)).state == "ok"


async def test_a_list_written_before_the_heads_hash_orders_its_contact(redis: Redis) -> None:
    # Earlier releases kept the head in the list itself: [head, later...], no heads field.
    email = "old@example.com"
    contact = contact_key({"email": email})
    assert contact is not None
    old = [new_event_id(), new_event_id()]
    for event_id in old:
        await redis.hset(redis_keys.event(event_id), "data", "{}")
    await redis.rpush(redis_keys.order(DEST, contact), *old)
    (new,) = (await _queue(redis, email)).values()
    # The new event joins that list rather than starting a heads field.
    assert await redis.lrange(redis_keys.order(DEST, contact), 0, -1) == [*old, new.event]
    assert not await redis.hexists(redis_keys.heads(DEST), contact)
    queue = DeliveryQueue(redis, retention_s=60)
    first, second = (Entry("0-1", e, contact) for e in old)
    assert [await _may_go(queue, e) for e in (first, second, new)] == [True, False, False]
    await _done(queue, first)
    assert [await _may_go(queue, e) for e in (second, new)] == [True, False]
    await _done(queue, second)
    assert await _may_go(queue, new)


@pytest.mark.parametrize("layout", ["heads", "old list"])
async def test_an_expired_head_does_not_block_its_contact(redis: Redis, layout: str) -> None:
    entries = await _queue(redis, "bob@example.com", "bob@example.com", "bob@example.com")
    expired, nxt, last = entries.values()
    assert expired.contact is not None
    heads, bobs = redis_keys.heads(DEST), redis_keys.order(DEST, expired.contact)
    if layout == "old list":
        await redis.hdel(heads, expired.contact)
        await redis.lpush(bobs, expired.event)
    await redis.delete(redis_keys.event(expired.event))  # past the retention, undelivered
    queue = DeliveryQueue(redis, retention_s=60)
    assert [await _may_go(queue, e) for e in (nxt, last)] == [True, False]
    # The check took the expired event out of the order: the next one heads it now.
    assert await redis.hget(heads, expired.contact) == (nxt.event if layout == "heads" else None)
    expected = [last.event] if layout == "heads" else [nxt.event, last.event]
    assert await redis.lrange(bobs, 0, -1) == expected


async def test_dropping_an_expired_entry_lets_its_contact_go_on(redis: Redis) -> None:
    entries = await _queue(redis, "bob@example.com", "bob@example.com")
    expired, nxt = entries.values()
    await redis.delete(redis_keys.event(expired.event))
    queue = DeliveryQueue(redis, retention_s=60)
    await queue.drop(DEST, expired)
    assert await redis.hget(redis_keys.heads(DEST), expired.contact or "") == nxt.event
    assert await redis.xlen(redis_keys.queue(DEST)) == 1
